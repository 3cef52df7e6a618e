"""One of the original's checkpoints as a workdir of this library, which `launch.py
--mode=eval` and `--mode=sample` read like a trained run's.

`write_workdir` reads the original's `checkpoint.dill` (safely: `load_checkpoint`), converts
its parameters (`from_haiku`, then `relabel.to_bytes` for byte data) and writes
`<workdir>/config.json`, a complete config of this library (`workdir_config`: the sweep's
model, its copy task, its latent count), and an orbax checkpoint `<workdir>/checkpoints/<step>`
holding a TrainState: the converted parameters, a fresh optimizer state (the original's Adam
moments are not carried over) and the original's global step. Both files are written
atomically; a workdir that already holds a checkpoint is refused.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any

import ml_collections

from perceiver_ar_vl import config_lib, errors
from perceiver_ar_vl.original import relabel, sweeps
from perceiver_ar_vl.original.checkpoint import read_checkpoint
from perceiver_ar_vl.original.convert import config_from_kwargs, from_haiku

MIRRORED = 'random_mirrored_'  # the copy-task sweeps: the only data this library has of theirs


def find_checkpoint(path: str) -> str:
  """The `checkpoint.dill` that `path` names: the file itself, a directory holding one, or a
  directory of the original's checkpoints (`models/latest/step_<N>_<date>/checkpoint.dill`,
  as the released zip unpacks), whose highest step is taken."""
  if os.path.isfile(path) or os.path.isfile(os.path.join(path, 'checkpoint.dill')):
    return path if os.path.isfile(path) else os.path.join(path, 'checkpoint.dill')
  found = [
    f
    for pattern in ('models/latest/*/checkpoint.dill', 'latest/*/checkpoint.dill')
    for f in glob.glob(os.path.join(glob.escape(path), pattern))
  ]
  if not found:
    raise errors.MissingFileError(
      f'No checkpoint at {path}: pass a checkpoint.dill, the directory holding it, or the '
      "directory of the original's checkpoints (with models/latest/step_*/checkpoint.dill)."
    )

  def step(found_path: str) -> int:
    match = re.search(r'step_(\d+)', found_path)
    return int(match.group(1)) if match else -1

  return max(found, key=lambda f: (step(f), f))


def model_kwargs(sweep: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
  """The constructor kwargs of the original's sweep `sweep`, with `overrides` (the kwargs a
  model was trained with where they differ from the sweep's)."""
  kwargs = sweeps.sweep_kwargs(sweep)
  if not sweep.startswith(MIRRORED):
    raise errors.UserError(
      f'Sweep {sweep!r} trains on data this library does not have; a workdir can be written '
      f'for the copy-task sweeps {[s for s in sweeps.SWEEPS if s.startswith(MIRRORED)]}.'
    )
  return {**kwargs, **(overrides or {})}


def parse_kwargs(text: str) -> dict[str, Any]:
  """Constructor kwargs from a JSON object, or from a .json file holding one ('' = none)."""
  if not text:
    return {}
  if os.path.isfile(text):
    with open(text) as f:
      text = f.read()
  try:
    kwargs = json.loads(text)
  except json.JSONDecodeError as e:
    raise errors.UserError(
      f'--kwargs is not a JSON object ({e}); pass e.g. --kwargs=\'{{"num_z_channels": 512}}\' '
      'or a .json file.'
    ) from None
  if not isinstance(kwargs, dict):
    raise errors.UserError(f'--kwargs must be a JSON object of constructor options, got {text}.')
  return kwargs


