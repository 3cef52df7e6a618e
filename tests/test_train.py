"""Pins perceiver_ar_vl/train.py: end-to-end training, exact resume, compiles, NaN guard.

Kills, damaged checkpoints and the resume after them: tests/test_resume.py.
"""

import itertools
import os
import signal
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import REPO, TINY_LAUNCH_ARGS, launch_command, launch_env, tiny_config

from perceiver_ar_vl import checkpoints, config_lib, latents, metrics, parallel, train
from perceiver_ar_vl import state as state_lib


def losses_by_step(workdir):
  return {
    r['step']: r['loss']
    for r in metrics.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
    if 'loss' in r
  }


def test_train_then_resume_after_sigterm_matches_uninterrupted_run(tmp_path, monkeypatch):
  assert jax.device_count() == 2  # data parallel over 2 simulated CPU devices
  config = tiny_config('uniform', steps=20)
  full = train.train(config, str(tmp_path / 'full'))
  assert full['final_step'] == 20
  buckets = {
    train.latents.bucket_for(train.latent_count(config, s), config.latents.buckets)
    for s in range(20)
  }
  assert full['buckets_used'] == sorted(buckets) and len(buckets) >= 2
  assert all(count == 1 for count in full['compiles'].values())  # one compile per bucket

  # Interrupt a second run with SIGTERM during step 10: it saves step 11 and exits.
  real_latent_count = train.latent_count

  def latent_count_then_sigterm(cfg, step):
    if step == 10:
      os.kill(os.getpid(), signal.SIGTERM)
    return real_latent_count(cfg, step)

  monkeypatch.setattr(train, 'latent_count', latent_count_then_sigterm)
  workdir = str(tmp_path / 'interrupted')
  first = train.train(config, workdir)
  assert first['final_step'] == 11
  monkeypatch.setattr(train, 'latent_count', real_latent_count)
  second = train.train(config, workdir)
  assert second['start_step'] == 11 and second['final_step'] == 20

  want, got = losses_by_step(str(tmp_path / 'full')), losses_by_step(workdir)
  assert sorted(got) == list(range(1, 21)) and sorted(want) == list(range(1, 21))
  np.testing.assert_allclose(
    [got[s] for s in range(1, 21)], [want[s] for s in range(1, 21)], rtol=1e-5, atol=1e-6
  )
  assert second['validation_bits'] == pytest.approx(full['validation_bits'], rel=1e-5)

  # A finished run returns at once.
  again = train.train(config, workdir)
  assert again['start_step'] == again['final_step'] == 20 and again['compiles'] == {}


def test_a_second_signal_stops_at_once():
  with train._StopSignal() as stop:
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.received == 'SIGINT' and stop.number == signal.SIGINT  # wait for the step
    with pytest.raises(KeyboardInterrupt, match=r'a second stop signal \(SIGTERM\)'):
      os.kill(os.getpid(), signal.SIGTERM)
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_loss_falls_on_the_copy_task(tmp_path):
  config = tiny_config('fixed', steps=60)
  config.train.learning_rate = 3e-2
  train.train(config, str(tmp_path))
  losses = losses_by_step(str(tmp_path))
  assert np.mean([losses[s] for s in range(51, 61)]) < 0.85 * np.mean(
    [losses[s] for s in range(1, 6)]
  )
  assert (tmp_path / 'checkpoints' / '60').is_dir()
  assert (tmp_path / 'tensorboard').is_dir() and any((tmp_path / 'tensorboard').iterdir())
  record = metrics.read_jsonl(str(tmp_path / 'metrics.jsonl'))[0]
  for key in (
    'loss',
    'bits_per_byte',
    'learning_rate',
    'grad_norm',
    'num_latents',
    'bucket',
    'steps_per_sec',
    'target_tokens_per_sec',
    'padding_waste',
  ):
    assert key in record


def test_gradient_accumulation_equals_the_full_batch_step():
  config = tiny_config('fixed')
  config.model.dropout_rate = 0.0
  mesh = parallel.make_mesh()
  model = config_lib.create_model(config)
  state = state_lib.create_train_state(config, model, mesh)
  _, schedule = state_lib.make_optimizer(config.train)
  batch = jnp.asarray(np.random.default_rng(0).integers(97, 113, (8, 33)), jnp.int32)
  outs = []
  for k in (1, 4):
    step = jax.jit(
      lambda s, b, k=k: train.train_step(
        s,
        b,
        jnp.int32(12),
        jax.random.PRNGKey(0),
        model=model,
        bucket=16,
        z_loss=1e-4,
        grad_accum_steps=k,
        schedule=schedule,
      )
    )
    outs.append(step(state, batch))
  (s1, m1), (s4, m4) = outs
  assert float(m1['loss']) == pytest.approx(float(m4['loss']), rel=1e-5)
  assert float(m1['target_tokens']) == float(m4['target_tokens']) == 8 * 12
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  def poisoned_optimizer(t):
    schedule = lambda step: jnp.where(step < 6, 1e-3, jnp.nan)
    return optax.adam(schedule), schedule

  monkeypatch.setattr(state_lib, 'make_optimizer', poisoned_optimizer)
  config = tiny_config('fixed', steps=20)
  config.train.checkpoint_every = 4
  with pytest.raises(train.NonFiniteLossError, match='last good checkpoint'):
    train.train(config, str(tmp_path))
  assert checkpoints.manager(str(tmp_path)).latest_step() == 4


