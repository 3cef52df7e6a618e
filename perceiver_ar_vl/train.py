"""The training loop: optax AdamW, a pure jitted train_step per latent bucket, data parallel
over a Mesh, orbax checkpoints with exact resume, metrics, NaN guard, SIGTERM/SIGINT saves.

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
import functools
import json
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh

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
  """Records SIGTERM/SIGINT so the loop can checkpoint and exit cleanly; a second signal
  stops at once (KeyboardInterrupt), for a Ctrl-C that should not wait for the next step."""

  def __init__(self):
    self.received: str | None = None  # the signal's name
    self.number = 0  # its number (0: none), what processes exchange
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
    if self.received:
      raise KeyboardInterrupt(f'a second stop signal ({signal.Signals(signum).name})')
    self.received = signal.Signals(signum).name
    self.number = int(signum)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class _StopVote:
  """Decides, identically on every process, after which step a signalled run stops.

  A signal reaches one process (a preempted host, Ctrl-C in one terminal). Stopping on its own,
  that process would enter the checkpoint save (a collective) while the others run the next
  step's all-reduce, and the job would hang. So with several processes every step adds an
  all-gather of each process's signal over the mesh: dispatched asynchronously and read one step
  later, it gives every process the same answer after the same step, and the host never waits
  for the step it just dispatched (the stop comes one step after the signal). A single process
  needs no vote: it stops after the step during which the signal came.
  """

  def __init__(self, stop: _StopSignal, mesh: Mesh):
    self._stop = stop
    self._mesh = mesh
    self._process_of = [device.process_index for device in mesh.devices.flat]
    self._gather = jax.jit(lambda codes: codes, out_shardings=parallel.replicated(mesh))
    self._ballot: jax.Array | None = None  # the all-gather dispatched after the previous step

  def after_step(self) -> str | None:
    """None to go on; otherwise why to stop, e.g. 'SIGTERM on process 1'."""
    if jax.process_count() == 1:
      return self._stop.received
    previous, self._ballot = self._ballot, self._dispatch()
    if previous is None:
      return None
    codes = np.asarray(previous.addressable_data(0))
    voters = sorted({(self._process_of[i], int(c)) for i, c in enumerate(codes) if c})
    return ', '.join(f'{signal.Signals(c).name} on process {p}' for p, c in voters) or None

  def _dispatch(self) -> jax.Array:
    """Starts the all-gather of every device's copy of its process's signal number."""
    local = np.full((jax.local_device_count(),), self._stop.number, np.int32)
    codes = jax.make_array_from_process_local_data(parallel.batch_sharded(self._mesh), local)
    return self._gather(codes)


class _CompiledSteps:
  """train_step jitted once per latent bucket; `compiles` counts the traces of each bucket.

  `compile_ahead` compiles the buckets a run will use before its first step (ahead-of-time
  `.lower().compile()`), so the run never pauses mid-way to compile; a bucket not compiled
  ahead is still compiled on first use, through jit.
  """

  def __init__(self, config: ml_collections.ConfigDict, model, mesh: Mesh, schedule):
    self._config, self._model, self._mesh, self._schedule = config, model, mesh, schedule
    self._fns: dict[int, Callable] = {}
    self._compiled: dict[int, Callable] = {}
    self.compiles: dict[int, int] = {}

  def __call__(self, bucket: int) -> Callable:
    if bucket in self._compiled:
      return self._compiled[bucket]
    if bucket not in self._fns:
      t = self._config.train
      step = functools.partial(
        train_step,
        model=self._model,
        bucket=bucket,
        z_loss=t.z_loss,
        grad_accum_steps=t.grad_accum_steps,
        schedule=self._schedule,
      )

      def counted(state, *args):
        self.compiles[bucket] = self.compiles.get(bucket, 0) + 1  # runs at trace time only
        logging.info('Compiling train_step for bucket %d.', bucket)
        new_state, step_metrics = step(state, *args)
        # The new state is placed like the one that came in (by create_train_state or
        # restore): replicated, or with train.fsdp split over the data axis, where XLA
        # all-gathers the parameters for the step and reduce-scatters their gradients.
        placed = parallel.state_shardings(new_state, self._mesh, t.fsdp)
        return jax.lax.with_sharding_constraint(new_state, placed), step_metrics

      rep, rows = parallel.replicated(self._mesh), parallel.batch_sharded(self._mesh)
      # The state's shardings (None): those of the state passed in, which it keeps.
      self._fns[bucket] = jax.jit(
        counted, donate_argnums=0, in_shardings=(None, rows, rep, rep), out_shardings=(None, rep)
      )
    return self._fns[bucket]

  def compile_ahead(
    self, buckets: list[int], state: state_lib.TrainState, base_rng: jax.Array
  ) -> None:
    """Compiles train_step for each of `buckets` now (one trace each), for `state`'s shapes."""
    c = self._config
    rows = (c.train.batch_size, c.model.max_context + 1)
    batch = jax.ShapeDtypeStruct(rows, jnp.int32, sharding=parallel.batch_sharded(self._mesh))
    n = jax.ShapeDtypeStruct((), jnp.int32, sharding=parallel.replicated(self._mesh))
    for bucket in buckets:
      if bucket not in self._compiled:
        self._compiled[bucket] = self(bucket).lower(state, batch, n, base_rng).compile()


