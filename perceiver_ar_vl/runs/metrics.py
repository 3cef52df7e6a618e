"""Metrics to TensorBoard event files, `metrics.jsonl` and (optionally) Weights & Biases.

Only process 0 writes. W&B is imported only when switched on (`config.train.wandb=True`); a
workdir keeps one W&B run (its id in `<workdir>/wandb_id`), which a resumed run continues.
Evaluation adds its results to the same TensorBoard directory (`write_tensorboard`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping

import jax
from absl import logging

from perceiver_ar_vl.runs import run_files

TENSORBOARD_DIR = 'tensorboard'
WANDB_ID_FILE = 'wandb_id'


class MetricWriter:
  """Writes scalar dicts keyed by step; `close()` flushes everything."""

  def __init__(
    self,
    workdir: str,
    *,
    use_wandb: bool = False,
    wandb_project: str = '',
    config: Mapping | None = None,
  ):
    self._active = jax.process_index() == 0
    self._tb = self._jsonl = self._wandb = None
    if not self._active:
      return
    os.makedirs(workdir, exist_ok=True)
    from tensorboardX import SummaryWriter

    self._tb = SummaryWriter(logdir=os.path.join(workdir, TENSORBOARD_DIR))
    self._jsonl = open(os.path.join(workdir, run_files.METRICS_FILE), 'a')  # noqa: SIM115
    if use_wandb:
      import wandb  # optional dependency: pip install -e '.[wandb]'

      self._wandb = wandb.init(
        project=wandb_project,
        dir=workdir,
        config=dict(config or {}),
        id=wandb_run_id(workdir, wandb.util.generate_id),
        resume='allow',
      )

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self._active:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    for key, value in scalars.items():
      self._tb.add_scalar(key, value, step)
    record = {'step': int(step), 'time': time.time(), **scalars}
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    if self._wandb is not None:
      self._wandb.log(scalars, step=step)

  def close(self) -> None:
    if not self._active:
      return
    self._tb.close()
    self._jsonl.close()
    if self._wandb is not None:
      self._wandb.finish()


def wandb_run_id(workdir: str, new_id: Callable[[], str]) -> str:
  """The W&B run id of `workdir`: the one stored in `<workdir>/wandb_id`, or `new_id()`,
  stored there first, so every invocation on a workdir logs to one W&B run."""
  path = os.path.join(workdir, WANDB_ID_FILE)
  if os.path.isfile(path):
    with open(path) as f:
      stored = f.read().strip()
    if stored:
      return stored
  run_id = new_id()
  run_files.write_atomically(path, run_id + '\n')
  return run_id


def write_tensorboard(workdir: str, step: int, scalars: Mapping[str, float]) -> None:
  """Adds `scalars` at `step` to `workdir`'s TensorBoard event files (process 0), e.g. the
  evaluation's results beside the training curves."""
  if jax.process_index() != 0 or not scalars:
    return
  from tensorboardX import SummaryWriter

  with SummaryWriter(logdir=os.path.join(workdir, TENSORBOARD_DIR)) as tb:
    for key, value in scalars.items():
      tb.add_scalar(key, float(value), step)


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  seconds = int(seconds)
  hours, rest = divmod(seconds, 3600)
  return f'{hours}h{rest // 60:02d}m' if hours else f'{rest // 60}m{rest % 60:02d}s'


def quiet_orbax_logs() -> None:
  """Drops orbax's step-by-step INFO chatter from the absl log; its warnings stay."""
  import logging as std_logging

  def keep(record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname

  logging.get_absl_handler().addFilter(keep)
