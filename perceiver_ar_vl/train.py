"""The training loop: optax AdamW, a pure jitted train_step per latent bucket, data parallel
over a Mesh, orbax checkpoints with exact resume, metrics, NaN guard, SIGTERM/SIGINT saves.

A step with N latents runs the train_step compiled for bucket B = bucket_for(N): N is a traced
int32 argument, B a static shape, so a run compiles once per bucket it uses.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from perceiver_ar_vl import (
  checkpoints,
  config_lib,
  data,
  errors,
  evaluate,
  latents,
  losses,
  metrics,
  models,
  parallel,
)
from perceiver_ar_vl import (
  state as state_lib,
)


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/Inf loss; the last good checkpoint is kept."""


def train_step(
  state: state_lib.TrainState,
  window_BxW: jax.Array,
  num_latents: jax.Array,
  base_rng: jax.Array,
  *,
  model,
  bucket: int,
  z_loss: float,
  grad_accum_steps: int,
  schedule,
) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
  """One optimizer step on a batch of windows [batch, M+1] with N active latents.

  Dropout randomness is fold_in(base_rng, step), so a resumed run draws the same masks.
  With grad_accum_steps = k the batch is split into k microbatches whose gradients are averaged
  (each has the same number of active targets, so this equals the full-batch gradient).
  """
  rng = jax.random.fold_in(base_rng, state.step)

  def loss_fn(params, micro_BxW, micro_rng):
    logits = models.forward_logits(
      model,
      params,
      micro_BxW[:, :-1],
      num_latents,
      bucket,
      deterministic=False,
      rngs={'dropout': micro_rng},
    )
    out = losses.cross_entropy_loss(logits, micro_BxW, num_latents, z_loss=z_loss)
    return out.objective, out

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if grad_accum_steps == 1:
    (_, out), grads = grad_fn(state.params, window_BxW, rng)
  else:
    batch, width = window_BxW.shape
    micro_KxBxW = window_BxW.reshape(batch // grad_accum_steps, grad_accum_steps, width)
    micro_KxBxW = micro_KxBxW.swapaxes(0, 1)

    def accumulate(carry, xs):
      micro_BxW, i = xs
      (_, out), grads = grad_fn(state.params, micro_BxW, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, carry, (grads, out)), None

    zeros = jax.tree.map(
      jnp.zeros_like,
      (state.params, jax.eval_shape(lambda: grad_fn(state.params, micro_KxBxW[0], rng)[0][1])),
    )
    (grads, out), _ = jax.lax.scan(accumulate, zeros, (micro_KxBxW, jnp.arange(grad_accum_steps)))
    grads = jax.tree.map(lambda g: g / grad_accum_steps, grads)
    out = jax.tree.map(lambda x: x / grad_accum_steps, out)
    out = out._replace(num_targets=out.num_targets * grad_accum_steps)
  new_state = state.apply_gradients(grads=grads)
  step_metrics = {
    'loss': out.objective,
    'nats': out.nats,
    'bits_per_byte': out.bits,
    'grad_norm': optax.tree.norm(grads),
    'learning_rate': schedule(state.step),
    'target_tokens': out.num_targets,
  }
  return new_state, step_metrics


class _StopSignal:
  """Records SIGTERM/SIGINT so the loop can checkpoint and exit cleanly."""

  def __init__(self):
    self.received = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def latent_count(config: ml_collections.ConfigDict, step: int) -> int:
  """N at `step` from the configured strategy."""
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


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))


