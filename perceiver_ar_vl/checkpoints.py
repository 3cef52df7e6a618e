"""Orbax checkpoints in `<workdir>/checkpoints`: atomic saves, restore of the latest step.

Orbax writes each step into a temporary directory and renames it when complete, so a run
killed mid-save leaves the previous checkpoint intact and the half-written one is ignored.
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored (corrupt, or from another model)."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def manager(workdir: str, max_to_keep: int = 3, create: bool = True) -> ocp.CheckpointManager:
  """The workdir's checkpoint manager (keeps the newest `max_to_keep` steps)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: Any) -> None:
  """Saves `state` at `step` asynchronously; re-saving a step is a no-op."""
  if step in mngr.all_steps():
    return
  mngr.save(step, args=ocp.args.StandardSave(state))


def restore(mngr: ocp.CheckpointManager, abstract_state: Any, step: int | None = None) -> Any:
  """Restores `step` (default: the latest) into the structure/shardings of `abstract_state`."""
  steps = mngr.all_steps()
  if step is None:
    step = mngr.latest_step()
  if step is None or step not in steps:
    raise CheckpointError(
      f'No checkpoint at step {step} in {mngr.directory}; available steps: '
      f'{sorted(steps) or "none"}.'
    )
  try:
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))
  except Exception as e:  # orbax raises many types for damaged or mismatched files
    raise CheckpointError(
      f'Checkpoint step {step} in {mngr.directory} could not be restored ({type(e).__name__}: '
      f'{str(e)[:300]}). It is corrupt or was written by a different model config. Use the '
      f'same config as the run that wrote it, or move that step directory away to fall back to '
      f'an earlier step ({sorted(steps)}).'
    ) from e
