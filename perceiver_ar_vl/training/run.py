"""A training run: optax AdamW, a pure jitted train_step per latent bucket, data parallel
over a Mesh, orbax checkpoints with exact resume, metrics, NaN guard, SIGTERM/SIGINT saves.
The step is `training.step`, its compiled programs `training.compiled_steps`, the host
machinery that runs them (device batches, stop vote) `training.host_loop`, the metric log
`training.progress`; this module strings them into a run.

A step with N latents runs the train_step compiled for bucket B = bucket_for(N): N is a traced
int32 argument, B a static shape, so a run compiles once per bucket it uses.

Kill safety: a run killed at any moment (SIGKILL included) and started again with the same
command ends with the same parameters, losses and validation bits as one never interrupted. It
resumes from the newest intact checkpoint (checkpoints.restore_newest_intact), draws the same
data and dropout from (seed, step), drops the metric records of the steps it does again, and
writes its small files atomically. On SIGTERM/SIGINT every process stops after the same step
(`host_loop.StopVote`), saves it and exits 0.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from absl import logging
from jax.sharding import Mesh

from perceiver_ar_vl import config_lib, data, parallel, runtime, step_plan, windows
from perceiver_ar_vl.evaluation import evaluate
from perceiver_ar_vl.models.base import LanguageModel
from perceiver_ar_vl.runs import checkpoints, metrics, run_files, train_state
from perceiver_ar_vl.runs.train_state import TrainState
from perceiver_ar_vl.training import progress, workdir_lock
from perceiver_ar_vl.training.compiled_steps import CompiledSteps
from perceiver_ar_vl.training.host_loop import (
  DeviceBatches,
  DeviceInts,
  StopSignal,
  StopVote,
)
from perceiver_ar_vl.training.progress import MetricLog, StepProfiler


def validation_metrics(config, model, params, dataset, mesh) -> dict[str, float]:
  """Validation bits per byte at the training maximum N, over train.eval_max_bytes bytes
  ('validation_bits_per_byte'); on the copy task also its copy and fresh bits."""
  result = evaluate.bits_per_byte(
    model,
    params,
    dataset.split_bytes('validation'),
    num_latents=config.latents.max,
    batch_size=config.eval.batch_size,
    max_bytes=config.train.eval_max_bytes,
    mesh=mesh,
    source_distances=dataset.source_distances('validation'),
  )
  found = {'validation_bits_per_byte': result['bits']}
  for key in ('copy_bits', 'fresh_bits'):
    if result.get(key) is not None:
      found[f'validation_{key}'] = result[key]
  return found


def _warn_unfinished_saves(workdir: str) -> None:
  """Names the checkpoint writes that a killed run left unfinished (the manager that training
  opens removes them; they never held a restorable step)."""
  unfinished = checkpoints.unfinished_saves(workdir)
  if unfinished and jax.process_index() == 0:
    logging.warning(
      'Removing unfinished checkpoint writes in %s left by an interrupted run: %s.',
      checkpoints.checkpoint_dir(workdir),
      ', '.join(unfinished),
    )


@dataclasses.dataclass(frozen=True)
class _Run:
  """What the steps of one training invocation share."""

  config: ml_collections.ConfigDict
  model: LanguageModel
  mesh: Mesh
  dataset: data.ByteDataset
  mngr: Any  # orbax CheckpointManager
  workdir: str
  plan: step_plan.StepPlan  # (N, bucket, window) of every step


def _resume_or_start(run: _Run, workdir: str) -> tuple[TrainState, int]:
  """(state, step) to train from: the newest intact checkpoint in `workdir`, or a fresh state
  at step 0 when it holds none. Checkpoints that exist but none of which restores raise
  CheckpointError: a fresh start would hide them under new ones."""
  if not run.mngr.all_steps():
    return train_state.create_train_state(run.config, run.model, run.mesh), 0
  abstract_state = train_state.abstract_train_state(run.config, run.model, run.mesh)
  state, step = checkpoints.restore_newest_intact(run.mngr, abstract_state)
  logging.info('Resumed from step %d in %s.', step, workdir)
  return state, step


def train(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  after_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns a summary of this invocation.

  `after_step(step)`, if given, is called on the host after each step is dispatched (step =
  the number of steps done), before the stop vote: e.g. to send a signal at a chosen step.

  The summary holds 'start_step', 'final_step', 'compiles' ({bucket: traces}), 'buckets_used'
  (with a window curriculum also 'windows_used'),
  'train_seconds' (wall-clock of every invocation on this workdir, summed) and, once the run
  is finished, 'validation_bits'. It is also written to `train_summary.json`. Re-running a
  finished run returns at once (it only scores validation if a kill prevented that before).

  Called from a notebook or a script, it logs its progress through absl at INFO level
  (`runtime.show_info_logs`) and compiles through JAX's persistent cache
  (`compile_cache_dir`).

  One run per workdir: while another live process trains in `workdir`, this raises
  workdir_lock.WorkdirBusyError before anything there is written or cleaned.
  """
  started = time.perf_counter()
  config = config_lib.read_spec(config)
  runtime.show_info_logs()
  runtime.configure_cpu_execution(config.cpu_execution)  # before the lock starts JAX's client
  with workdir_lock.held(workdir):
    return _train_holding_lock(config, workdir, after_step, started)


