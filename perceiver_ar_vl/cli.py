"""The command-line wrapper of the entry points (launch.py, `python -m
perceiver_ar_vl.experiments`, `python -m perceiver_ar_vl.original`): `run` prints a user
error (`errors.UserError`) as the single line `error: <message>` on stderr and exits with
status 2; any other exception is a bug and keeps its traceback.

Flags: when absl's parsing fails, `run` loads each config file itself and checks every
`--config.<key>=<value>` override against it (the key exists, the value parses as the key's
type), so those mistakes get a sentence of their own; absl's own flag errors are one line
already. A config file runs once when the flags are right. JAX's flags (`--jax_log_compiles`,
`--jax_debug_nans`, ...) are accepted and set through `jax.config` before `main` runs
(importing JAX only when one is given); a stray positional argument is refused.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import ml_collections
from absl import app, flags

from perceiver_ar_vl.errors import UserError, one_line

EXIT_STATUS = 2  # what argparse and most CLIs return for a usage error


def fail(message: str) -> NoReturn:
  """Prints `error: <message>` as one line on stderr and exits with status 2."""
  sys.stdout.flush()
  print(f'error: {one_line(message)}', file=sys.stderr, flush=True)
  sys.exit(EXIT_STATUS)


def config_file_arg(name: str, argv: Sequence[str]) -> str | None:
  """The value ('path[:arg]') given to config flag `name` in argv, or None."""
  for i, arg in enumerate(argv):
    if arg in (f'--{name}', f'-{name}') and i + 1 < len(argv):
      return argv[i + 1]
    for prefix in (f'--{name}=', f'-{name}='):
      if arg.startswith(prefix):
        return arg[len(prefix) :]
  return None


def load_config_file(name: str, value: str) -> ml_collections.ConfigDict:
  """Runs `get_config` of the config file that `--name=value` names, as ml_collections does
  (`get_config(arg)` with `path:arg`, `get_config()` without); a missing file or a UserError
  of the file (e.g. an unknown preset) is a user error, any other exception a bug."""
  path, has_arg, arg = value.partition(':')
  if not os.path.isfile(path):
    fail(
      f'--{name}: no such config file {path!r} (relative to {os.getcwd()}); pass an existing '
      f'file, e.g. --{name}=configs/curriculum.py:smoke.'
    )
  spec = importlib.util.spec_from_file_location('perceiver_ar_vl_checked_config', path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    return module.get_config(arg) if has_arg else module.get_config()
  except UserError as e:
    fail(f'--{name}={value}: {e}')


def _parses_as(text: str, current: Any) -> bool:
  """Whether an override `text` can replace a value like `current` (None: any value)."""
  if current is None or isinstance(current, str):
    return True
  if isinstance(current, bool):
    return text.lower() in ('true', 'false', '1', '0')
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return False
  if isinstance(current, int):
    return isinstance(value, int) and not isinstance(value, bool)
  if isinstance(current, float):
    return isinstance(value, int | float) and not isinstance(value, bool)
  if isinstance(current, tuple | list):
    return isinstance(value, tuple | list | int | float)
  return True


def check_override(name: str, config: ml_collections.ConfigDict, arg: str) -> None:
  """Stops with one line if `arg` (`--name.a.b=v`) names no key of `config` or its value does
  not parse as that key's type."""
  path, _, text = arg.lstrip('-').partition('=')
  node: Any = config
  parent: Any = config
  keys = path.split('.')[1:]
  for depth, key in enumerate(keys):
    if not isinstance(node, ml_collections.ConfigDict) or key not in node:
      options = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      close = difflib.get_close_matches(key, options, n=1)
      hint = f' (did you mean {close[0]!r}?)' if close else ''
      section = '.'.join(keys[:depth]) or 'the config'
      fail(
        f'unknown config key {key!r} in --{path}{hint}; {section} has no such key (every key, '
        'its type and default: perceiver_ar_vl/spec.py).'
      )
    parent, node = node, node[key]
  if parent.get_type(keys[-1]) is object:  # a field that takes any value, e.g. a step or 'best'
    node = None
  if '=' in arg and not isinstance(node, ml_collections.ConfigDict) and not _parses_as(text, node):
    kind = type(node).__name__
    key = '.'.join(keys)
    article = 'an' if kind[0] in 'aeiou' else 'a'
    fail(
      f'--{path}={text} does not parse: {key} takes {article} {kind} (now {node!r}), e.g. '
      f'--{path}={node!r}.'
    )


