"""User errors: bad input that the user fixes by changing a flag, a config value, a file or a
workdir. Library code raises `UserError` (a ValueError, so callers catching ValueError keep
working) with one sentence that says what is wrong and what to change; the command-line entry
points print it as one line (`cli.run`). Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
  """Bad input (config, flags, paths, data, checkpoints); the message says what to change."""


class MissingFileError(UserError, FileNotFoundError):
  """A path the user gave does not exist or is not a file."""


def one_line(message: str) -> str:
  """`message` with every run of whitespace (newlines included) collapsed to one space."""
  return ' '.join(str(message).split())