def _check_finite(records: list[dict], workdir: str, last_saved: int | None) -> None:
  for r in records:
    if not np.isfinite(r['loss']):
      raise NonFiniteLossError(
        f'Loss is {r["loss"]} at step {r["step"]}; training stopped. The last good checkpoint '
        f'(step {last_saved}) is kept in {checkpoints.checkpoint_dir(workdir)}. Lower '
        f'train.learning_rate, raise train.warmup_steps or use model.dtype=float32.'
      )


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


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns a summary of this invocation.

  The summary holds 'start_step', 'final_step', 'compiles' ({bucket: traces}), 'buckets_used',
  'train_seconds' (wall-clock of every invocation on this workdir, summed) and, when it ran,
  'validation_bits'. It is also written to `train_summary.json`. Re-running a finished run
  returns at once.
  """
  started = time.perf_counter()
  config_lib.validate(config)
  t = config.train
  mesh = parallel.make_mesh()
  parallel.check_batch_size(t.batch_size, mesh)
  if (t.batch_size // jax.process_count()) % t.grad_accum_steps:
    raise errors.UserError(
      f'train.batch_size={t.batch_size} over {jax.process_count()} processes leaves '
      f'{t.batch_size // jax.process_count()} rows per process, not divisible by '
      f'train.grad_accum_steps={t.grad_accum_steps}; change either.'
    )
  model = config_lib.create_model(config)
  dataset = data.make_dataset(config.data, window=config.model.max_context + 1, seed=config.seed)

  mngr = checkpoints.manager(workdir, max_to_keep=t.keep_checkpoints)
  start_step = mngr.latest_step() or 0
  if start_step:
    state = checkpoints.restore(mngr, state_lib.abstract_train_state(config, model, mesh))
    logging.info('Resumed from step %d in %s.', start_step, workdir)
  else:
    state = state_lib.create_train_state(config, model, mesh)
  _write_config(config, workdir)  # after a restore: a mismatched config leaves the old one
  summary = {'start_step': start_step, 'final_step': start_step, 'compiles': {}, 'buckets_used': []}
  if start_step >= t.steps:
    logging.info('Run in %s already finished at step %d of %d.', workdir, start_step, t.steps)
    mngr.close()
    _write_summary(summary, workdir, 0.0)
    return summary

  _, schedule = state_lib.make_optimizer(t)
  base_rng = jax.random.PRNGKey(config.seed + 1)
  compiles: dict[int, int] = {}
  step_fns: dict[int, Any] = {}

  def step_fn_for(bucket: int):
    if bucket not in step_fns:

      def counted(*args):
        compiles[bucket] = compiles.get(bucket, 0) + 1  # runs at trace time only
        logging.info('Compiling train_step for bucket %d.', bucket)
        return functools.partial(
          train_step,
          model=model,
          bucket=bucket,
          z_loss=t.z_loss,
          grad_accum_steps=t.grad_accum_steps,
          schedule=schedule,
        )(*args)

      rep, data_sharding = parallel.replicated(mesh), parallel.batch_sharded(mesh)
      step_fns[bucket] = jax.jit(
        counted,
        donate_argnums=0,
        in_shardings=(rep, data_sharding, rep, rep),
        out_shardings=(rep, rep),
      )
    return step_fns[bucket]

  writer = metrics.MetricWriter(
    workdir, use_wandb=t.wandb, wandb_project=t.wandb_project, config=config.to_dict()
  )
  batches = dataset.train_batches(
    start_step, t.steps, t.batch_size, config.seed, jax.process_index(), jax.process_count()
  )
  pending: list[tuple[int, int, int, dict]] = []
  last_saved = start_step or None
  window_start, window_steps, window_tokens = time.perf_counter(), 0, 0.0

  def flush() -> None:
    nonlocal window_start, window_steps, window_tokens
    records = []
    for step, n, bucket, device_metrics in pending:
      r = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
      waste = latents.padding_waste(n, config.latents.buckets)  # bucket slots per active latent
      records.append(
        {'step': step, 'num_latents': n, 'bucket': bucket, 'padding_waste': waste, **r}
      )
    pending.clear()
    _check_finite(records, workdir, last_saved)
    elapsed = max(time.perf_counter() - window_start, 1e-9)
    steps_per_sec, tokens_per_sec = window_steps / elapsed, window_tokens / elapsed
    for r in records:
      writer.write(
        r['step'],
        {
          **{k: v for k, v in r.items() if k != 'step'},
          'steps_per_sec': steps_per_sec,
          'target_tokens_per_sec': tokens_per_sec,
        },
      )
    if records:
      r = records[-1]
      eta = (t.steps - r['step']) / max(steps_per_sec, 1e-9)
      logging.info(
        'step %d/%d  loss %.4f  bpb %.3f  N %d  B %d  %.2f steps/s  %.0f tok/s  ETA %s',
        r['step'],
        t.steps,
        r['loss'],
        r['bits_per_byte'],
        r['num_latents'],
        r['bucket'],
        steps_per_sec,
        tokens_per_sec,
        metrics.format_duration(eta),
      )
    window_start, window_steps, window_tokens = time.perf_counter(), 0, 0.0

  def save(step_done: int) -> None:
    nonlocal last_saved
    flush()  # never checkpoint a state whose loss was not checked
    checkpoints.save(mngr, step_done, state)
    last_saved = step_done

  try:
    with _StopSignal() as stop:
      for step in range(start_step, t.steps):
        n = latent_count(config, step)
        bucket = latents.bucket_for(n, config.latents.buckets)
        batch = parallel.global_batch(next(batches), mesh)
        state, device_metrics = step_fn_for(bucket)(state, batch, jnp.int32(n), base_rng)
        pending.append((step + 1, n, bucket, device_metrics))
        window_steps += 1
        window_tokens += t.batch_size * n
        done = step + 1
        if done % t.log_every == 0:
          flush()
        if done % t.checkpoint_every == 0 or done == t.steps or stop.received:
          save(done)
        if t.eval_every and done % t.eval_every == 0 and done != t.steps:
          writer.write(
            done,
            {
              'validation_bits_per_byte': validation_bits(
                config, model, state.params, dataset, mesh
              )
            },
          )
        if stop.received:
          logging.warning('Received %s: saved step %d, exiting.', stop.received, done)
          break
    summary['final_step'] = last_saved or start_step
    if summary['final_step'] >= t.steps:
      bits = validation_bits(config, model, state.params, dataset, mesh)
      writer.write(t.steps, {'validation_bits_per_byte': bits})
      logging.info('Validation bits per byte at step %d: %.4f', t.steps, bits)
      summary['validation_bits'] = bits
  finally:
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
  summary['compiles'] = dict(compiles)
  summary['buckets_used'] = sorted(compiles)
  _write_summary(summary, workdir, time.perf_counter() - started)
  return summary


def _write_summary(summary: dict[str, Any], workdir: str, seconds: float) -> None:
  """Adds this invocation's wall-clock to the workdir's total and writes train_summary.json."""
  path = os.path.join(workdir, 'train_summary.json')
  previous = 0.0
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f).get('train_seconds', 0.0)
  summary['train_seconds'] = previous + seconds
  if jax.process_index() == 0:
    with open(path, 'w') as f:
      json.dump(summary, f, indent=2)
