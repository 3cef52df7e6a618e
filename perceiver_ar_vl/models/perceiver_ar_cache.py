"""Perceiver AR's decoding cache: what it holds, how a window pass fills it, and which cached
n-gram match keys a new byte may match (the model's `prefill_cache` / `extend_cache` run it)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from perceiver_ar_vl.layers import kv_cache


class PerceiverCache(NamedTuple):
  """Cached keys/values of Perceiver AR, heads-major. H heads, K head dim, N the capacity.

  cross_k, cross_v: [B, H, M, K] cross-attend keys/values of the window, a ring buffer
    (`layers.kv_cache`): slot s holds sequence index i = s (mod M).
  latent_k, latent_v: per latent layer [B, H, N, K]; slot i holds the i-th latent since the
    last reset (slots at or past the current latent count are unused and masked out).
  origin: int32 scalar, the sequence index that rotary treats as position 0 (the first
    window position at the last reset), so cached positions stay below M + N.
  match_codes: [B, G, M] uint32 ring buffer of each match head's key codes (G heads; G = 0
    without match heads), match_v: [B, G, M, K] their values, recent: [B, R] the last R
    bytes (R = the longest n-gram + 1; -1 before the first byte), whose n-grams give the
    new query's code and the new key's.
  """

  cross_k: jax.Array
  cross_v: jax.Array
  latent_k: tuple[jax.Array, ...]
  latent_v: tuple[jax.Array, ...]
  origin: jax.Array
  match_codes: jax.Array
  match_v: jax.Array
  recent: jax.Array


def from_window_pass(keys_values, match_cache, recent_BxR, context_len, spare_latents: int):
  """The cache of one full window pass: its keys/values per layer (`PerceiverAR.__call__`
  with return_keys_values), the match heads' (codes [B, G, M], values [B, M, G, K]) or None,
  the last bytes `recent_BxR`; latent layers get room for `spare_latents` more latents."""
  (cross_k, cross_v), *latent_kv = keys_values
  batch, window = cross_k.shape[:2]
  pad = ((0, 0), (0, 0), (0, spare_latents), (0, 0))
  heads_major = lambda x: jnp.pad(jnp.swapaxes(x, 1, 2), pad)
  if match_cache is None:
    match_codes = jnp.zeros((batch, 0, window), jnp.uint32)
    match_v = jnp.zeros((batch, 0, window, cross_v.shape[-1]), cross_v.dtype)
  else:
    codes_BxGxM, v_BxMxGxK = match_cache
    match_codes = jnp.roll(codes_BxGxM, context_len % window, axis=2)
    match_v = kv_cache.to_ring(v_BxMxGxK, context_len)
  return PerceiverCache(
    kv_cache.to_ring(cross_k, context_len),
    kv_cache.to_ring(cross_v, context_len),
    tuple(heads_major(k) for k, _ in latent_kv),
    tuple(heads_major(v) for _, v in latent_kv),
    jnp.asarray(context_len - window, jnp.int32),
    match_codes,
    match_v,
    recent_BxR.astype(jnp.int32),
  )


def match_keys_usable(context_len, batch: int, window: int, ngrams: tuple[int, ...]) -> jax.Array:
  """[B, G, M] whether each ring slot's key may match for each head's n-gram length k: its
  sequence index s has its n-gram [s-k, s-1] inside the window of the last M bytes
  (s - k >= max(context_len - M, 0)), as in the uncached window pass."""
  index_BxM = kv_cache.ring_indices(context_len, batch, window)
  start = jnp.maximum(context_len - window, 0)
  return index_BxM[:, None, :] - jnp.asarray(ngrams)[None, :, None] >= start
