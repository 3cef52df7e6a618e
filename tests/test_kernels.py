"""Pins perceiver_ar_vl/layers/kernels.py and layers/chunked.py: the chunked kernel against
the einsum reference (values and gradients, padding, left masks, traced N), 'auto'
selection, memory bounds."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perceiver_ar_vl import models
from perceiver_ar_vl.layers import chunked
from perceiver_ar_vl.layers import kernels as ak
from perceiver_ar_vl.layers.chunked import chunked_attention
from perceiver_ar_vl.layers.masks import causal_mask


def random_qkv(rng, b, s, t, h, k, dtype=jnp.float32):
  return tuple(jnp.asarray(rng.normal(size=(b, n, h, k)), dtype) for n in (s, t, t))


def cross_attend_mask(rng, b, s, t, pad_left=0, drop=0.0):
  """Queries are the last s of t positions; keys before `pad_left` and a random `drop`
  fraction of keys are unusable (left padding, prefix-key dropout)."""
  q_pos = np.broadcast_to(np.arange(t - s, t), (b, s))
  kv_pos = np.broadcast_to(np.arange(t), (b, t))
  key_ok = (kv_pos >= pad_left) & (rng.random((b, t)) >= drop)
  return causal_mask(q_pos, kv_pos, key_ok)


def attend_and_grads(impl, q, k, v, mask, w, **blocks):
  def f(q, k, v):
    if impl == 'chunked':
      out = chunked_attention(q, k, v, mask, **blocks)
    else:
      out = ak.dot_product_attention(q, k, v, mask, impl)
    return jnp.sum(out.astype(jnp.float32) * w), out

  (_, out), grads = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(q, k, v)
  return out, grads


@pytest.mark.parametrize(
  's, t, block_q, block_k, pad_left, drop',
  [
    (5, 37, 4, 8, 0, 0.3),  # cross-attend shape, blocks that do not divide S or T
    (16, 16, 4, 4, 0, 0.0),  # self-attention: whole key blocks above the diagonal are skipped
    (20, 20, 8, 6, 7, 0.0),  # left padding: padded queries see only themselves
    (9, 40, 16, 16, 11, 0.4),  # one block each way, padding and dropped keys together
  ],
)
def test_chunked_matches_einsum_values_and_gradients(s, t, block_q, block_k, pad_left, drop):
  rng = np.random.default_rng(s * t)
  q, k, v = random_qkv(rng, 2, s, t, 3, 8)
  mask = cross_attend_mask(rng, 2, s, t, pad_left, drop)
  w = jnp.asarray(rng.normal(size=(2, s, 3, 8)), jnp.float32)
  want, want_grads = attend_and_grads('einsum', q, k, v, mask, w)
  got, got_grads = attend_and_grads('chunked', q, k, v, mask, w, block_q=block_q, block_k=block_k)
  np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-5)
  for g, r in zip(got_grads, want_grads, strict=True):
    np.testing.assert_allclose(g, r, atol=2e-6, rtol=1e-5)


def test_chunked_in_bfloat16_is_close_to_float32_reference():
  rng = np.random.default_rng(3)
  q, k, v = random_qkv(rng, 1, 8, 64, 2, 16)
  mask = cross_attend_mask(rng, 1, 8, 64)
  want = ak.einsum_attention(q, k, v, mask.dense())
  half = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  got = chunked_attention(*half, mask, block_q=4, block_k=16)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=3e-2)


KERNEL_SIZE = dict(
  num_layers=2, num_heads=2, d_model=16, mlp_dim=32, max_context=40, dropout_rate=0.0
)


@functools.cache
def kernel_params(model_cls, encoding):
  """The model's initial variables: the same for every kernel (attention_impl adds none)."""
  model = model_cls(**KERNEL_SIZE, position_encoding=encoding)
  return jax.jit(model.init_variables)(jax.random.PRNGKey(0))