def _train_holding_lock(
  config: ml_collections.ConfigDict,
  workdir: str,
  after_step: Callable[[int], None] | None,
  started: float,
) -> dict[str, Any]:
  """`train`, once this run holds the workdir's lock."""
  cache_dir = runtime.enable_compilation_cache(config.compile_cache_dir)
  t = config.train
  mesh = parallel.make_mesh()
  parallel.check_batch_size(t.batch_size, mesh, t.grad_accum_steps)
  model = config_lib.create_model(config)
  dataset = data.make_dataset(
    config.data, windows.row_length(config), config.seed, total_steps=t.steps
  )

  _warn_unfinished_saves(workdir)
  mngr = checkpoints.manager(
    workdir,
    max_to_keep=t.keep_checkpoints,
    remove_unfinished=True,
    keep_every=t.keep_every,
    keep_best=t.keep_best,
  )
  run = _Run(config, model, mesh, dataset, mngr, workdir, step_plan.plan(config))
  steps = CompiledSteps(config, model, mesh)
  writer = None
  try:
    with StopSignal() as stop:  # from here on, a signal ends in a checkpoint
      state, start_step = _resume_or_start(run, workdir)
      progress.start_report(config, state.params, cache_dir)
      run_files.write_config(
        config, workdir
      )  # after a restore: a mismatched config leaves the old one
      run_files.drop_metrics_after(workdir, start_step)
      writer = metrics.MetricWriter(
        workdir, use_wandb=t.wandb, wandb_project=t.wandb_project, config=config.to_dict()
      )
      last_saved = start_step
      if start_step >= t.steps:
        logging.info('Run in %s already finished at step %d of %d.', workdir, start_step, t.steps)
      else:
        log = MetricLog(writer, config, workdir)
        vote = StopVote(stop, mesh)
        state, last_saved = _train_steps(run, state, start_step, steps, log, vote, after_step)
    summary = {'start_step': start_step, 'final_step': last_saved}
    if last_saved >= t.steps:
      summary['validation_bits'] = _final_validation(run, state.params, writer, workdir)
  finally:
    mngr.wait_until_finished()
    mngr.close()
    if writer is not None:
      writer.close()
  summary['compiles'] = dict(steps.compiles)
  summary['buckets_used'] = sorted(steps.compiles)
  if config.window.schedule != 'none':
    summary['windows_used'] = sorted(steps.window_compiles)
  run_files.write_summary(summary, workdir, time.perf_counter() - started)
  return summary


