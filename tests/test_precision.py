"""Pins mixed precision (models/, layers/kernels.py, config_lib.py): bf16 compute with
float32 parameters, softmax statistics, head and loss; backward matmuls in one dtype."""

import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TINY_MODEL, TINY_WINDOW, tiny_config

from perceiver_ar_vl import config_lib, errors, losses, models, training

M = TINY_WINDOW


def loss_fn(model, bucket):
  window = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, M + 1)), jnp.int32)

  def loss(params):
    logits = model.forward(params, window[:, :-1], bucket, bucket)
    assert logits.dtype == jnp.float32
    return losses.cross_entropy_loss(logits, window, bucket).nats

  return loss


@functools.cache
def random_params(model_cls):
  params = jax.jit(model_cls(**TINY_MODEL).init_variables)(jax.random.PRNGKey(0))
  return jax.tree.map(
    lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params
  )


CASES = [(models.PerceiverAR, 16), (models.Transformer, M)]


@pytest.mark.parametrize('model_cls, bucket', CASES)
@pytest.mark.parametrize('impl', ['einsum', 'chunked'])
def test_bfloat16_loss_and_gradients_match_float32(model_cls, bucket, impl):
  """Same float32 parameters: the bf16 loss is within 0.02 nats of the float32 loss (bf16 has
  8 bits of mantissa; softmax statistics, LayerNorm statistics, head and loss are float32),
  and the float32 parameter gradients point the same way (cosine > 0.99)."""
  params = random_params(model_cls)
  results = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    model = model_cls(**TINY_MODEL, attention_impl=impl, dtype=dtype)
    results[dtype] = jax.jit(jax.value_and_grad(loss_fn(model, bucket)))(params)
  (loss32, grads32), (loss16, grads16) = results[jnp.float32], results[jnp.bfloat16]
  assert abs(float(loss16) - float(loss32)) < 0.02
  g32 = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads32)])
  g16 = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads16)])
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads16))
  assert g32 @ g16 / np.linalg.norm(g32) / np.linalg.norm(g16) > 0.99


def dot_operand_dtypes(fn, *args) -> set:
  """{(lhs dtype, rhs dtype)} of every dot_general in fn's jaxpr, sub-jaxprs included."""

  def walk(jaxpr):
    out = set()
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == 'dot_general':
        out.add(tuple(str(v.aval.dtype) for v in eqn.invars))
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        out |= walk(sub)
    return out

  return walk(jax.make_jaxpr(fn)(*args).jaxpr)


@pytest.mark.parametrize('impl', ['einsum', 'chunked'])
def test_bfloat16_backward_never_multiplies_float32_by_bfloat16(impl):
  model = models.PerceiverAR(**TINY_MODEL, attention_impl=impl, dtype=jnp.bfloat16)
  params = random_params(models.PerceiverAR)
  pairs = dot_operand_dtypes(jax.grad(loss_fn(model, 16)), params)
  assert ('bfloat16', 'bfloat16') in pairs
  assert all(a == b for a, b in pairs), pairs  # bf16 x bf16 or f32 x f32 (the head), no mix


def test_bfloat16_training_reaches_the_float32_result(tmp_path):
  """200 steps of the tiny copy-task model: bf16 ends within 0.15 bits/byte of float32."""
  bits = {}
  for dtype in ('float32', 'bfloat16'):
    config = tiny_config('fixed', steps=200)
    config.model.dtype = dtype
    config.train.update(log_every=50, checkpoint_every=200)
    bits[dtype] = training.train(config, str(tmp_path / dtype))['validation_bits']
  assert bits['float32'] < 6.0  # it learned something (8 bits = chance)
  assert abs(bits['bfloat16'] - bits['float32']) < 0.15, bits


def test_gpu_preset_is_bfloat16_and_cudnn_needs_it():
  assert config_lib.strategy_config('curriculum', 'gpu').model.dtype == 'bfloat16'
  assert config_lib.strategy_config('curriculum', 'cpu').model.dtype == 'float32'
  config = config_lib.strategy_config('curriculum', 'cpu')
  config.model.attention_impl = 'cudnn'
  with pytest.raises(errors.UserError, match='needs bf16'):
    config_lib.validate(config)
