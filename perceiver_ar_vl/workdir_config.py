"""The config a workdir's run was trained with, as a config file, so that evaluation and
sampling need only `--workdir`:

  python launch.py --workdir=W --mode=sample --config.sample.prompt='The '

`launch.py` passes `--config=<this file>:W` itself when eval or sample are asked for without
`--config`. `get_config(W)` reads `W/config.json` (written by training) over the defaults of
this version; overrides may then change only what evaluation and sampling read
(`CHANGEABLE`): a key of the model, the data or training would evaluate another run than the
one trained, and stops with one line naming it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import ml_collections

from perceiver_ar_vl import cli, config_defaults, errors

# What an override may change when the config comes from the workdir: what evaluation and
# sampling read, and how the model computes (not what it computes).
CHANGEABLE = (
  'eval.',
  'sample.',
  'model.dtype',
  'model.attention_impl',
  'compile_cache_dir',
  'cpu_execution',
)
CONFIG_FILE = 'config.json'
# Keys that older versions saved and this one derives (skipped when read).
RETIRED = {'data.copy_length_total_steps'}


def _merge(into: ml_collections.ConfigDict, saved: dict[str, Any], path: str) -> None:
  """Sets every key of `saved` in `into`, refusing keys this version does not know."""
  for key, value in saved.items():
    name = f'{path}{key}'
    if name in RETIRED:
      continue
    if key not in into:
      raise errors.UserError(
        f'{CONFIG_FILE} holds {name}, which this version of perceiver_ar_vl does not know; '
        'evaluate it with the version that trained it, or pass --config=FILE.'
      )
    if isinstance(into[key], ml_collections.ConfigDict):
      _merge(into[key], value, f'{name}.')
    else:
      into[key] = value


def get_config(workdir: str) -> ml_collections.ConfigDict:
  """The config of the run in `workdir` (its config.json over this version's defaults)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise errors.MissingFileError(
      f'No {CONFIG_FILE} in {workdir}: pass the --workdir of a trained run, or --config=FILE '
      'with the config it was trained with.'
    )
  with open(path) as f:
    saved = json.load(f)
  config = config_defaults.base_config()
  _merge(config, saved, '')
  return config


def changeable() -> str:
  """`CHANGEABLE` as a sentence: 'eval.*, sample.*, ... and model.attention_impl'."""
  names = [f'{key}*' if key.endswith('.') else key for key in CHANGEABLE]
  return f'{", ".join(names[:-1])} and {names[-1]}'


def complete_argv(argv: Sequence[str]) -> list[str]:
  """`argv`, with `--config=<this file>:<workdir>` added for `--mode=eval|sample` without
  `--config`; then an override of a key outside `CHANGEABLE` stops with one `error:` line."""
  argv = list(argv)
  mode, workdir = cli.config_file_arg('mode', argv), cli.config_file_arg('workdir', argv)
  given = cli.config_file_arg('config', argv) is not None
  if mode not in ('eval', 'sample') or given or not workdir:
    return argv
  for arg in argv[1:]:
    if arg.startswith('--config.'):
      key = arg[len('--config.') :].partition('=')[0]
      if not key.startswith(CHANGEABLE):
        cli.fail(
          f'--config.{key}: {workdir} holds a trained run, whose model, data and training '
          f'settings stay as it saved them ({os.path.join(workdir, CONFIG_FILE)}); '
          f'{mode} may change only {changeable()}. To {mode} with other settings, pass '
          '--config=FILE as well.'
        )
  try:
    get_config(workdir)  # no or a foreign config.json: its own line, before absl loads it
  except errors.UserError as e:
    cli.fail(str(e))
  return [argv[0], f'--config={os.path.abspath(__file__)}:{workdir}', *argv[1:]]
