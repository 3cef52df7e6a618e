"""The training loop: optax AdamW, a pure jitted train_step per latent bucket, data parallel
over a Mesh, orbax checkpoints with exact resume, metrics, NaN guard, SIGTERM/SIGINT saves.
The step itself and the host machinery that runs it (compiled steps, device batches, metric
log, stop vote) live in `stepping`; this module strings them into a run.

A step with N latents runs the train_step compiled for bucket B = bucket_for(N): N is a traced
int32 argument, B a static shape, so a run compiles once per bucket it uses.

Kill safety: a run killed at any moment (SIGKILL included) and started again with the same
command ends with the same parameters, losses and validation bits as one never interrupted. It
resumes from the newest intact checkpoint (checkpoints.restore_newest_intact), draws the same
data and dropout from (seed, step), drops the metric records of the steps it does again, and
writes its small files atomically. On SIGTERM/SIGINT every process stops after the same step
(_StopVote), saves it and exits 0.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import ml_collections
from absl import logging
from jax.sharding import Mesh

from perceiver_ar_vl import (
  checkpoints,
  config_lib,
  data,
  errors,
  evaluate,
  latents,
  metrics,
  parallel,
)
from perceiver_ar_vl import (
  state as state_lib,
)
from perceiver_ar_vl.stepping import (  # noqa: F401 (train_step, NonFiniteLossError: public here too)
  NonFiniteLossError,
  _CompiledSteps,
  _DeviceBatches,
  _DeviceInts,
  _MetricLog,
  _StopSignal,
  _StopVote,
  train_step,
)


def latent_count(config: ml_collections.ConfigDict, step: int) -> int:
  """N at `step` from the configured strategy."""
  return _latents_at(config, step)


def _latents_at(config: ml_collections.ConfigDict, step: int) -> int:
  """latent_count's computation (the bucket plan reads it directly, so that a test that
  patches latent_count to act at one step acts only when the loop reaches that step)."""
  lat = config.latents
  return latents.num_latents_at(
    step,
    strategy=lat.strategy,
    min_latents=lat.min,
    max_latents=lat.max,
    total_steps=config.train.steps,
    seed=config.seed,
    buckets=lat.buckets,
    schedule=lat.schedule,
    warmup_fraction=lat.warmup_fraction,
  )


def buckets_ahead(config: ml_collections.ConfigDict, start_step: int) -> list[int]:
  """The buckets steps [start_step, train.steps) use, sorted: what a run compiles at start-up.

  Stops reading the schedule once every bucket that [latents.min, latents.max] can reach has
  appeared (a uniform run shows them all within a few steps; a curriculum reads ~1 us a step).
  """
  lat = config.latents
  reachable = {latents.bucket_for(n, lat.buckets) for n in range(lat.min, lat.max + 1)}
  used: set[int] = set()
  for step in range(start_step, config.train.steps):
    used.add(latents.bucket_for(_latents_at(config, step), lat.buckets))
    if used == reachable:
      break
  return sorted(used)


def _write_atomically(path: str, text: str) -> None:
  """Writes `text` to `path` through a temporary file and a rename, so a kill mid-write
  leaves the old file or the new one, never a truncated one."""
  tmp = f'{path}.{os.getpid()}.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    _write_atomically(os.path.join(workdir, 'config.json'), config.to_json_best_effort(indent=2))


def validation_bits(config, model, params, dataset, mesh) -> float:
  """Validation bits per byte at the training maximum N, over train.eval_max_bytes bytes."""
  result = evaluate.bits_per_byte(
    model,
    params,
    dataset.split_bytes('validation'),
    num_latents=config.latents.max,
    batch_size=config.eval.batch_size,
    max_bytes=config.train.eval_max_bytes,
    mesh=mesh,
  )
  return result['bits']


def _check_batch(t: ml_collections.ConfigDict, mesh: Mesh) -> None:
  """The global batch splits evenly over the devices and each process's rows over the
  microbatches; raises UserError if not."""
  parallel.check_batch_size(t.batch_size, mesh)
  if (t.batch_size // jax.process_count()) % t.grad_accum_steps:
    raise errors.UserError(
      f'train.batch_size={t.batch_size} over {jax.process_count()} processes leaves '
      f'{t.batch_size // jax.process_count()} rows per process, not divisible by '
      f'train.grad_accum_steps={t.grad_accum_steps}; change either.'
    )


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
  model: Any
  mesh: Mesh
  dataset: data.ByteDataset
  mngr: Any  # orbax CheckpointManager


def _resume_or_start(run: _Run, workdir: str) -> tuple[state_lib.TrainState, int]:
  """(state, step) to train from: the newest intact checkpoint in `workdir`, or a fresh state
  at step 0 when it holds none. Checkpoints that exist but none of which restores raise
  CheckpointError: a fresh start would hide them under new ones."""
  if not run.mngr.all_steps():
    return state_lib.create_train_state(run.config, run.model, run.mesh), 0
  abstract_state = state_lib.abstract_train_state(run.config, run.model, run.mesh)
  state, step = checkpoints.restore_newest_intact(run.mngr, abstract_state)
  logging.info('Resumed from step %d in %s.', step, workdir)
  return state, step


def _drop_metrics_after(workdir: str, step: int) -> None:
  """Drops the metrics.jsonl records of steps after `step`, and a last line cut short by a kill.

  A run killed after its last checkpoint logged steps that the resumed run does again; without
  this they would appear twice. Process 0 rewrites the file atomically.
  """
  path = os.path.join(workdir, 'metrics.jsonl')
  if jax.process_index() != 0 or not os.path.exists(path):
    return
  kept, dropped = [], 0
  with open(path) as f:
    for line in f:
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        dropped += 1
        continue
      if record.get('step', 0) > step:
        dropped += 1
      else:
        kept.append(line if line.endswith('\n') else line + '\n')
  if dropped:
    _write_atomically(path, ''.join(kept))
    logging.info('Dropped %d metric records after step %d from %s.', dropped, step, path)


def _recorded_validation_bits(workdir: str, step: int) -> float | None:
  """The validation bits per byte that metrics.jsonl holds for `step`, if any."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return None
  bits = [
    r['validation_bits_per_byte']
    for r in metrics.read_jsonl(path)
    if r.get('step') == step and 'validation_bits_per_byte' in r
  ]
  return bits[-1] if bits else None


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns a summary of this invocation.

  The summary holds 'start_step', 'final_step', 'compiles' ({bucket: traces}), 'buckets_used',
  'train_seconds' (wall-clock of every invocation on this workdir, summed) and, once the run
  is finished, 'validation_bits'. It is also written to `train_summary.json`. Re-running a
  finished run returns at once (it only scores validation if a kill prevented that before).
  """
  started = time.perf_counter()
  config_lib.validate(config)
  t = config.train
  mesh = parallel.make_mesh()
  _check_batch(t, mesh)
  model = config_lib.create_model(config)
  dataset = data.make_dataset(config.data, window=config.model.max_context + 1, seed=config.seed)

  _warn_unfinished_saves(workdir)
  mngr = checkpoints.manager(workdir, max_to_keep=t.keep_checkpoints, remove_unfinished=True)
  run = _Run(config, model, mesh, dataset, mngr)
  steps = _CompiledSteps(config, model, mesh, state_lib.make_optimizer(t)[1])
  writer = None
  try:
    with _StopSignal() as stop:  # from here on, a signal ends in a checkpoint
      state, start_step = _resume_or_start(run, workdir)
      _write_config(config, workdir)  # after a restore: a mismatched config leaves the old one
      _drop_metrics_after(workdir, start_step)
      writer = metrics.MetricWriter(
        workdir, use_wandb=t.wandb, wandb_project=t.wandb_project, config=config.to_dict()
      )
      last_saved = start_step
      if start_step >= t.steps:
        logging.info('Run in %s already finished at step %d of %d.', workdir, start_step, t.steps)
      else:
        log = _MetricLog(writer, config, workdir)
        state, last_saved = _train_steps(run, state, start_step, steps, log, _StopVote(stop, mesh))
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
  _write_summary(summary, workdir, time.perf_counter() - started)
  return summary


def _train_steps(
  run: _Run,
  state: state_lib.TrainState,
  start_step: int,
  steps: _CompiledSteps,
  log: _MetricLog,
  vote: _StopVote,
) -> tuple[state_lib.TrainState, int]:
  """Steps from `start_step` to train.steps, or to the step after which `vote` says stop;
  checkpoints every checkpoint_every steps, at the end and at a stop. Returns the state and
  the last step saved.

  The host never waits for the device between logs: the buckets are compiled before the first
  step, batches reach the device ahead of their step (_DeviceBatches) and metrics are read
  once per log_every steps (_MetricLog)."""
  config, mesh = run.config, run.mesh
  t = config.train
  base_rng = jax.device_put(jax.random.PRNGKey(config.seed + 1), parallel.replicated(mesh))
  latent_counts = _DeviceInts(mesh)
  host_batches = run.dataset.train_batches(
    start_step, t.steps, t.batch_size, config.seed, jax.process_index(), jax.process_count()
  )
  last_saved = start_step
  with _DeviceBatches(host_batches, mesh) as batches:  # fills while the buckets compile
    steps.compile_ahead(buckets_ahead(config, start_step), state, base_rng)
    for step in range(start_step, t.steps):
      n = latent_count(config, step)
      bucket = latents.bucket_for(n, config.latents.buckets)
      state, device_metrics = steps(bucket)(state, next(batches), latent_counts(n), base_rng)
      done = step + 1
      log.add(done, n, bucket, device_metrics)
      stop = vote.after_step()
      if done % t.log_every == 0:
        log.flush(last_saved)
      if done % t.checkpoint_every == 0 or done == t.steps or stop:
        log.flush(last_saved)  # never checkpoint a state whose loss was not checked
        checkpoints.save(run.mngr, done, state)
        last_saved = done
      if t.eval_every and done % t.eval_every == 0 and done != t.steps:
        bits = validation_bits(config, run.model, state.params, run.dataset, mesh)
        log.write(done, {'validation_bits_per_byte': bits})
      if stop:
        logging.warning('Stopping after step %d (%s): saved step %d, exiting.', done, stop, done)
        break
  return state, last_saved


def _final_validation(run: _Run, params, writer: metrics.MetricWriter, workdir: str) -> float:
  """Validation bits per byte of the finished run: scored and written to the metrics once
  (a rerun of a run killed before it scored them scores them then)."""
  steps = run.config.train.steps
  bits = _recorded_validation_bits(workdir, steps)
  if bits is None:
    bits = validation_bits(run.config, run.model, params, run.dataset, run.mesh)
    writer.write(steps, {'validation_bits_per_byte': bits})
  logging.info('Validation bits per byte at step %d: %.4f', steps, bits)
  return bits


def _write_summary(summary: dict[str, Any], workdir: str, seconds: float) -> None:
  """Adds this invocation's wall-clock to the workdir's total and writes train_summary.json
  (atomically; an unreadable old one counts as no time)."""
  path = os.path.join(workdir, 'train_summary.json')
  previous = 0.0
  try:
    with open(path) as f:
      previous = float(json.load(f).get('train_seconds', 0.0))
  except (OSError, ValueError, AttributeError):
    pass
  summary['train_seconds'] = previous + seconds
  if jax.process_index() == 0:
    _write_atomically(path, json.dumps(summary, indent=2))
