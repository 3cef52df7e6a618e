"""User errors, and the command-line wrapper that prints them as one line.

A user error is bad input that the user fixes by changing a flag, a config value, a file or a
workdir: library code raises `UserError` (a ValueError, so callers catching ValueError keep
working) with one sentence that says what is wrong and what to change. The command-line
entry points (launch.py, `python -m perceiver_ar_vl.experiments`) go through `run`, which
prints a user error as the single line `error: <message>` on stderr and exits with status 2.
Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from absl import app, flags
from ml_collections import config_flags
from ml_collections.config_flags.config_flags import is_config_flag  # not re-exported

EXIT_STATUS = 2  # what argparse and most CLIs return for a usage error


class UserError(ValueError):
  """Bad input (config, flags, paths, data, checkpoints); the message says what to change."""


class MissingFileError(UserError, FileNotFoundError):
  """A path the user gave does not exist or is not a file."""


def one_line(message: str) -> str:
  """`message` with every run of whitespace (newlines included) collapsed to one space."""
  return ' '.join(str(message).split())


def fail(message: str) -> NoReturn:
  """Prints `error: <message>` as one line on stderr and exits with status 2."""
  sys.stdout.flush()
  print(f'error: {one_line(message)}', file=sys.stderr, flush=True)
  sys.exit(EXIT_STATUS)


def _config_flag_names() -> list[str]:
  return [name for name in flags.FLAGS if is_config_flag(flags.FLAGS[name])]


def _unknown_key_message(error: Exception, argv: Sequence[str]) -> str | None:
  """The sentence for an override of a config key that does not exist; None when no override
  in argv holds the key (then the error came from elsewhere, e.g. a bug in a config file).

  ml_collections raises a bare KeyError/AttributeError whose text is the bad key and maybe a
  'Did you mean "x"' hint; the override that holds the key is found in argv.
  """
  while error.args and isinstance(error.args[0], BaseException):  # AttributeError(KeyError)
    error = error.args[0]
  text = str(error.args[0]) if error.args else str(error)
  key = re.search(r"'([^'\"\\]+)'", text)
  hint = re.search(r'Did you mean "([^"]+)"', text)
  bad = key.group(1) if key else text.strip('\'"')
  override = ''
  for name in _config_flag_names():
    for arg in argv[1:]:
      path = arg.lstrip('-').split('=', 1)[0]
      if path.startswith(f'{name}.') and bad in path.split('.')[1:]:
        override = f'--{path}'
        break
  if not override:
    return None
  suggestion = f' (did you mean {hint.group(1)!r}?)' if hint else ''
  return (
    f'unknown config key {bad!r} in {override}{suggestion}; check the spelling against the '
    'config keys (perceiver_ar_vl/config_lib.py, base_config).'
  )


def _last_line(text: str) -> str:
  lines = [line for line in str(text).splitlines() if line.strip()]
  return lines[-1].strip() if lines else ''


def _flag_error_message(error: flags.Error) -> str | None:
  """The sentence for a flag that did not parse; None when it hides a bug's traceback.

  A config file's get_config() runs while its flag parses; ml_collections re-raises its
  ValueError with the traceback pasted into the message, and absl wraps that in a flag
  error. A UserError there is reported by its own last line; any other exception raised by
  a config file is a bug, so None (the caller re-raises and the traceback shows).
  """
  message = str(error)
  cause = error.__cause__ or error.__context__
  if 'Traceback (most recent call last)' in message:
    if not isinstance(cause, UserError):
      return None
    flag = message.split(': ', 1)[0]  # 'flag --config=configs/x.py:preset'
    detail = _last_line(str(cause)).split(': ', 1)[-1]  # drop 'module.UserError: '
    return f'{flag}: {detail}'
  return message


def _config_file_arg(name: str, argv: Sequence[str]) -> str:
  """The path (without ':arg') given to config flag `name` in argv, or ''."""
  for i, arg in enumerate(argv):
    if arg in (f'--{name}', f'-{name}') and i + 1 < len(argv):
      return argv[i + 1].split(':', 1)[0]
    for prefix in (f'--{name}=', f'-{name}='):
      if arg.startswith(prefix):
        return arg[len(prefix) :].split(':', 1)[0]
  return ''


def _config_file_failed(name: str, path: str, error: Exception) -> NoReturn:
  if path and not os.path.isfile(path):
    fail(
      f'--{name}: no such config file {path!r} (relative to {os.getcwd()}); pass an existing '
      f'file, e.g. --{name}=configs/curriculum.py:smoke.'
    )
  fail(f'--{name}: could not load config file {path!r}: {_last_line(str(error))}')


def _check_config_files() -> None:
  """ml_collections defers a config file that failed to load until first use: report it now."""
  for name in _config_flag_names():
    flag = flags.FLAGS[name]
    if flag.value is None:
      continue
    try:
      flag.value.keys()  # a config that failed to load raises its OSError on any access
    except OSError as e:
      _config_file_failed(name, config_flags.get_config_filename(flag).split(':', 1)[0], e)


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing, with user mistakes reported by `fail` instead of a traceback.

  Covers unknown flags and bad flag values, unknown config keys, config overrides that do not
  parse, missing config files, and UserErrors raised by a config file (e.g. an unknown preset).
  """
  try:
    remaining = flags.FLAGS(list(argv))
  except flags.Error as e:
    message = _flag_error_message(e)
    if message is None:
      raise
    fail(message)
  except (KeyError, AttributeError) as e:  # ml_collections: an override of an unknown key
    message = _unknown_key_message(e, argv)
    if message is None:
      raise
    fail(message)
  except OSError as e:  # ml_collections: --config.x overrides on a config file that failed
    names = _config_flag_names() or ['config']
    _config_file_failed(names[0], _config_file_arg(names[0], argv), e)
  except ValueError as e:  # ml_collections: an override value that does not parse
    fail(
      f'a config override does not parse ({_last_line(str(e))}); check the value types, '
      "e.g. --config.latents.buckets='(8,16)' or --config.train.steps=100."
    )
  _check_config_files()
  return remaining


def run(main: Callable[[list[str]], Any]) -> None:
  """`absl.app.run(main)`, but user errors (flags or UserError from main) print one line and
  exit with status 2; other exceptions keep absl's traceback."""

  def checked_main(argv: list[str]) -> Any:
    try:
      return main(argv)
    except UserError as e:
      fail(str(e))

  app.run(checked_main, flags_parser=parse_flags)
