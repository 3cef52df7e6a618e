"""Pins ECP's cached sampler (models/ecp_cache.py: ECPCache; ECP.prefill/extend) and the
segment-aligned window both ECP paths share (ECP.window_origin): cached == uncached
== the model's forward pass on the aligned window, across segment boundaries and window jumps
(resets), for every author option and both position encodings."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perceiver_ar_vl import models, sampling
from perceiver_ar_vl.models import ecp_cache
from perceiver_ar_vl.sampling import decode

M, SEG = 32, 8  # S = 4 segments; 2 layers keep min(S - 1, L) = 2 segments: jumps of 16 bytes
SIZE = dict(num_layers=2, num_heads=2, d_model=16, mlp_dim=32, max_context=M, dropout_rate=0.0)
OPTIONS = {
  'default': {},
  'shared_kv': dict(ecp_shared_kv=True),
  'rotary_first_layer_only': dict(ecp_rotary_first_layer_only=True),
  'segment0_out': dict(ecp_segment0_out=True),
  'authors': dict(ecp_shared_kv=True, ecp_rotary_first_layer_only=True, ecp_segment0_out=True),
  'absolute': dict(position_encoding='absolute'),
}
PROMPT, LENGTH = 5, 60  # bytes 0..64: window jumps at indices 32, 48 and 64


def ecp(option='default', **overrides):
  return models.ECP(**{**SIZE, **overrides}, segment_length=SEG, **OPTIONS[option])


@functools.cache
def variables(option):
  """Random parameters with a random (not zero) head, so that logits carry information."""
  model = ecp(option)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, M), jnp.int32))
  key = jax.random.PRNGKey(1)
  return jax.tree.map(lambda p: p + 0.1 * jax.random.normal(key, p.shape), params)


def prompt(seed, batch=2, length=PROMPT):
  return np.random.default_rng(seed).integers(0, 256, (batch, length)).astype(np.int32)


@functools.partial(jax.jit, static_argnames=('model', 'return_keys_values'))
def forward(model, variables, tokens_BxT, return_keys_values=False):
  return model.apply(variables, tokens_BxT, return_keys_values=return_keys_values)


def aligned_logits(model, params, sequence_BxT, context_len):
  """The model on the window [origin, origin + M) of the sequence (zeros after the last
  byte), logits of the last byte: what both ECP paths must give."""
  origin = int(model.window_origin(context_len))
  window = np.zeros((sequence_BxT.shape[0], M), np.int32)
  window[:, : context_len - origin] = sequence_BxT[:, origin:context_len]
  return np.asarray(forward(model, params, jnp.asarray(window)))[:, context_len - 1 - origin]


def kept(model):
  return ecp_cache.kept_segments(model.max_context, model.segment_length, model.num_layers)


def test_origin_starts_at_zero_and_jumps_by_whole_segments():
  """Window [0, 32) until byte 31; byte 32 starts [16, 48) (its own segment is the window's
  third: two full segments kept, the model's 2 layers), byte 48 [32, 64), ..."""
  model = ecp()
  assert kept(model) == 2
  origins = [int(model.window_origin(last + 1)) for last in range(90)]
  assert origins == [0] * 32 + [16] * 16 + [32] * 16 + [48] * 16 + [64] * 10
  assert kept(ecp(num_layers=5)) == 3  # at most S - 1
  assert kept(ecp(max_context=SEG)) == 0  # one segment


@pytest.mark.parametrize('option', list(OPTIONS))
def test_cached_equals_uncached_equals_the_aligned_window(option):
  """65 bytes: 8 segment boundaries and 3 window jumps (resets of the cache)."""
  model, params = ecp(option), variables(option)
  p = prompt(0)
  kwargs = dict(length=LENGTH, num_latents=M, temperature=1.0, seed=3, return_logits=True)
  tok_c, log_c = sampling.sample(model, params, p, cached=True, **kwargs)
  tok_u, log_u = sampling.sample(model, params, p, cached=False, **kwargs)
  np.testing.assert_allclose(log_c, log_u, atol=1e-4, rtol=1e-4)
  np.testing.assert_array_equal(tok_c, tok_u)
  sequence = np.concatenate([p, tok_u], axis=1)
  for step in (0, 3, 26, 27, 28, 40, 43, 58, 59):  # around the jumps at steps 27, 43, 59
    want = aligned_logits(model, params, sequence, PROMPT + step)
    np.testing.assert_allclose(log_u[:, step], want, atol=1e-5, rtol=1e-5)
  assert np.abs(log_u[:, 1:] - log_u[:, :-1]).max() > 1e-2  # informative, changing logits


@pytest.mark.parametrize('option', ['default', 'rotary_first_layer_only', 'segment0_out'])
def test_with_rotary_and_separate_values_jumps_lose_no_context(option):
  """Keeping L segments behind the new byte's gives it its full receptive field, and the model
  is translation-invariant over whole segments: every step equals the model run once over
  the whole sequence (a model with a window that holds it all; same parameters)."""
  model, params = ecp(option), variables(option)
  p = prompt(1, length=40)  # longer than the window: the first window already jumped
  tokens, logits = sampling.sample(
    model, params, p, length=40, num_latents=M, temperature=0.0, return_logits=True
  )
  sequence = np.zeros((2, 80), np.int32)  # 79 bytes, then a never-seen 0
  sequence[:, :79] = np.concatenate([p, tokens], axis=1)[:, :-1]
  unbounded = forward(ecp(option, max_context=80), params, jnp.asarray(sequence))[:, :79]
  np.testing.assert_allclose(logits, unbounded[:, 39:], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('option', ['default', 'authors'])
@pytest.mark.parametrize('context_len', [5, 20, 40])
def test_prefill_holds_the_forward_pass_keys_values(option, context_len):
  """Each usable ring slot (the previous and the current segment up to the last byte) holds
  the keys/values that the model's forward pass computes at that window position."""
  model, params = ecp(option), variables(option)
  right_aligned = decode.left_padded_window(prompt(2, length=context_len), M)
  logits, cache = jax.jit(model.prefill, static_argnums=(2, 3, 4))(
    params, jnp.asarray(right_aligned), context_len, M, M
  )
  origin = int(cache.origin)
  window = np.zeros_like(right_aligned)
  window[:, : context_len - origin] = prompt(2, length=context_len)[:, origin:]
  want_logits, keys_values = forward(model, params, jnp.asarray(window), True)
  np.testing.assert_allclose(logits, want_logits[:, context_len - 1 - origin], atol=1e-5)
  last = context_len - 1
  first = max(origin, (last // SEG - 1) * SEG)
  for (k, v), k_ring, v_ring in zip(keys_values, cache.k, cache.v, strict=True):
    for index in range(first, last + 1):
      slot = index % (2 * SEG)
      np.testing.assert_allclose(k_ring[:, :, slot], k[:, index - origin], atol=1e-5)
      np.testing.assert_allclose(v_ring[:, :, slot], v[:, index - origin], atol=1e-5)


def test_a_cached_sample_split_over_several_calls_is_the_same(monkeypatch):
  """The ECP cache (ring buffers and origin) carries from one compiled call to the next."""
  model, params = ecp(), variables('default')
  kwargs = dict(length=40, num_latents=M, seed=4, return_logits=True)
  tokens, logits = sampling.sample(model, params, prompt(3), **kwargs)
  monkeypatch.setattr(decode, 'STEPS_PER_CALL', 7)
  split_tokens, split_logits = sampling.sample(model, params, prompt(3), **kwargs)
  np.testing.assert_array_equal(split_tokens, tokens)
  np.testing.assert_allclose(split_logits, logits, atol=1e-6, rtol=0)
