"""Pins perceiver_ar_vl/experiments/flops.py against the matmuls that the models actually
trace, and against the FLOP formula written out by hand."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from perceiver_ar_vl import config_lib, models
from perceiver_ar_vl.experiments import flops


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
  'model_type, bucket, options',
  [
    ('perceiver_ar', 8, {}),
    ('perceiver_ar', 40, {}),
    ('perceiver_ar', 8, dict(num_cross_attend_heads=1, cross_attend_mlp_dim=24)),
    ('transformer', 40, {}),
    ('ecp', 40, dict(segment_length=8)),
    ('ecp', 40, dict(segment_length=40)),  # one segment: the Transformer's count
  ],
)
def test_forward_flops_equal_the_traced_matmuls(model_type, bucket, options):
  tokens = jnp.zeros((3, 40), jnp.int32)
  model = models.MODELS[model_type](**SIZE, attention_impl='einsum', **options)
  variables = jax.eval_shape(model.init_variables, jax.random.PRNGKey(0))  # shapes suffice
  want = traced_matmul_flops(lambda v, t: model.forward(v, t, bucket, bucket), variables, tokens)
  assert flops.forward_flops(model, bucket, batch=3) == want


def hand_layer(queries, keys, keys_per_query, d, f):
  """One block's forward FLOPs, one matmul at a time (2 FLOPs a multiply-add): q and out
  projections over the queries, k and v over the keys, scores and the weighted sum over the
  keys each query scores, the MLP's two matmuls."""
  q_proj = out_proj = 2 * queries * d * d
  k_proj = v_proj = 2 * keys * d * d
  scores = weighted_sum = 2 * queries * keys_per_query * d
  mlp = 2 * queries * d * f + 2 * queries * f * d
  return q_proj + k_proj + v_proj + scores + weighted_sum + out_proj + mlp


# model type -> its forward FLOPs per window, by hand: (layers, d, f, V, M, bucket, options).
HAND_FORWARD = {
  'perceiver_ar': lambda L, d, f, v, m, b, o: (
    hand_layer(b, m, m, d, o.get('cross_attend_mlp_dim') or f)  # cross-attend: B over M
    + (L - 1) * hand_layer(b, b, b, d, f)  # latent layers: B over B
    + 2 * b * d * v  # the head over the B slots
  ),
  'transformer': lambda L, d, f, v, m, b, o: L * hand_layer(m, m, m, d, f) + 2 * m * d * v,
  'ecp': lambda L, d, f, v, m, b, o: (  # each query: its previous segment and its own
    L * hand_layer(m, m, min(2 * o['segment_length'], m), d, f) + 2 * m * d * v
  ),
}


@pytest.mark.parametrize(
  'model_type, bucket, options',
  [
    ('perceiver_ar', 8, {}),
    ('perceiver_ar', 40, {}),
    ('perceiver_ar', 8, dict(num_cross_attend_heads=1, cross_attend_mlp_dim=24)),
    ('transformer', 8, {}),  # the bucket is ignored: every position is scored
    ('ecp', 40, dict(segment_length=8)),
    ('ecp', 40, dict(segment_length=40)),
  ],
)
def test_forward_flops_equal_the_hand_formula(model_type, bucket, options):
  """Every registered model has a hand formula here, and forward_flops follows it."""
  assert set(HAND_FORWARD) == set(models.MODELS)
  model = models.MODELS[model_type](**SIZE, **options)
  s = SIZE
  per_window = HAND_FORWARD[model_type](
    s['num_layers'], s['d_model'], s['mlp_dim'], s['vocab_size'], s['max_context'], bucket, options
  )
  assert flops.forward_flops(model, bucket) == per_window
  assert flops.forward_flops(model, bucket, batch=5) == 5 * per_window


def test_train_step_flops_from_config():
  """The seed model (d 512, MLP 2048, 6 layers, vocab 256) at M = 1024, B = 512: one
  cross-attend (512 queries over 1024 keys), 5 latent layers (512 over 512), the head over
  512 slots; 2 FLOPs a multiply-add; train = 3 x forward."""
  c = config_lib.strategy_config('fixed_512', 'gpu')
  d, f, v = 512, 2048, 256
  layer = lambda s, t: 4 * s * d * d + 4 * t * d * d + 4 * s * t * d + 4 * s * d * f
  forward = layer(512, 1024) + 5 * layer(512, 512) + 2 * 512 * d * v
  got = flops.train_step_flops(c, 512, batch=1)
  assert got == 3 * forward
  assert flops.train_step_flops(c, 512) == c.train.batch_size * got
  with pytest.raises(ValueError, match='bucket must be in'):
    flops.train_step_flops(c, c.model.max_context + 1)