def split_jax_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """(JAX's flags `--jax_*` / `--nojax_*` before any `--`, the other arguments)."""
  jax_args, rest, passthrough = [], [], False
  for arg in argv:
    passthrough = passthrough or arg == '--'
    is_jax = arg.lstrip('-').startswith(('jax_', 'nojax_')) and arg.startswith('--')
    (jax_args if is_jax and not passthrough else rest).append(arg)
  return jax_args, rest


def apply_jax_flags(jax_args: Sequence[str]) -> None:
  """Sets JAX's flags given on the command line through `jax.config` (absl definitions of
  JAX's options: `jax.config.config_with_absl`). Imports JAX only if there are any."""
  if not jax_args:
    return
  import jax  # noqa: PLC0415

  jax.config.config_with_absl()
  try:
    flags.FLAGS(['', *jax_args])
  except flags.Error as e:
    fail(f'{e}; JAX flags are the jax.config options, e.g. --jax_log_compiles.')
  for arg in jax_args:
    name = arg.lstrip('-').split('=', 1)[0]
    name = name[2:] if name.startswith('nojax_') else name
    jax.config.update(name, flags.FLAGS[name].value)


def _explain(argv: Sequence[str], config_flags: Sequence[str]) -> None:
  """Loads each config file of argv and checks its overrides by hand: a mistake stops with a
  sentence of its own (`fail`); a bug of the config file's code raises with its traceback."""
  for name in config_flags:
    value = config_file_arg(name, argv)
    if value is None:
      continue
    config = load_config_file(name, value)
    for arg in argv[1:]:
      if arg.startswith((f'--{name}.', f'-{name}.')):
        check_override(name, config, arg)


def parse_flags(argv: Sequence[str], config_flags: Sequence[str] = ('config',)) -> list[str]:
  """absl's flag parsing with user mistakes reported by `fail` instead of a traceback.

  absl runs each config file once, applying its overrides. Only when that fails (at parsing,
  or a file that did not load) are the config files and overrides checked by hand
  (`_explain`), which names the mistake in a sentence of its own; absl's own errors (unknown
  flags, bad values) are printed as the one line they are, and an error of the config file's
  code (a bug) keeps its traceback."""
  argv = list(argv)
  try:
    remaining = flags.FLAGS(argv)
  except Exception as error:  # noqa: BLE001  (explained, or raised again)
    _explain(argv, config_flags)
    if isinstance(error, flags.Error):
      fail(str(error))
    raise
  for name in config_flags:
    try:  # ml_collections defers a file's load error to the config's first use
      if config_file_arg(name, argv) is not None:
        flags.FLAGS[name].value.keys()
    except Exception:
      _explain(argv, config_flags)
      raise
  return remaining


def run(main: Callable[[list[str]], Any], config_flags: Sequence[str] = ('config',)) -> None:
  """`absl.app.run(main)`, but user errors (flags or UserError from main) print one line and
  exit with status 2, JAX's own flags are accepted, and positional arguments are refused;
  other exceptions keep absl's traceback."""
  jax_args, argv = split_jax_flags(sys.argv)

  def checked_main(remaining: list[str]) -> Any:
    try:
      if len(remaining) > 1:
        raise UserError(
          f'unexpected argument {remaining[1]!r}: every setting is a flag (--name=value); '
          'quote a value that holds spaces.'
        )
      apply_jax_flags(jax_args)
      return main(remaining)
    except UserError as e:
      fail(str(e))

  app.run(checked_main, argv=argv, flags_parser=lambda args: parse_flags(args, config_flags))
