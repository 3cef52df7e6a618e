"""Orbax checkpoints in `<workdir>/checkpoints`: atomic saves, restore of the latest step.

Which steps are kept (the newest, every k-th, the best by validation bits) and which is the
best: `checkpoint_keeping`.

Orbax writes each step into `<step>.orbax-checkpoint-tmp` and renames it to `<step>` when
complete, so a run killed mid-save leaves the previous checkpoints intact; the unfinished
directory is not listed as a step and is overwritten or cleaned up later. A step that was
damaged after its commit (truncated or deleted files, a filesystem without atomic rename) is
found when restoring: training then resumes from the newest step that restores, with a warning
naming the skipped one, which is moved to `<workdir>/unreadable_checkpoints/`.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from perceiver_ar_vl import errors, parallel
from perceiver_ar_vl.runs import checkpoint_keeping, orbax_noise

# Orbax's name for a step directory still being written (a suffix may follow).
UNFINISHED_MARKER = '.orbax-checkpoint-tmp'
UNREADABLE_DIR = 'unreadable_checkpoints'


class CheckpointError(errors.UserError, RuntimeError):
  """No checkpoint to restore, or one that cannot be restored (corrupt, or from another
  model); the message names the step, the mismatched parameter and what to do."""


class UnreadableCheckpointError(CheckpointError):
  """A step whose files cannot be read: corrupt, truncated or partly deleted."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def manager(
  workdir: str,
  max_to_keep: int = 3,
  create: bool = True,
  remove_unfinished: bool = False,
  *,
  keep_every: int = 0,
  keep_best: int = 0,
) -> ocp.CheckpointManager:
  """The workdir's checkpoint manager: it keeps the newest `max_to_keep` steps, every
  `keep_every`-th step and the `keep_best` best-scored ones (`checkpoint_keeping`).

  Its item handler is given up front so that `item_metadata` can read a step's array shapes
  before restoring it. `remove_unfinished` deletes the directories of saves that never
  completed (see `unfinished_saves`); training sets it, readers leave the directory alone.
  """
  options = ocp.CheckpointManagerOptions(
    create=create,
    cleanup_tmp_directories=remove_unfinished,
    **checkpoint_keeping.manager_options(max_to_keep, keep_every, keep_best),
  )
  return ocp.CheckpointManager(
    checkpoint_dir(workdir), options=options, item_handlers=ocp.StandardCheckpointHandler()
  )


def save(
  mngr: ocp.CheckpointManager, step: int, state: Any, metrics: dict[str, float] | None = None
) -> None:
  """Saves `state` at `step` asynchronously; re-saving a step is a no-op. `metrics` (the
  step's validation score) is stored with it where the manager keeps the best steps."""
  if step in mngr.all_steps():
    return
  if metrics is None:
    with orbax_noise.quiet_unscored_save():
      mngr.save(step, args=ocp.args.StandardSave(state))
    return
  metrics = {name: float(value) for name, value in metrics.items()}
  mngr.save(step, args=ocp.args.StandardSave(state), metrics=metrics)


def resolve_step(mngr: ocp.CheckpointManager, step: int | str | None = None) -> int:
  """`step` after checking it is saved in `mngr`: the latest for None or -1, the kept step
  with the lowest validation bits per byte for 'best'."""
  steps = sorted(mngr.all_steps())
  workdir = os.path.dirname(str(mngr.directory))
  if not steps:
    raise CheckpointError(
      f'No checkpoint in {mngr.directory}: {workdir} holds no trained run. Train first '
      '(--mode=train with this --workdir) or pass the --workdir of a trained run.'
    )
  if step is None or step == -1:
    return steps[-1]
  if step == checkpoint_keeping.BEST:
    best = checkpoint_keeping.best_step(mngr)
    if best is None:
      raise CheckpointError(
        f'No checkpoint in {mngr.directory} carries a validation score, so none is the best: '
        'train with --config.train.keep_best=1 (or more) to score each saved step, or set '
        f'eval.checkpoint_step to one of the steps {steps}, or to -1 for the latest.'
      )
    return best
  if step not in steps:
    raise CheckpointError(
      f'No checkpoint at step {step} in {mngr.directory}; available steps: {steps}. Set '
      "eval.checkpoint_step to one of them, to -1 for the latest or to 'best'."
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


def _unreadable(
  mngr: ocp.CheckpointManager, step: int, error: Exception
) -> UnreadableCheckpointError:
  return UnreadableCheckpointError(
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


def unfinished_saves(workdir: str) -> list[str]:
  """Names of the step directories in `workdir`'s checkpoints that a save interrupted before
  its commit left behind (a run killed mid-save); they hold no restorable step."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  return sorted(name for name in os.listdir(directory) if UNFINISHED_MARKER in name)


def restore_newest_intact(mngr: ocp.CheckpointManager, abstract_state: Any) -> tuple[Any, int]:
  """(state, step) of the newest step that restores; raises CheckpointError if none does.

  A step whose files cannot be read is skipped with a warning naming it, and moved to
  `<workdir>/unreadable_checkpoints/` so that the step can be saved again and evaluation does
  not pick it up. A step written by a different model stops at once: an older step of the same
  run would not fit either. With several processes, every process must call this.
  """
  skipped: list[tuple[int, str]] = []  # (step, why it cannot be read)
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      with orbax_noise.quiet_abandoned_reads():
        state = restore(mngr, abstract_state, step)
    except UnreadableCheckpointError as e:
      skipped.append((step, _cause(e)))
      continue
    for bad, why in skipped:
      logging.warning(
        'Skipping checkpoint step %d in %s: it cannot be read (%s). Resuming from step %d, '
        'the newest intact one; step %d is moved to %s.',
        bad,
        mngr.directory,
        why,
        step,
        bad,
        _unreadable_dir(mngr),
      )
    _set_aside(mngr, [bad for bad, _ in skipped])
    return state, step
  if not skipped:
    raise CheckpointError(f'No checkpoint in {mngr.directory} to resume from.')
  steps = [bad for bad, _ in skipped]
  raise CheckpointError(
    f'No intact checkpoint in {mngr.directory}: every step ({steps}) is unreadable (step '
    f'{steps[0]}: {skipped[0][1]}). Training does not start over on top of them: move the '
    'checkpoints directory away (or use a fresh --workdir) to start from scratch.'
  )


def _cause(error: Exception) -> str:
  """The orbax/tensorstore error behind `error`, on one line and short."""
  cause = error.__cause__ or error
  return f'{type(cause).__name__}: {" ".join(str(cause).split())[:200]}'


def _unreadable_dir(mngr: ocp.CheckpointManager) -> str:
  return os.path.join(os.path.dirname(str(mngr.directory)), UNREADABLE_DIR)


def _set_aside(mngr: ocp.CheckpointManager, steps: list[int]) -> None:
  """Moves the directories of `steps` to `<workdir>/unreadable_checkpoints/` (process 0, once
  every process has restored) and makes every process's manager forget them."""
  if not steps:
    return
  parallel.barrier('checkpoints: restored')
  if jax.process_index() == 0:
    target = _unreadable_dir(mngr)
    os.makedirs(target, exist_ok=True)
    for step in steps:
      name = str(step)
      if os.path.exists(os.path.join(target, name)):
        name = f'{step}.{time.strftime("%Y%m%d-%H%M%S")}'
      os.replace(os.path.join(str(mngr.directory), str(step)), os.path.join(target, name))
  parallel.barrier('checkpoints: set aside')
  mngr.reload()
