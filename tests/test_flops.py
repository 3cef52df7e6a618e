"""Pins perceiver_ar_vl/flops.py against the matmuls that the models actually trace."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from perceiver_ar_vl import config_lib, flops, models


def traced_matmul_flops(fn, *args) -> int:
  """2 * multiply-adds of every dot_general in fn's jaxpr (recursing into sub-jaxprs)."""

  def count(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == 'dot_general':
        (lhs_contract, _), (lhs_batch, _) = eqn.params['dimension_numbers']
        lhs, rhs = (v.aval.shape for v in eqn.invars)
        out = eqn.outvars[0].aval.shape
        total += 2 * int(np.prod(out)) * int(np.prod([lhs[i] for i in lhs_contract]))
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        total += count(sub)
    return total

  return count(jax.make_jaxpr(fn)(*args).jaxpr)


SIZE = dict(num_layers=3, num_heads=2, d_model=16, mlp_dim=48, max_context=40, vocab_size=256)


@pytest.mark.parametrize(
  'model_type, bucket, segment',
  [
    ('perceiver_ar', 8, None),
    ('perceiver_ar', 40, None),
    ('transformer', 40, None),
    ('ecp', 40, 8),
    ('ecp', 40, 40),  # one segment: the Transformer's count
  ],
)
def test_forward_flops_equal_the_traced_matmuls(model_type, bucket, segment):
  tokens = jnp.zeros((3, 40), jnp.int32)
  if model_type == 'perceiver_ar':
    model = models.PerceiverAR(**SIZE, attention_impl='einsum')
    params = model.init(jax.random.PRNGKey(0), tokens, num_latents=bucket)
    fn = lambda p, t: model.apply(p, t, num_latents=bucket)
  else:
    extra = {} if model_type == 'transformer' else dict(segment_length=segment)
    cls = models.Transformer if model_type == 'transformer' else models.ECP
    model = cls(**SIZE, attention_impl='einsum', **extra)
    params = model.init(jax.random.PRNGKey(0), tokens)
    fn = model.apply
  want = traced_matmul_flops(fn, params, tokens)
  size = {k: v for k, v in SIZE.items() if k not in ('num_heads', 'max_context')}
  got = flops.forward_flops(
    model_type, **size, context=40, num_latents=bucket, segment_length=segment, batch=3
  )
  assert got == want


def test_train_step_flops_from_config():
  c = config_lib.strategy_config('fixed_512', 'gpu')
  got = flops.train_step_flops(c, 512, batch=1)
  m = c.model
  forward = flops.forward_flops(
    'perceiver_ar', num_layers=6, d_model=512, mlp_dim=2048, context=m.max_context, num_latents=512
  )
  assert got == 3 * forward
  assert flops.train_step_flops(c, 512) == c.train.batch_size * got
  with pytest.raises(ValueError, match='num_latents'):
    flops.train_step_flops(c, m.max_context + 1)
