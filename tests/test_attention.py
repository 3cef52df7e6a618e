"""Pins perceiver_ar_vl/layers/attention.py (with its kernels and rotary): kernels against a
float64 numpy reference, rotary."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perceiver_ar_vl.layers import attention, kernels, rotary
from perceiver_ar_vl.layers.masks import causal_mask


def numpy_rotary(x, positions, fraction, max_wavelength):
  """float64 rotary: channel pairs (i, i + R/2) of the first R channels rotate."""
  rot = rotary.rotary_dims(x.shape[-1], fraction)
  half = rot // 2
  inv_freq = max_wavelength ** (-np.arange(half) / half)
  ang = positions[..., None].astype(np.float64) * inv_freq  # [B, T, F]
  sin, cos = np.sin(ang)[:, :, None], np.cos(ang)[:, :, None]
  x1, x2 = x[..., :half], x[..., half:rot]
  return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, x[..., rot:]], -1)


def numpy_attention_layer(params, x_q, x_kv, q_pos, kv_pos, mask, fraction, wavelength):
  """One MultiHeadAttention layer in float64 numpy."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  q = np.einsum('bsd,dhk->bshk', x_q, p['query']['kernel']) + p['query']['bias']
  k = np.einsum('btd,dhk->bthk', x_kv, p['key']['kernel']) + p['key']['bias']
  v = np.einsum('btd,dhk->bthk', x_kv, p['value']['kernel']) + p['value']['bias']
  q = numpy_rotary(q, q_pos, fraction, wavelength)
  k = numpy_rotary(k, kv_pos, fraction, wavelength)
  s = np.einsum('bshk,bthk->bhst', q, k) / np.sqrt(q.shape[-1])
  s = np.where(mask[:, None], s, -np.inf)
  w = np.exp(s - s.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  o = np.einsum('bhst,bthk->bshk', w, v)
  return np.einsum('bshk,hkd->bsd', o, p['out']['kernel']) + p['out']['bias']


@pytest.mark.parametrize('impl', ['einsum', 'xla', 'chunked', 'auto'])
def test_attention_layer_matches_float64_reference(impl):
  rng = np.random.default_rng(0)
  b, s, t, d, h = 2, 5, 9, 32, 4
  x_q = rng.normal(size=(b, s, d)).astype(np.float32)
  x_kv = rng.normal(size=(b, t, d)).astype(np.float32)
  q_pos = np.broadcast_to(np.arange(t - s, t), (b, s))
  kv_pos = np.broadcast_to(np.arange(t), (b, t))
  key_ok = rng.random((b, t)) > 0.3
  mask = (kv_pos[:, None, :] <= q_pos[:, :, None]) & key_ok[:, None, :]
  mask |= kv_pos[:, None, :] == q_pos[:, :, None]
  spec = causal_mask(q_pos, kv_pos, key_ok)
  np.testing.assert_array_equal(np.asarray(spec.dense()), mask)
  layer = attention.MultiHeadAttention(
    num_heads=h, d_model=d, rotary_fraction=0.5, max_wavelength=100.0, attention_impl=impl
  )
  params = layer.init(jax.random.PRNGKey(1), x_q, x_kv, q_pos, kv_pos, spec)['params']
  got = layer.apply({'params': params}, x_q, x_kv, q_pos, kv_pos, spec)
  want = numpy_attention_layer(
    params, x_q.astype(np.float64), x_kv.astype(np.float64), q_pos, kv_pos, mask, 0.5, 100.0
  )
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_rotary_matches_reference_and_keeps_pass_through_channels():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 6, 3, 16))
  pos = np.broadcast_to(np.arange(6) * 7, (2, 6))
  got = rotary.apply_rotary(jnp.asarray(x, jnp.float32), jnp.asarray(pos), 0.5, 1000.0)
  np.testing.assert_allclose(np.asarray(got), numpy_rotary(x, pos, 0.5, 1000.0), atol=1e-5)
  np.testing.assert_array_equal(np.asarray(got)[..., 8:], x[..., 8:].astype(np.float32))
  assert rotary.rotary_dims(64, 0.5) == 32 and rotary.rotary_dims(10, 0.5) == 4


def test_rotary_scores_depend_on_relative_position_only():
  rng = np.random.default_rng(2)
  q = jnp.asarray(rng.normal(size=(1, 1, 2, 16)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 1, 2, 16)), jnp.float32)

  def score(pq, pk):
    rq = rotary.apply_rotary(q, jnp.array([[pq]]), 1.0, 10_000.0)
    rk = rotary.apply_rotary(k, jnp.array([[pk]]), 1.0, 10_000.0)
    return float(jnp.sum(rq * rk))

  base = score(10, 3)
  for shift in (1, 17, 250):
    assert score(10 + shift, 3 + shift) == pytest.approx(base, abs=1e-4)
  assert abs(score(10, 4) - base) > 1e-3  # a different offset changes the score


def test_unknown_kernel_is_a_clear_error():
  x = jnp.zeros((1, 2, 1, 4))
  with pytest.raises(ValueError, match='attention_impl'):
    pos = jnp.zeros((1, 2), jnp.int32)
    kernels.dot_product_attention(x, x, x, causal_mask(pos, pos, pos >= 0), 'flash')
