"""Pins `model.remat` (models/base.py, REMAT_POLICIES): the same loss and gradients with
rematerialised blocks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perceiver_ar_vl import losses, models
from perceiver_ar_vl.models.base import REMAT_POLICIES

SIZE = dict(num_layers=3, num_heads=2, d_model=32, mlp_dim=128, max_context=64, dropout_rate=0.1)


@functools.cache
def initial_params(model_cls):
  """Random variables of the model, the same for every remat policy (remat adds none)."""
  params = jax.jit(model_cls(**SIZE).init_variables)(jax.random.PRNGKey(0))
  return jax.tree.map(
    lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params
  )


@functools.lru_cache(maxsize=8)  # the 'none' reference is shared by both remat policies
def loss_and_grads(model_cls, remat, impl='einsum', batch=2):
  model = model_cls(**SIZE, remat=remat, attention_impl=impl)
  window = jnp.asarray(np.random.default_rng(0).integers(0, 256, (batch, 65)), jnp.int32)
  bucket = 32 if model_cls is models.PerceiverAR else 64
  params = initial_params(model_cls)  # apply fails on a parameter the model lacks

  def loss(params):  # with dropout: the recomputed forward must draw the same masks
    logits = model.forward(
      params, window[:, :-1], bucket, bucket, rngs={'dropout': jax.random.PRNGKey(2)}
    )
    return losses.cross_entropy_loss(logits, window, bucket).nats

  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize('model_cls', [models.PerceiverAR, models.Transformer])
@pytest.mark.parametrize('remat', ['block', 'dots'])
def test_remat_gives_the_same_loss_and_gradients(model_cls, remat):
  impl = 'chunked' if model_cls is models.PerceiverAR else 'einsum'  # both attention paths
  want_loss, want_grads = loss_and_grads(model_cls, 'none', impl)
  got_loss, got_grads = loss_and_grads(model_cls, remat, impl)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
    np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize('remat, expected', [('none', 0), ('block', 3), ('dots', 3)])
def test_each_block_is_rematerialised_with_its_policy(remat, expected):
  """One checkpointed region per block (3 layers). Memory is not asserted here: XLA's CPU
  compiler undoes rematerialisation (a plain jax.checkpoint chain measured 608 vs 580 MiB of
  temporaries with and without), so the memory/time trade-off is measured on a GPU by
  `benchmarks/gpu.py`."""
  model = models.Transformer(**SIZE, remat=remat)
  tokens = jnp.zeros((1, 64), jnp.int32)
  params = jax.eval_shape(model.init_variables, jax.random.PRNGKey(0))
  jaxpr = jax.make_jaxpr(jax.grad(lambda p: model.apply(p, tokens).sum()))(params).jaxpr
  regions = [e for e in jaxpr.eqns if e.primitive.name.startswith(('checkpoint', 'remat'))]
  assert len(regions) == expected
  if expected:
    assert {e.params['policy'] for e in regions} == {REMAT_POLICIES[remat]}


def test_unknown_remat_is_a_clear_error():
  model = models.Transformer(**SIZE, remat='everything')
  with pytest.raises(ValueError, match='remat'):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64), jnp.int32))
