"""Pins perceiver_ar_vl/training/run.py: end-to-end training, exact resume, compiles, NaN
guard, prefetch and the host loop's device reads.

The pieces of the host loop alone: tests/test_host_loop.py; the train step:
tests/test_step.py; kills, damaged checkpoints and the resume after them: tests/test_resume.py.
"""

import os
import signal
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import REPO, TINY_LAUNCH_ARGS, launch_command, launch_env, tiny_config

from perceiver_ar_vl import latents, parallel, step_plan, training
from perceiver_ar_vl.runs import checkpoints, run_files, train_state
from perceiver_ar_vl.training import compiled_steps, progress, run


def losses_by_step(workdir):
  return {
    r['step']: r['loss']
    for r in run_files.read_jsonl(os.path.join(workdir, run_files.METRICS_FILE))
    if 'loss' in r
  }


def test_train_then_resume_after_sigterm_matches_uninterrupted_run(tmp_path):
  assert jax.device_count() == 2  # data parallel over 2 simulated CPU devices
  assert training.train is run.train
  config = tiny_config('uniform', steps=20)
  full = training.train(config, str(tmp_path / 'full'))
  assert full['final_step'] == 20
  buckets = {
    latents.bucket_for(latents.latent_count(config, s), config.latents.buckets) for s in range(20)
  }
  assert full['buckets_used'] == sorted(buckets) and len(buckets) >= 2
  assert all(count == 1 for count in full['compiles'].values())  # one compile per bucket

  # Interrupt a second run with SIGTERM once step 11 is dispatched: it saves step 11 and exits.
  done = []

  def sigterm_at_step_11(step):
    done.append(step)
    if step == 11:
      os.kill(os.getpid(), signal.SIGTERM)

  workdir = str(tmp_path / 'interrupted')
  first = training.train(config, workdir, after_step=sigterm_at_step_11)
  assert first['final_step'] == 11 and done == list(range(1, 12))
  second = training.train(config, workdir)
  assert second['start_step'] == 11 and second['final_step'] == 20

  want, got = losses_by_step(str(tmp_path / 'full')), losses_by_step(workdir)
  assert sorted(got) == list(range(1, 21)) and sorted(want) == list(range(1, 21))
  np.testing.assert_allclose(
    [got[s] for s in range(1, 21)], [want[s] for s in range(1, 21)], rtol=1e-5, atol=1e-6
  )
  assert second['validation_bits'] == pytest.approx(full['validation_bits'], rel=1e-5)

  # A finished run returns at once.
  again = training.train(config, workdir)
  assert again['start_step'] == again['final_step'] == 20 and again['compiles'] == {}


def test_loss_falls_on_the_copy_task(tmp_path):
  config = tiny_config('fixed', steps=60)
  config.train.learning_rate = 3e-2
  training.train(config, str(tmp_path))
  losses = losses_by_step(str(tmp_path))
  assert np.mean([losses[s] for s in range(51, 61)]) < 0.85 * np.mean(
    [losses[s] for s in range(1, 6)]
  )
  assert (tmp_path / 'checkpoints' / '60').is_dir()
  assert (tmp_path / 'tensorboard').is_dir() and any((tmp_path / 'tensorboard').iterdir())
  record = run_files.read_jsonl(str(tmp_path / run_files.METRICS_FILE))[0]
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


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  def poisoned_optimizer(t):
    schedule = lambda step: jnp.where(step < 6, 1e-3, jnp.nan)
    return optax.adam(schedule), schedule

  monkeypatch.setattr(train_state, 'make_optimizer', poisoned_optimizer)
  config = tiny_config('fixed', steps=20)
  config.train.checkpoint_every = 4
  with pytest.raises(progress.NonFiniteLossError, match='last good checkpoint'):
    training.train(config, str(tmp_path))
  assert checkpoints.manager(str(tmp_path)).latest_step() == 4


def test_transformer_baseline_trains(tmp_path):
  config = tiny_config('fixed', steps=4, model_type='transformer')
  summary = training.train(config, str(tmp_path))
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


