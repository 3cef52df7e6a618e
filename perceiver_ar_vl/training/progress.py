"""What a training run reports while it runs: step metrics kept on the device until a flush
(with the NaN guard), throughput and ETA timed over training steps only, and the profiler
trace of the steps `train.profile_steps` names.

The throughput clock starts once the run's first step has finished (so compiling, and what a
compiled program's first call costs, never count; the first step is not counted either) and
is paused while the run validates or saves (`MetricLog.paused`): those times are logged
apart, as `compile_seconds`, `checkpoint_seconds` and `eval_seconds`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np
from absl import logging

from perceiver_ar_vl import runtime, spec
from perceiver_ar_vl.runs import checkpoints, metrics

PROFILE_DIR = 'profile'  # under the workdir: TensorBoard's profile plugin reads it


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/Inf loss; the last good checkpoint is kept."""


class Stopwatch:
  """The seconds a `with MetricLog.paused(...)` block took (`seconds`, once it has ended)."""

  seconds = 0.0


class MetricLog:
  """Step metrics stay on device until `flush` (every log_every steps and before each save),
  which checks them for NaN, writes them and logs the last with the window's throughput.

  `clock` is the time source (seconds; a fake one in tests)."""

  def __init__(
    self,
    writer: metrics.MetricWriter,
    config: spec.RunSpec,
    workdir: str,
    clock: Callable[[], float] = time.perf_counter,
  ):
    self._writer, self._config, self._workdir, self._clock = writer, config, workdir, clock
    self._pending: list[tuple[int, int, int, dict]] = []
    self._aside: dict[str, float] = {}  # seconds spent apart from steps since the last flush
    self._first_step_done = False
    self._reset()

  def _reset(self) -> None:
    self._start: float | None = None  # set by the first step after a flush
    self._excluded, self._steps, self._tokens = 0.0, 0, 0.0

  def add(self, step: int, n: int, bucket: int, device_metrics: dict) -> None:
    self._pending.append((step, n, bucket, device_metrics))
    if not self._first_step_done:  # timed apart: the clock starts once it has run
      jax.block_until_ready(device_metrics)
      self._first_step_done = True
      self._start = self._clock()
      return
    if self._start is None:
      self._start = self._clock()
    self._steps += 1
    self._tokens += self._config.train.batch_size * n

  def set_aside(self, name: str, seconds: float) -> None:
    """Logs `seconds` spent on `name` (e.g. 'compile') with the next flush's last step."""
    key = f'{name}_seconds'
    self._aside[key] = self._aside.get(key, 0.0) + seconds

  @contextlib.contextmanager
  def paused(self, name: str = '') -> Iterator[Stopwatch]:
    """A block whose time is not training time (validation, a save): the steps dispatched
    before it are waited for first, so their device time still counts as training. With a
    `name`, the seconds are logged with the next flush (`<name>_seconds`)."""
    if self._pending:
      jax.block_until_ready(self._pending[-1][-1])
    watch, started = Stopwatch(), self._clock()
    try:
      yield watch
    finally:
      watch.seconds = self._clock() - started
      if self._start is not None:
        self._excluded += watch.seconds
      if name:
        self.set_aside(name, watch.seconds)

  def throughput(self) -> tuple[float, float]:
    """(steps, target tokens) per second of training since the last flush."""
    if self._start is None:
      return 0.0, 0.0
    elapsed = max(self._clock() - self._start - self._excluded, 1e-9)
    return self._steps / elapsed, self._tokens / elapsed

  def flush(self, last_saved: int) -> None:
    records = []
    fetched = jax.device_get([device_metrics for *_, device_metrics in self._pending])
    for (step, n, bucket, _), host_metrics in zip(self._pending, fetched, strict=True):
      r = {k: float(v) for k, v in host_metrics.items()}
      waste = bucket / n  # latent slots computed per active latent
      records.append(
        {'step': step, 'num_latents': n, 'bucket': bucket, 'padding_waste': waste, **r}
      )
    self._pending.clear()
    check_finite(records, self._workdir, last_saved)
    steps_per_sec, tokens_per_sec = self.throughput()
    for i, r in enumerate(records):
      aside = self._aside if i == len(records) - 1 else {}
      self._writer.write(
        r['step'],
        {
          **{k: v for k, v in r.items() if k != 'step'},
          'steps_per_sec': steps_per_sec,
          'target_tokens_per_sec': tokens_per_sec,
          **aside,
        },
      )
    if records:
      self._aside = {}
      self._log(records[-1], steps_per_sec, tokens_per_sec)
    self._reset()

  def _log(self, r: dict, steps_per_sec: float, tokens_per_sec: float) -> None:
    total = self._config.train.steps
    eta = (total - r['step']) / max(steps_per_sec, 1e-9)
    logging.info(
      'step %d/%d  loss %.4f  bpb %.3f  N %d  B %d  %.2f steps/s  %.0f tok/s  ETA %s',
      r['step'],
      total,
      r['loss'],
      r['bits_per_byte'],
      r['num_latents'],
      r['bucket'],
      steps_per_sec,
      tokens_per_sec,
      metrics.format_duration(eta),
    )

  def write(self, step: int, scalars: dict[str, float]) -> None:
    """Writes `scalars` (e.g. validation bits) at `step` at once."""
    self._writer.write(step, scalars)


