"""Pins perceiver_ar_vl/windows.py, the window curriculum: W(step) from its formula, one-line
errors, one compile per window, that a short window trains on the row's last W bytes, and
that a resumed run equals an uninterrupted one."""

import math
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

from perceiver_ar_vl import config_lib, errors, parallel, step_plan, training, windows
from perceiver_ar_vl.runs import run_files, train_state
from perceiver_ar_vl.training import step as step_lib


def window_config(schedule='stepwise', steps=12, **window):
  c = tiny_config('fixed', steps=steps)
  c.latents.update(min=8, max=8, buckets=(8,))
  c.window.update(schedule=schedule, min=8, **window)
  return c


def test_no_curriculum_is_the_full_window_every_step():
  c = tiny_config('fixed')
  assert c.window.schedule == 'none'
  assert {windows.window_at(c, s) for s in range(c.train.steps)} == {32}
  assert step_plan.plan(c).windows_ahead(0) == [32]


def test_linear_schedule_follows_its_formula_rounded_up_to_a_bucket():
  c = window_config('linear', steps=40, warmup_fraction=0.5)
  assert windows.window_buckets(c) == (8, 16, 32)
  for s in range(40):
    size = round(8 + min(1.0, s / 20) * (32 - 8))  # min + progress * (M - min)
    want = next(b for b in (8, 16, 32) if b >= size)
    assert windows.window_at(c, s) == want, s


def test_stepwise_spends_equal_time_on_each_bucket():
  c = window_config('stepwise', steps=30, warmup_fraction=1.0, buckets=(8, 16, 24, 32))
  got = [windows.window_at(c, s) for s in range(30)]
  assert got == sorted(got) and got[0] == 8 and got[-1] == 32
  counts = [got.count(b) for b in (8, 16, 24, 32)]
  assert max(counts) - min(counts) <= 1, counts
  assert step_plan.plan(c).windows_ahead(17) == [b for b in (8, 16, 24, 32) if b >= got[17]]
  assert list(step_plan.plan(c).windows) == got


def test_a_fixed_window_trains_every_step_at_window_min_on_rows_that_short():
  c = window_config('fixed', steps=12)
  c.window.min = 16
  assert {windows.window_at(c, s) for s in range(12)} == {16}
  assert step_plan.plan(c).windows_ahead(5) == [16]
  assert windows.row_length(c) == 17  # rows hold what the steps read, not M + 1
  assert windows.row_length(window_config('stepwise')) == 33


@pytest.mark.parametrize(
  'changes,match',
  [
    (dict(min=4), 'window.min=4 must hold the latents'),
    (dict(min=64), 'window.min=64'),
    (dict(buckets=(8, 16)), 'end at model.max_context=32'),
    (dict(buckets=(16, 8, 32)), 'must increase'),
    (dict(warmup_fraction=0.0), 'window.warmup_fraction'),
    (dict(schedule='cosine'), "Unknown window.schedule='cosine'"),
  ],
)
def test_bad_window_settings_are_one_line_errors(changes, match):
  c = window_config()
  c.window.update(**changes)
  with pytest.raises(errors.UserError, match=match) as e:
    config_lib.validate(c)
  assert '\n' not in str(e.value)


def test_a_short_window_trains_on_the_rows_last_bytes():
  """train_step at window W on a row equals train_step without a window on the row's last
  W + 1 bytes (the same loss and gradient norm), and differs from the whole row's."""
  c = window_config()
  model = config_lib.create_model(c)
  _, schedule = train_state.make_optimizer(c.train)
  mesh = parallel.make_mesh()
  rng = jax.random.PRNGKey(0)
  rows = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 33)), jnp.int32)
  n = jnp.asarray(8, jnp.int32)

  state = train_state.create_train_state(c, model, mesh)

  def run(window, batch):
    step = jax.jit(step_lib.bucket_step(c, model, 8, schedule, window))
    _, metrics = step(state, batch, n, rng)
    return np.array([float(metrics['loss']), float(metrics['grad_norm'])])

  windowed = run(16, rows)
  np.testing.assert_allclose(windowed, run(0, rows[:, -17:]), rtol=1e-6)
  assert np.abs(windowed - run(0, rows)).max() > 1e-4  # the whole row is another step


def losses(workdir):
  rows = run_files.read_jsonl(os.path.join(workdir, run_files.METRICS_FILE))
  return {r['step']: r['loss'] for r in rows if 'loss' in r}


def test_a_run_compiles_once_per_window_and_resumes_exactly(tmp_path):
  c = window_config('stepwise', steps=8, warmup_fraction=1.0, buckets=(8, 32))
  full = training.train(c, str(tmp_path / 'full'))
  assert full['windows_used'] == [8, 32]
  assert full['compiles'] == {8: 2}  # latent bucket 8, traced once at each window

  def sigterm_at_step_3(step):
    if step == 3:
      os.kill(os.getpid(), signal.SIGTERM)

  workdir = str(tmp_path / 'resumed')
  assert training.train(c, workdir, after_step=sigterm_at_step_3)['final_step'] == 3
  second = training.train(c, workdir)  # steps 3..7: window 8 through step 3, then 32
  assert second['windows_used'] == step_plan.plan(c).windows_ahead(3) == [8, 32]
  want, got = losses(str(tmp_path / 'full')), losses(workdir)
  assert sorted(got) == list(range(1, 9))
  np.testing.assert_allclose(
    [got[s] for s in range(1, 9)], [want[s] for s in range(1, 9)], rtol=1e-5
  )
  assert math.isfinite(full['validation_bits'])