def test_prefetched_batches_train_as_unprefetched_ones(tmp_path, monkeypatch):
  config = tiny_config('uniform', steps=6)
  training.train(config, str(tmp_path / 'prefetched'))

  class Unprefetched:  # each batch put on the device in the loop, when the step asks for it
    def __init__(self, host_batches, mesh):
      self._host, self._mesh = host_batches, mesh

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      pass

    def __next__(self):
      return parallel.global_batch(next(self._host), self._mesh)

  monkeypatch.setattr(run, 'DeviceBatches', Unprefetched)  # run.py imports it by name
  training.train(config, str(tmp_path / 'inline'))
  want, got = losses_by_step(str(tmp_path / 'inline')), losses_by_step(str(tmp_path / 'prefetched'))
  assert sorted(got) == list(range(1, 7))
  assert [got[s] for s in range(1, 7)] == [want[s] for s in range(1, 7)]


def test_every_bucket_is_compiled_once_before_the_first_step(tmp_path, monkeypatch):
  config = tiny_config('curriculum', steps=12)
  seen = []  # (bucket, what the call returned, the trace counts at the call)
  lowered = []  # the buckets compile_ahead lowered, in order
  real_call, real_lower = compiled_steps.CompiledSteps.__call__, compiled_steps.CompiledSteps.lower

  def recording_call(self, bucket, window=0):
    fn = real_call(self, bucket, window)
    seen.append((bucket, fn, dict(self.compiles)))
    return fn

  def recording_lower(self, bucket, window=0, state=None):
    lowered.append(bucket)
    return real_lower(self, bucket, window, state)

  assert run.CompiledSteps is compiled_steps.CompiledSteps
  monkeypatch.setattr(compiled_steps.CompiledSteps, '__call__', recording_call)
  monkeypatch.setattr(compiled_steps.CompiledSteps, 'lower', recording_lower)
  summary = training.train(config, str(tmp_path))
  plan = step_plan.plan(config)
  planned = plan.buckets_ahead(0)
  used = {latents.bucket_for(latents.latent_count(config, s), (4, 8, 16, 32)) for s in range(12)}
  assert planned == sorted(used) and len(planned) >= 2
  assert summary['compiles'] == {b: 1 for b in planned}
  assert lowered == planned and len(seen) == 12  # compiled ahead, then 12 steps
  for bucket, fn, compiles in seen:
    # Every step runs the program compiled ahead of time, and nothing is traced in the loop.
    assert bucket in planned and isinstance(fn, jax.stages.Compiled)
    assert compiles == summary['compiles']
  assert plan.buckets_ahead(11) == [
    latents.bucket_for(latents.latent_count(config, 11), (4, 8, 16, 32))
  ]
  assert [plan.at(s) for s in range(12)] == [
    (latents.latent_count(config, s), plan.buckets[s], 32) for s in range(12)
  ]


def test_the_loop_reads_nothing_from_the_device_between_logs(tmp_path, monkeypatch):
  """Under a device-to-host transfer guard, only the metric flush (every log_every steps, one
  jax.device_get of all pending steps) and the checkpoint save may read the device."""
  config = tiny_config('uniform', steps=10)
  config.train.update(log_every=5, checkpoint_every=10)
  pending, fetches = [0], []  # steps added since the last flush; their count at each flush
  real_add = progress.MetricLog.add

  def counting_add(self, *args):
    pending[0] += 1
    return real_add(self, *args)

  def allowed(fn, record=False):
    def wrapped(*args, **kwargs):
      with jax.transfer_guard_device_to_host('allow'):
        if record:
          fetches.append(pending[0])
          pending[0] = 0
        return fn(*args, **kwargs)

    return wrapped

  monkeypatch.setattr(progress.MetricLog, 'add', counting_add)
  monkeypatch.setattr(progress.MetricLog, 'flush', allowed(progress.MetricLog.flush, True))
  monkeypatch.setattr(checkpoints, 'save', allowed(checkpoints.save))
  # The final validation scores on the device (run.validation_metrics); the rest is host work.
  monkeypatch.setattr(run, 'validation_metrics', allowed(run.validation_metrics))
  with jax.transfer_guard_device_to_host('disallow'):
    summary = training.train(config, str(tmp_path))
  assert summary['final_step'] == 10
  assert fetches == [5, 5, 0]  # steps 1-5, 6-10, and the (empty) flush before the last save