def check_finite(records: list[dict], workdir: str, last_saved: int) -> None:
  for r in records:
    if not np.isfinite(r['loss']):
      kept = (
        f'The last good checkpoint (step {last_saved}) is kept in '
        f'{checkpoints.checkpoint_dir(workdir)}.'
        if last_saved
        else 'No checkpoint was saved before.'
      )
      raise NonFiniteLossError(
        f'Loss is {r["loss"]} at step {r["step"]}; training stopped. {kept} Lower '
        f'train.learning_rate, raise train.warmup_steps or use model.dtype=float32.'
      )


def unused_settings(config: spec.RunSpec) -> list[str]:
  """Notices for the train settings that this run cannot use as written (a warmup longer
  than the run, logs or saves spaced wider than it): each says what happens instead."""
  t, found = config.train, []
  if t.warmup_steps > max(t.steps - 1, 0):
    found.append(
      f'train.warmup_steps={t.warmup_steps} is not shorter than the run (train.steps='
      f'{t.steps}): the learning rate warms up over {max(t.steps - 1, 0)} steps instead.'
    )
  for key, what in (('log_every', 'progress is logged'), ('checkpoint_every', 'it is saved')):
    value = getattr(t, key)
    if value > t.steps:
      found.append(f'train.{key}={value} > train.steps={t.steps}: {what} at the end only.')
  if t.eval_every >= t.steps:
    found.append(
      f'train.eval_every={t.eval_every} >= train.steps={t.steps}: validation runs at the end only.'
    )
  return found


def start_report(config: spec.RunSpec, params, cache_dir: str | None) -> None:
  """Logs (process 0) what is running and the settings this run does not use as written."""
  if jax.process_index() != 0:
    return
  logging.info('%s', runtime.startup_report(config, params, cache_dir))
  for notice in unused_settings(config):
    logging.warning('%s', notice)


class StepProfiler:
  """A `jax.profiler` trace of steps first..last (`train.profile_steps`, counted from 1 as the
  log counts them) written to `<workdir>/profile` (TensorBoard's profile tab, or Perfetto
  through its `perfetto_trace.json.gz`), each step annotated with its number.

  Call `step(number)` around each step's dispatch and `after(number, outputs)` after it: the
  trace stops once the last step's outputs are computed."""

  def __init__(self, profile_steps: tuple[int, ...], workdir: str):
    self._first, self._last = profile_steps if profile_steps else (0, -1)
    self._dir = os.path.join(workdir, PROFILE_DIR)
    self._tracing = False

  @contextlib.contextmanager
  def step(self, number: int) -> Iterator[None]:
    if not self._first <= number <= self._last:
      yield
      return
    if not self._tracing:
      jax.profiler.start_trace(self._dir, create_perfetto_trace=True)
      self._tracing = True
      logging.info('Profiling steps %d to %d into %s.', number, self._last, self._dir)
    with jax.profiler.StepTraceAnnotation('train', step_num=number):
      yield

  def after(self, number: int, outputs) -> None:
    """Stops the trace, once `outputs` are computed, if step `number` is the last traced."""
    if self._tracing and number >= self._last:
      jax.block_until_ready(outputs)
      jax.profiler.stop_trace()
      self._tracing = False
