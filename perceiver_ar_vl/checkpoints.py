"""Orbax checkpoints in `<workdir>/checkpoints`: atomic saves, restore of the latest step.

Orbax writes each step into a temporary directory and renames it when complete, so a run
killed mid-save leaves the previous checkpoint intact and the half-written one is ignored.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from perceiver_ar_vl import errors


class CheckpointError(errors.UserError, RuntimeError):
  """No checkpoint to restore, or one that cannot be restored (corrupt, or from another
  model); the message names the step, the mismatched parameter and what to do."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def manager(workdir: str, max_to_keep: int = 3, create: bool = True) -> ocp.CheckpointManager:
  """The workdir's checkpoint manager (keeps the newest `max_to_keep` steps).

  Its item handler is given up front so that `item_metadata` can read a step's array shapes
  before restoring it.
  """
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create)
  return ocp.CheckpointManager(
    checkpoint_dir(workdir), options=options, item_handlers=ocp.StandardCheckpointHandler()
  )


def save(mngr: ocp.CheckpointManager, step: int, state: Any) -> None:
  """Saves `state` at `step` asynchronously; re-saving a step is a no-op."""
  if step in mngr.all_steps():
    return
  mngr.save(step, args=ocp.args.StandardSave(state))


def resolve_step(mngr: ocp.CheckpointManager, step: int | None = None) -> int:
  """`step`, or the latest step when None, after checking it is saved in `mngr`."""
  steps = sorted(mngr.all_steps())
  workdir = os.path.dirname(str(mngr.directory))
  if not steps:
    raise CheckpointError(
      f'No checkpoint in {mngr.directory}: {workdir} holds no trained run. Train first '
      '(--mode=train with this --workdir) or pass the --workdir of a trained run.'
    )
  if step is None:
    return steps[-1]
  if step not in steps:
    raise CheckpointError(
      f'No checkpoint at step {step} in {mngr.directory}; available steps: {steps}. Set '
      'eval.checkpoint_step to one of them, or to -1 for the latest.'
    )
  return step


def _path_name(path: tuple) -> str:
  """'params/cross_attend/attention/key/kernel' for a pytree key path (dict keys, attributes
  and indices alike, so a saved tree and the live TrainState name leaves the same way)."""
  parts = []
  for key in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  name = '/'.join(parts)
  return name.replace('params/params/', 'params/', 1)  # TrainState.params holds {'params': ...}


def _unreadable(mngr: ocp.CheckpointManager, step: int, error: Exception) -> CheckpointError:
  return CheckpointError(
    f'Checkpoint step {step} in {mngr.directory} could not be restored ({type(error).__name__}: '
    f'{" ".join(str(error).split())[:300]}). It is corrupt or was written by a different model '
    f'config. Use the same config as the run that wrote it, or move that step directory away '
    f'to fall back to an earlier step ({sorted(mngr.all_steps())}).'
  )


def check_shapes(mngr: ocp.CheckpointManager, step: int, abstract_state: Any) -> None:
  """Raises CheckpointError naming the first array whose saved shape differs from
  `abstract_state` (parameters first), or that one side lacks. Reads metadata only."""
  try:
    metadata = mngr.item_metadata(step)
  except Exception as e:  # orbax raises many types for damaged files
    raise _unreadable(mngr, step, e) from e
  if metadata is None:
    return
  stored = {_path_name(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(metadata)}
  wanted = {_path_name(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(abstract_state)}
  workdir = os.path.dirname(str(mngr.directory))
  fix = (
    f'Use the config of the run that wrote it (saved in {os.path.join(workdir, "config.json")}) '
    'or a fresh --workdir for this config.'
  )
  prefix = f'Checkpoint step {step} in {mngr.directory} was written by a different model:'
  for name in sorted(wanted, key=lambda n: (not n.startswith('params/'), n)):
    if name not in stored:
      extra = sorted(set(stored) - set(wanted))
      held = f' (it holds {extra[0]} instead)' if extra else ''
      raise CheckpointError(f'{prefix} it has no {name}{held}. {fix}')
    have, want = tuple(stored[name].shape), tuple(wanted[name].shape)
    if have != want:
      differ = [
        n for n in wanted if n in stored and tuple(stored[n].shape) != tuple(wanted[n].shape)
      ]
      params = sum(n.startswith('params/') for n in differ)
      raise CheckpointError(
        f'{prefix} {name} has shape {have} there but {want} in this config '
        f'({params} parameter arrays differ). {fix}'
      )
  extra = sorted(set(stored) - set(wanted))
  if extra:
    raise CheckpointError(f'{prefix} it holds {extra[0]}, which this config has no use for. {fix}')


def restore(mngr: ocp.CheckpointManager, abstract_state: Any, step: int | None = None) -> Any:
  """Restores `step` (default: the latest) into the structure/shardings of `abstract_state`.

  Checks first that the step exists and that its shapes match, so a wrong workdir or config
  stops with a CheckpointError that says what to change.
  """
  step = resolve_step(mngr, step)
  check_shapes(mngr, step, abstract_state)
  try:
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))
  except Exception as e:  # orbax raises many types for damaged or mismatched files
    raise _unreadable(mngr, step, e) from e