def test_transformer_baseline_trains(tmp_path):
  config = tiny_config('fixed', steps=4, model_type='transformer')
  summary = train.train(config, str(tmp_path))
  assert summary['buckets_used'] == [32] and np.isfinite(summary['validation_bits'])


def test_launch_smoke_trains_then_resumes_at_once(tmp_path, trained_launch_run):
  # The shared run's command (conftest.trained_launch_run) in a fresh workdir: its programs
  # load from the session's compilation cache instead of compiling again.
  trained_launch_run.result()
  cmd = launch_command(
    f'--config={REPO}/configs/curriculum.py:smoke',
    f'--workdir={tmp_path}',
    '--config.train.steps=2',
    *TINY_LAUNCH_ARGS,
  )
  run = subprocess.run(cmd, capture_output=True, text=True, env=launch_env(), timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'step 2/2' in run.stderr and 'Compiling train_step for bucket 16' in run.stderr
  assert (tmp_path / 'checkpoints' / '2').is_dir()
  again = subprocess.run(cmd, capture_output=True, text=True, env=launch_env(), timeout=300)
  assert again.returncode == 0 and 'already finished at step 2' in again.stderr
  assert 'Compiling' not in again.stderr
  # Bad flags and config values through launch.py: tests/test_launch.py.


def test_device_batches_yield_the_host_batches_in_order_and_close_cleanly():
  mesh = parallel.make_mesh()
  host = [np.full((4, 33), i, np.int32) for i in range(5)]
  with train._DeviceBatches(iter(host), mesh) as batches:
    got = [np.asarray(b) for b in batches]
  assert [int(b[0, 0]) for b in got] == list(range(5)) and got[0].shape == (4, 33)

  def failing():
    yield host[0]
    raise OSError('disk gone')

  with train._DeviceBatches(failing(), mesh) as batches:
    next(batches)
    with pytest.raises(OSError, match='disk gone'):
      next(batches)
  endless = train._DeviceBatches(itertools.repeat(host[0]), mesh)  # never ends by itself
  next(endless)
  endless.close()
  assert not endless._thread.is_alive()


def test_prefetched_batches_train_as_unprefetched_ones(tmp_path, monkeypatch):
  config = tiny_config('uniform', steps=6)
  train.train(config, str(tmp_path / 'prefetched'))

  class Unprefetched:  # each batch put on the device in the loop, when the step asks for it
    def __init__(self, host_batches, mesh):
      self._host, self._mesh = host_batches, mesh

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      pass

    def __next__(self):
      return parallel.global_batch(next(self._host), self._mesh)

  monkeypatch.setattr(train, '_DeviceBatches', Unprefetched)
  train.train(config, str(tmp_path / 'inline'))
  want, got = losses_by_step(str(tmp_path / 'inline')), losses_by_step(str(tmp_path / 'prefetched'))
  assert sorted(got) == list(range(1, 7))
  assert [got[s] for s in range(1, 7)] == [want[s] for s in range(1, 7)]


def test_every_bucket_is_compiled_once_before_the_first_step(tmp_path, monkeypatch):
  config = tiny_config('curriculum', steps=12)
  seen = []
  real_call = train._CompiledSteps.__call__

  def recording_call(self, bucket):
    seen.append((bucket, set(self._compiled), dict(self.compiles)))
    return real_call(self, bucket)

  monkeypatch.setattr(train._CompiledSteps, '__call__', recording_call)
  summary = train.train(config, str(tmp_path))
  planned = train.buckets_ahead(config, 0)
  used = {latents.bucket_for(train.latent_count(config, s), (4, 8, 16, 32)) for s in range(12)}
  assert planned == sorted(used) and len(planned) >= 2
  assert summary['compiles'] == {b: 1 for b in planned}
  loop_calls = seen[len(planned) :]  # compile_ahead's calls come first
  assert [bucket for bucket, *_ in seen[: len(planned)]] == planned and len(loop_calls) == 12
  for _, compiled, compiles in loop_calls:
    assert compiled == set(planned) and compiles == summary['compiles']
  assert train.buckets_ahead(config, 11) == [
    train.latents.bucket_for(train.latent_count(config, 11), (4, 8, 16, 32))
  ]


def test_the_loop_reads_nothing_from_the_device_between_logs(tmp_path, monkeypatch):
  """Under a device-to-host transfer guard, only the metric flush (every log_every steps, one
  jax.device_get of all pending steps) and the checkpoint save may read the device."""
  config = tiny_config('uniform', steps=10)
  config.train.update(log_every=5, checkpoint_every=10)
  fetches = []

  def allowed(fn, record=False):
    def wrapped(*args, **kwargs):
      with jax.transfer_guard_device_to_host('allow'):
        if record:
          fetches.append(len(args[0]._pending))
        return fn(*args, **kwargs)

    return wrapped

  monkeypatch.setattr(train._MetricLog, 'flush', allowed(train._MetricLog.flush, record=True))
  monkeypatch.setattr(train.checkpoints, 'save', allowed(train.checkpoints.save))
  monkeypatch.setattr(train, '_final_validation', allowed(train._final_validation))
  with jax.transfer_guard_device_to_host('disallow'):
    summary = train.train(config, str(tmp_path))
  assert summary['final_step'] == 10
  assert fetches == [5, 5, 0]  # steps 1-5, 6-10, and the (empty) flush before the last save