def logits_and_grads(model_cls, encoding, impl):
  """Logits and parameter gradients of the model with kernel `impl`, jitted with a traced
  N = 19 at bucket 24, on a batch whose second row is left-padded."""
  rng = np.random.default_rng(4)
  tokens = jnp.asarray(rng.integers(0, 256, (2, 40)), jnp.int32)
  valid = jnp.arange(40)[None, :] >= jnp.array([[0], [13]])  # second row left-padded
  targets = jnp.asarray(rng.integers(0, 256, (2, 24)), jnp.int32)
  model = model_cls(**KERNEL_SIZE, attention_impl=impl, position_encoding=encoding)

  @jax.jit
  def loss_and_logits(params, n):
    logits = model.forward(params, tokens, n, 24, input_mask=valid)
    active = jnp.arange(24) >= 24 - n
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
    return jnp.sum(nll * active) / n, logits

  params = kernel_params(model_cls, encoding)
  (_, logits), grads = jax.value_and_grad(loss_and_logits, has_aux=True)(params, jnp.int32(19))
  return logits, grads


@functools.cache
def einsum_reference(model_cls, encoding):
  return logits_and_grads(model_cls, encoding, 'einsum')


@pytest.mark.parametrize(
  'model_cls, encoding',
  [
    (models.PerceiverAR, 'rotary'),  # keys/values made inside the kernel, rotary on keys
    (models.PerceiverAR, 'absolute'),  # the same without rotary
    (models.Transformer, 'rotary'),
  ],
)
@pytest.mark.parametrize('impl', ['chunked', 'xla'])
def test_models_with_other_kernels_match_einsum_under_padding_and_traced_latents(
  model_cls, encoding, impl, monkeypatch
):
  """Whole models, jitted with a traced N at a larger bucket, left-padded input: the chunked
  kernel's and the XLA kernel's (structural mask arguments) logits and parameter gradients
  equal the einsum reference's (computed once per model)."""
  monkeypatch.setattr(chunked, 'DEFAULT_BLOCK_Q', 8)
  monkeypatch.setattr(chunked, 'DEFAULT_BLOCK_K', 8)
  want_logits, want_grads = einsum_reference(model_cls, encoding)
  got_logits, got_grads = logits_and_grads(model_cls, encoding, impl)
  np.testing.assert_allclose(got_logits, want_logits, atol=1e-5, rtol=1e-5)
  for g, r in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
    np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-4)


def test_select_impl_rules():
  f32, bf16 = jnp.float32, jnp.bfloat16
  # CPU: dense einsum while the scores are small, chunked beyond AUTO_DENSE_MAX_SCORES.
  assert ak.select_impl('cpu', f32, 16, 4, 256, 256, 32) == 'einsum'  # exactly 2^22 scores
  assert ak.select_impl('cpu', f32, 16, 4, 256, 512, 32) == 'chunked'
  assert ak.select_impl('cpu', f32, 1, 8, 1024, 1024, 64) == 'chunked'
  assert ak.select_impl('cpu', bf16, 1, 8, 1024, 131072, 64) == 'chunked'
  # GPU: cuDNN needs half precision, a supported head size and a bias that fits.
  assert ak.select_impl('gpu', bf16, 32, 8, 1024, 1024, 64) == 'cudnn'
  assert ak.select_impl('gpu', f32, 32, 8, 1024, 1024, 64) == 'chunked'
  assert ak.select_impl('gpu', f32, 1, 8, 256, 256, 64) == 'xla'
  assert ak.select_impl('gpu', bf16, 1, 4, 512, 1024, 160) == 'xla'
  assert ak.select_impl('gpu', bf16, 8, 8, 1024, 131072, 64) == 'chunked'


@pytest.mark.parametrize('kv_len, expect_chunked', [(64, False), (4096, True)])
def test_auto_runs_the_kernel_it_selects(kv_len, expect_chunked):
  """'auto' on this (CPU) backend: the dense einsum kernel for small scores, the chunked
  custom-VJP loop for large ones, as `select_impl` says."""
  q = jnp.zeros((1, 1024, 8, 8), jnp.float32)
  kv = jnp.zeros((1, kv_len, 8, 8), jnp.float32)
  mask = cross_attend_mask(np.random.default_rng(0), 1, min(1024, kv_len), kv_len)
  q = q[:, : min(1024, kv_len)]
  chosen = ak.resolve_impl('auto', q, kv)
  assert chosen == ak.select_impl(jax.default_backend(), jnp.float32, 1, 8, q.shape[1], kv_len, 8)
  assert (chosen == 'chunked') == expect_chunked
  jaxpr = str(jax.make_jaxpr(lambda q, kv: ak.dot_product_attention(q, kv, kv, mask))(q, kv))
  looped = 'scan[' in jaxpr or 'while[' in jaxpr  # the chunked kernel loops over blocks
  assert looped == expect_chunked