class _DeviceBatches:
  """The training batches, put on the device by a background thread up to `depth` steps
  before the step that takes them, in order.

  The step then never waits for the host to build or transfer its batch. The thread ends when
  the batches do, on `close` (also on leaving a `with` block, e.g. at a stop or an exception),
  and an error it meets is raised by `__next__` in the training loop.
  """

  _END = object()

  def __init__(self, host_batches: Iterator[np.ndarray], mesh: Mesh, depth: int = 2):
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._closed = threading.Event()
    self._thread = threading.Thread(
      target=self._fill, args=(host_batches, mesh), name='device_batches', daemon=True
    )
    self._thread.start()

  def _fill(self, host_batches: Iterator[np.ndarray], mesh: Mesh) -> None:
    try:
      for rows in host_batches:
        if not self._put(parallel.global_batch(rows, mesh)):
          return
      self._put(self._END)
    except BaseException as e:  # raised again by __next__, in the training loop
      self._put(e)

  def _put(self, item: Any) -> bool:
    """Queues `item` once there is room; False if closed meanwhile."""
    while not self._closed.is_set():
      try:
        self._queue.put(item, timeout=0.05)
        return True
      except queue.Full:
        pass
    return False

  def __iter__(self) -> _DeviceBatches:
    return self

  def __next__(self) -> jax.Array:
    item = self._queue.get()
    if item is self._END:
      raise StopIteration
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self) -> None:
    self._closed.set()
    self._thread.join(timeout=60)

  def __enter__(self) -> _DeviceBatches:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class _DeviceInts:
  """Replicated int32 device scalars, one transfer per distinct value (the latent counts)."""

  def __init__(self, mesh: Mesh):
    self._sharding = parallel.replicated(mesh)
    self._arrays: dict[int, jax.Array] = {}

  def __call__(self, value: int) -> jax.Array:
    if value not in self._arrays:
      self._arrays[value] = jax.device_put(np.int32(value), self._sharding)
    return self._arrays[value]


class _MetricLog:
  """Step metrics stay on device until `flush` (every log_every steps and before each save),
  which checks them for NaN, writes them and logs the last with the window's throughput."""

  def __init__(self, writer: metrics.MetricWriter, config: ml_collections.ConfigDict, workdir: str):
    self._writer, self._config, self._workdir = writer, config, workdir
    self._pending: list[tuple[int, int, int, dict]] = []
    self._start, self._steps, self._tokens = time.perf_counter(), 0, 0.0

  def add(self, step: int, n: int, bucket: int, device_metrics: dict) -> None:
    self._pending.append((step, n, bucket, device_metrics))
    self._steps += 1
    self._tokens += self._config.train.batch_size * n

  def flush(self, last_saved: int) -> None:
    records = []
    fetched = jax.device_get([device_metrics for *_, device_metrics in self._pending])
    for (step, n, bucket, _), host_metrics in zip(self._pending, fetched, strict=True):
      r = {k: float(v) for k, v in host_metrics.items()}
      waste = latents.padding_waste(n, self._config.latents.buckets)  # slots per active latent
      records.append(
        {'step': step, 'num_latents': n, 'bucket': bucket, 'padding_waste': waste, **r}
      )
    self._pending.clear()
    _check_finite(records, self._workdir, last_saved)
    elapsed = max(time.perf_counter() - self._start, 1e-9)
    steps_per_sec, tokens_per_sec = self._steps / elapsed, self._tokens / elapsed
    for r in records:
      self._writer.write(
        r['step'],
        {
          **{k: v for k, v in r.items() if k != 'step'},
          'steps_per_sec': steps_per_sec,
          'target_tokens_per_sec': tokens_per_sec,
        },
      )
    if records:
      r, total = records[-1], self._config.train.steps
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
    self._start, self._steps, self._tokens = time.perf_counter(), 0, 0.0

  def write(self, step: int, scalars: dict[str, float]) -> None:
    """Writes `scalars` (e.g. validation bits) at `step` at once."""
    self._writer.write(step, scalars)


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


def _check_finite(records: list[dict], workdir: str, last_saved: int) -> None:
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