def workdir_config(
  sweep: str, kwargs: dict[str, Any], global_step: int, byte_data: bool = True
) -> ml_collections.ConfigDict:
  """The complete config of the workdir: `config_from_kwargs`'s model and latents (fixed at
  z_index_dim), relabelled for byte data (`relabel`) unless `byte_data` is False, and the
  task the sweep trained on: the aligned mirror copy task of M - 2 bytes (the original's SOS
  and EOS fill the window's other two), all 256 byte values, its minimum crop. Training
  settings are the sweep's (cosine lr 3e-4 after 1000 warmup steps, z_loss 1e-4) with
  train.steps at the original's step: a `--mode=train` on the workdir continues only once
  train.steps is raised."""
  c = config_from_kwargs(**kwargs)
  window = c.model.max_context
  c.name = f'original_{sweep}'
  if byte_data:
    relabel.byte_model(c, kwargs)
  else:
    c.model.vocab_size = len(relabel.widen(int(kwargs['num_classes'])))
  length = window - 2
  c.data.update(
    name='copy',
    copy_mode='mirror',
    copy_vocab=256,
    copy_length=length,
    copy_min_crop=min(sweeps.MINIMUM_CROP_LENGTH.get(sweep, length), length),
  )
  c.train.update(
    steps=max(int(global_step), 1),
    learning_rate=3e-4,
    lr_schedule='cosine',
    warmup_steps=1000,
    z_loss=1e-4,
  )
  c.eval.batch_size = max(1, min(64, (1 << 18) // window))  # ~256k positions a step
  # Sampling: greedy (a copy has one right answer), the mirrored half of an example; cached
  # decoding needs rotary positions (absolute ones move with the window).
  c.sample.update(
    temperature=0.0,
    length=max(1, length // 2),
    cached=c.model.position_encoding == 'rotary',
  )
  return c


def check_empty(workdir: str) -> None:
  """Refuses a workdir that already holds a checkpoint (a run, or an earlier conversion):
  a committed step directory of orbax's under `<workdir>/checkpoints` (checkpoints.py)."""
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  steps = (
    sorted(s for s in os.listdir(directory) if s.isdigit()) if os.path.isdir(directory) else []
  )
  if steps:
    raise errors.UserError(
      f'{workdir} already holds checkpoints (steps {steps} in {directory}); pass a new '
      '--workdir, or move that one away.'
    )


def check_arguments(
  checkpoint: str, workdir: str, sweep: str, overrides: dict[str, Any] | None, byte_data: bool
) -> str:
  """The checkpoint file `write_workdir` would read, after the checks that need no JAX: the
  sweep, the options and the data of the config, that the file exists and the workdir holds
  no checkpoint. Raises errors.UserError."""
  kwargs = model_kwargs(sweep, overrides)
  config_lib.validate(workdir_config(sweep, kwargs, 1, byte_data))
  path = find_checkpoint(checkpoint)
  check_empty(workdir)
  return path


def write_workdir(
  checkpoint: str,
  workdir: str,
  sweep: str,
  overrides: dict[str, Any] | None = None,
  byte_data: bool = True,
) -> tuple[ml_collections.ConfigDict, int]:
  """Writes `workdir` (config.json and checkpoints/<global step>) from the original's
  checkpoint at `checkpoint` (see `find_checkpoint`) of a model of sweep `sweep` with kwargs
  `overrides`; returns (its config, the step). `byte_data=False` keeps from_haiku's token
  ids and positions (see `relabel`). Raises errors.UserError before writing anything for an
  unknown sweep, a missing or unsafe file, parameters of another model or a used workdir."""
  path = check_arguments(checkpoint, workdir, sweep, overrides, byte_data)
  kwargs = model_kwargs(sweep, overrides)
  params, step = read_checkpoint(path)
  config = config_lib.validate(workdir_config(sweep, kwargs, step, byte_data))
  try:
    _, variables = from_haiku(params, **kwargs)
  except errors.UserError as e:  # the options were checked above: these are the parameters
    raise errors.UserError(
      f'{path} does not hold a model of sweep {sweep} with these options: {e} Pass the '
      'constructor options it was trained with where they differ from the sweep (--kwargs).'
    ) from None
  if byte_data:
    variables = relabel.to_bytes(variables, params, kwargs, config.model.max_context)
  else:
    ids = relabel.widen(int(kwargs['num_classes']))
    variables = {'params': relabel.relabel_vocabulary(variables['params'], ids)}
  from perceiver_ar_vl.runs import run_files

  run_files.write_config(config, workdir)
  save_state(config, variables, step, workdir)
  return config, step


def save_state(config: ml_collections.ConfigDict, variables: dict, step: int, workdir: str) -> None:
  """Saves a TrainState of `variables` at `step` (a fresh optimizer state) as the workdir's
  checkpoint, and waits until orbax has committed it."""
  import jax
  import jax.numpy as jnp

  from perceiver_ar_vl.runs import checkpoints, train_state

  tx, _ = train_state.make_optimizer(config.train)
  model = config_lib.create_model(config)
  state = train_state.TrainState.create(
    apply_fn=model.forward, params=jax.tree.map(jnp.asarray, variables), tx=tx
  ).replace(step=jnp.asarray(step, jnp.int32))
  mngr = checkpoints.manager(workdir, remove_unfinished=True)
  try:
    checkpoints.save(mngr, step, state)
    mngr.wait_until_finished()
  finally:
    mngr.close()