def temp_bytes(impl, t):
  """Compiled temporaries of d(sum(attention))/d(q, k, v) for causal self-attention over t."""
  q = jax.ShapeDtypeStruct((1, t, 1, 16), jnp.float32)
  pos = jnp.arange(t)[None]
  mask = causal_mask(pos, pos, pos >= 0)

  def loss(q, k, v):
    if impl == 'chunked':
      return chunked_attention(q, k, v, mask, block_q=256, block_k=256).sum()
    return ak.dot_product_attention(q, k, v, mask, impl).sum()

  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  return grad.lower(q, q, q).compile().memory_analysis().temp_size_in_bytes


def test_chunked_memory_holds_no_score_matrix_where_einsum_must():
  """Bounds from the memory model, not from today's compiler: over T = 4096 keys the dense
  reference must hold the [T, T] float32 scores (its gradient too), so its temporaries are at
  least one such matrix; the chunked kernel holds one [256, 256] block of them at a time plus
  O(T) vectors, so its temporaries stay below a quarter of one [T, T] matrix at 4096, and
  grow at most linearly (4x for 4x the window) from T = 1024."""
  t = 4096
  scores = t * t * 4
  chunked = [temp_bytes('chunked', n) for n in (1024, t)]
  einsum = temp_bytes('einsum', t)
  assert einsum >= scores, einsum
  assert chunked[1] < scores / 4, chunked
  assert chunked[1] <= 4 * chunked[0] + 256 * 256 * 4 * 4, chunked


@pytest.mark.parametrize(
  's, t, per_example',
  [(6, 20, False), (6, 20, True), (12, 12, False), (12, 12, True)],
)
def test_fused_mask_arguments_are_structural_and_exact(s, t, per_example):
  """`fused_mask_args` for window-aligned masks: `local_window_size=(T, T - S)` (cross-attend)
  or `is_causal` (self-attention), plus a boolean mask that has batch dimension 1 unless the
  mask differs per example; through the 'xla' implementation (the same arguments cuDNN
  takes) they give the einsum reference's result."""
  rng = np.random.default_rng(s * t + per_example)
  q, k, v = random_qkv(rng, 3, s, t, 2, 8)
  q_pos, kv_pos = np.arange(t - s, t)[None], np.arange(t)[None]
  if per_example:  # left padding: a different number of unusable keys per row
    key_ok = kv_pos >= np.array([[0], [3], [7]])
  else:  # inactive latents: the same for every example
    key_ok = kv_pos >= 2
  mask = causal_mask(q_pos, kv_pos, key_ok, aligned=True)
  args = ak.fused_mask_args(mask, s, t)
  assert args['mask'].shape == ((3 if per_example else 1), 1, s, t)
  if s == t:
    assert args['is_causal'] and 'local_window_size' not in args
  else:
    assert args['local_window_size'] == (t, t - s) and 'is_causal' not in args
  got = jax.nn.dot_product_attention(q, k, v, implementation='xla', **args)
  want = ak.einsum_attention(q, k, v, mask.dense())
  np.testing.assert_allclose(got, want, atol=2e-6)
  # The window alone (no boolean mask) is exactly the causal part of the reference.
  structure = {key: value for key, value in args.items() if key != 'mask'}
  causal_only = jax.nn.dot_product_attention(q, k, v, implementation='xla', **structure)
  all_keys = causal_mask(q_pos, kv_pos, np.ones_like(key_ok), aligned=True)
  np.testing.assert_allclose(causal_only, ak.einsum_attention(q, k, v, all_keys.dense()), atol=2e-6)
