"""Pins perceiver_ar_vl/training/step.py: the pure train step with gradient accumulation,
short-context training (random truncation) and left-padded rows (the aligned copy task)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

from perceiver_ar_vl import config_lib, data, parallel
from perceiver_ar_vl.runs import train_state
from perceiver_ar_vl.training import step as step_lib


def test_gradient_accumulation_equals_the_full_batch_step():
  config = tiny_config('fixed')
  config.model.dropout_rate = 0.0
  mesh = parallel.make_mesh()
  model = config_lib.create_model(config)
  state = train_state.create_train_state(config, model, mesh)
  _, schedule = train_state.make_optimizer(config.train)
  batch = jnp.asarray(np.random.default_rng(0).integers(97, 113, (8, 33)), jnp.int32)
  outs = []
  for k in (1, 4):
    step = jax.jit(
      lambda s, b, k=k: step_lib.train_step(
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


def test_truncation_mask_keeps_a_random_suffix_of_a_fraction_of_windows():
  window = jnp.zeros((4000, 33), jnp.int32)
  mask = np.asarray(step_lib.truncation_mask(window, 0.25, jax.random.PRNGKey(0)))
  assert mask.shape == (4000, 32)
  keep = mask.sum(1)
  assert (mask[:, -1]).all() and (keep >= 1).all()
  # Every row is a suffix: False then True.
  np.testing.assert_array_equal(mask, np.arange(32)[None] >= 32 - keep[:, None])
  truncated = keep < 32
  assert abs(truncated.mean() - 0.25 * 31 / 32) < 0.03  # L = M counts as not truncated
  assert set(np.unique(keep[truncated])) == set(range(1, 32))
  np.testing.assert_array_equal(
    mask, np.asarray(step_lib.truncation_mask(window, 0.25, jax.random.PRNGKey(0)))
  )
  assert np.asarray(step_lib.truncation_mask(window[:8], 0.0, jax.random.PRNGKey(1))).all()


def test_random_truncation_scores_only_the_kept_suffix():
  """The train step's loss ignores the bytes before each window's kept suffix and counts only
  the latents inside it (mask rebuilt from the step's documented rng)."""
  config = tiny_config('fixed')
  config.train.random_truncation = 0.9
  model = config_lib.create_model(config)
  mesh = parallel.make_mesh()
  state = train_state.create_train_state(config, model, mesh)
  _, schedule = train_state.make_optimizer(config.train)
  step = jax.jit(step_lib.bucket_step(config, model, 16, schedule))
  window = jax.random.randint(jax.random.PRNGKey(5), (4, 33), 0, 256)
  base_rng = jax.random.PRNGKey(6)
  _, out = step(state, window, jnp.int32(16), base_rng)
  # The documented draw: fold_in(fold_in(base_rng, step), the truncation stream's tag).
  rng = jax.random.fold_in(jax.random.fold_in(base_rng, 0), step_lib._TRUNCATION_STREAM)
  mask = step_lib.truncation_mask(window, 0.9, rng)
  assert float(out['target_tokens']) == float(mask[:, -16:].sum()) < 4 * 16
  noise = jax.random.randint(jax.random.PRNGKey(7), window.shape, 0, 256)
  padded = jnp.where(jnp.pad(mask, ((0, 0), (0, 1)), constant_values=True), window, noise)
  assert not np.array_equal(padded, window)
  _, out_padded = step(state, padded, jnp.int32(16), base_rng)
  np.testing.assert_allclose(out_padded['loss'], out['loss'], rtol=1e-5)


def test_left_padded_rows_are_neither_attended_nor_scored():
  """The aligned copy task's rows (PAD before each cropped example): the step masks the
  padding and scores only latents on real bytes, as a numpy cross-entropy of the model's
  logits under that mask says; the streamed task compiles the plain step."""
  config = tiny_config('fixed')
  config.data.copy_min_crop = 4
  model = config_lib.create_model(config)
  state = train_state.create_train_state(config, model, parallel.make_mesh())
  noise = lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(1), p.shape)
  state = state.replace(params=jax.tree.map(noise, state.params))  # the head starts at zero
  _, schedule = train_state.make_optimizer(config.train)
  step = jax.jit(step_lib.bucket_step(config, model, 16, schedule))
  rows = data.make_dataset(config.data, 33).train_batch(0, 4, seed=0)
  assert (rows < 0).any(1).all()  # every row has padding (crops <= 16 of 33)
  _, out = step(state, jnp.asarray(rows), jnp.int32(16), jax.random.PRNGKey(0))

  valid = rows[:, :-1] >= 0
  forward = jax.jit(model.forward, static_argnums=(2, 3))  # eager flax runs op by op
  logits = forward(state.params, jnp.asarray(np.maximum(rows[:, :-1], 0)), 16, 16, input_mask=valid)
  logits = np.asarray(logits, np.float64)
  targets = rows[:, -16:]
  log_z = np.log(np.exp(logits).sum(-1))
  nll = log_z - np.take_along_axis(logits, np.maximum(targets, 0)[..., None], -1)[..., 0]
  weights = valid[:, -16:]
  assert float(out['target_tokens']) == weights.sum() < 4 * 16
  want = (nll * weights).sum() / weights.sum()
  assert float(out['nats']) == pytest.approx(want, rel=1e-5)
  # Without the mask the padding would be read: the loss would differ.
  unmasked = forward(state.params, jnp.asarray(np.maximum(rows[:, :-1], 0)), 16, 16)
  assert not np.allclose(np.asarray(unmasked), logits, atol=1e-4)
  assert not step_lib.bucket_step(tiny_config('fixed'), model, 16, schedule).keywords['padded_rows']