def _train_steps(
  run: _Run,
  state: TrainState,
  start_step: int,
  steps: CompiledSteps,
  log: MetricLog,
  vote: StopVote,
  after_step: Callable[[int], None] | None,
) -> tuple[TrainState, int]:
  """Steps from `start_step` to train.steps, or to the step after which `vote` says stop;
  checkpoints every checkpoint_every steps, at the end and at a stop. Returns the state and
  the last step saved. With train.keep_best, each of those saves but a stop's off the
  checkpoint_every grid is scored on validation first and saved with its score.

  The host never waits for the device between logs: the buckets are compiled before the first
  step, batches reach the device ahead of their step (DeviceBatches) and metrics are read
  once per log_every steps (MetricLog), which times the steps apart from compiling, saving
  and validating. On a multi-device CPU mesh it stays at most a few steps ahead
  (`parallel.InFlight`)."""
  config, mesh = run.config, run.mesh
  t = config.train
  base_rng = jax.device_put(jax.random.PRNGKey(config.seed + 1), parallel.replicated(mesh))
  latent_counts = DeviceInts(mesh)
  host_batches = run.dataset.train_batches(
    start_step, t.steps, t.batch_size, config.seed, jax.process_index(), jax.process_count()
  )
  profiler = StepProfiler(tuple(t.profile_steps), run.workdir)
  last_saved = start_step
  in_flight = parallel.InFlight(mesh)
  with DeviceBatches(host_batches, mesh) as batches:  # fills while the buckets compile
    ahead = run.plan.windows_ahead(start_step)  # [M] without a window curriculum
    buckets = run.plan.buckets_ahead(start_step)
    with log.paused('compile') as compiling:
      steps.compile_ahead(buckets, state, ahead)
    logging.info('Compiled %d train steps in %.1f s.', len(buckets) * len(ahead), compiling.seconds)
    for step in range(start_step, t.steps):
      n, bucket, window = run.plan.at(step)
      step_fn = steps(bucket, window)
      done = step + 1
      with profiler.step(done):
        state, device_metrics = step_fn(state, next(batches), latent_counts(n), base_rng)
      in_flight.add(device_metrics)
      profiler.after(done, device_metrics)
      log.add(done, n, bucket, device_metrics)
      if after_step is not None:
        after_step(done)
      stop = vote.after_step()
      if done % t.log_every == 0:
        log.flush(last_saved)
      scored = None  # this step's validation, when it chooses which checkpoints are kept
      if done % t.checkpoint_every == 0 or done == t.steps or stop:
        log.flush(last_saved)  # never checkpoint a state whose loss was not checked
        if t.keep_best and (done % t.checkpoint_every == 0 or done == t.steps):
          scored = _validate(run, state, log, done)  # before the save: a resume has its record
        with log.paused('checkpoint'):
          checkpoints.save(run.mngr, done, state, metrics=scored)
        last_saved = done
      if t.eval_every and done % t.eval_every == 0 and done != t.steps and scored is None:
        _validate(run, state, log, done)
      if stop:
        logging.warning('Stopping after step %d (%s): saved step %d, exiting.', done, stop, done)
        break
    profiler.after(t.steps, state)  # a stop inside the traced steps
  return state, last_saved


def _validate(run: _Run, state: TrainState, log: MetricLog, step: int) -> dict[str, float]:
  """Scores validation at `step`, off the throughput clock, and logs it with its seconds."""
  with log.paused() as scoring:
    found = validation_metrics(run.config, run.model, state.params, run.dataset, run.mesh)
  log.write(step, {**found, 'eval_seconds': scoring.seconds})
  return found


def _final_validation(run: _Run, params, writer: metrics.MetricWriter, workdir: str) -> float:
  """Validation bits per byte of the finished run: scored and written to the metrics once
  (a rerun of a run killed before it scored them scores them then)."""
  steps = run.config.train.steps
  bits = run_files.recorded_validation_bits(workdir, steps)
  if bits is None:
    found = validation_metrics(run.config, run.model, params, run.dataset, run.mesh)
    writer.write(steps, found)
    bits = found['validation_bits_per_byte']
  logging.info('Validation bits per byte at step %d: %.4f', steps, bits)
  return bits
