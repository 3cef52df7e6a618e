"""Pins perceiver_ar_vl/models/perceiver_ar.py's training-only latent dropout
(`model.latent_dropout`); the model's other properties: tests/test_models.py."""

import jax
import numpy as np

from perceiver_ar_vl import models

SIZE = dict(num_layers=3, num_heads=2, d_model=16, mlp_dim=32, max_context=24, dropout_rate=0.0)


def _perceiver(latent_dropout):
  model = models.PerceiverAR(**SIZE, latent_dropout=latent_dropout)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 24), 0, 256)
  params = model.init_variables(jax.random.PRNGKey(1))
  params = jax.tree.map(
    lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(2), p.shape), params
  )
  return model, params, tokens


def _forward(model, params, tokens, rngs=None):
  """model.forward of 8 latents, compiled (an eager flax apply runs op by op, for seconds)."""
  return jax.jit(lambda p, t, r: model.forward(p, t, 8, 8, rngs=r))(params, tokens, rngs)


def test_latent_dropout_acts_only_in_training_and_spares_a_latents_own_key():
  model, params, tokens = _perceiver(latent_dropout=0.9)
  plain = _forward(models.PerceiverAR(**SIZE), params, tokens)
  np.testing.assert_array_equal(_forward(model, params, tokens), plain)  # not training
  train = _forward(model, params, tokens, {'dropout': jax.random.PRNGKey(3)})
  # The first active latent has only itself as a latent-layer key, which is never dropped.
  np.testing.assert_allclose(train[:, 0], plain[:, 0], rtol=1e-5, atol=1e-5)
  assert not np.allclose(train[:, 1:], plain[:, 1:], atol=1e-3)
  assert np.isfinite(train).all()


def test_latent_dropout_keeps_causality():
  model, params, tokens = _perceiver(latent_dropout=0.5)
  rngs = {'dropout': jax.random.PRNGKey(4)}
  base = _forward(model, params, tokens, rngs)
  changed = tokens.at[:, 20].set((tokens[:, 20] + 1) % 256)  # window position 20 = slot 4
  after = _forward(model, params, changed, rngs)
  np.testing.assert_array_equal(after[:, :4], base[:, :4])
  assert not np.allclose(after[:, 4:], base[:, 4:])
