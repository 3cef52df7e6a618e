"""ECP's decoding cache and the segment-aligned window both ECP sampling paths run on.

ECP's segments are fixed in window positions (0, m, 2m, ...), so a cache is exact only if
the window does not slide by one byte a step. Both ECP paths (cached and uncached) therefore
run on a segment-aligned window [origin, origin + M) of sequence indices that stays put while
it fills, and jumps by whole segments when a byte would fall past its end (`window_origin`):
the byte at window position w = index - origin gets logits of the model's forward pass over
that window, exactly, for every option and both position encodings. Within a window a
query of segment s sees only segments s-1 and s, so the cache holds 2m positions per layer.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from perceiver_ar_vl.layers import kv_cache


class ECPCache(NamedTuple):
  """Cached keys/values of ECP: per layer [B, H, 2m, K] (m = segment_length), heads-major.

  k, v: a ring buffer over the previous and the current segment: slot j holds sequence index
    i = j (mod 2m), the latest such i before the current byte. As window segments start at
    multiples of m, the two segments fill the two halves; when the current segment is full,
    the next byte's writes overwrite the segment before the previous one, so the current
    segment becomes the previous one without a copy. Slots of the current segment past the
    current byte still hold older keys and are masked out. With `ecp_shared_kv`, v is k.
  origin: int32 scalar, the sequence index at window position 0 (see `window_origin`): rotary
    and the absolute table use window positions index - origin, and window segment 0 (no
    previous segment; `ecp_segment0_out`) starts there.
  """

  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  origin: jax.Array


def kept_segments(window: int, segment_length: int, num_layers: int) -> int:
  """Full segments a new window keeps behind the current byte's segment: min(S - 1, L).

  L = num_layers is ECP's receptive field in segments (a byte's logits depend on its own and
  the L previous segments), so a window that starts L segments back gives the new segment
  its full context; keeping more would only make resets more frequent (one every
  (S - kept) * m bytes). With rotary positions and separate keys/values the model is then
  translation-invariant over whole segments, and every step's logits equal those over the
  unbounded sequence: a jump of the window loses no context. (`ecp_shared_kv` makes values
  rotated keys, and the absolute table sees window positions: there the window start
  matters, and the logits are those of the aligned window.)
  """
  return min(window // segment_length - 1, num_layers)


def window_origin(window: int, segment_length: int, num_layers: int, context_len) -> jax.Array:
  """The window start (sequence index, a multiple of m) for the byte at context_len - 1.

  0 while the sequence fits the window (prompt and output from window position 0: no left
  padding); then it advances in strides of (S - kept) segments (`kept_segments`), so a byte
  past the window's end starts a window whose last segment is the byte's own. Works on
  Python and traced ints.
  """
  m = segment_length
  stride = (window // m - kept_segments(window, m, num_layers)) * m
  last = jnp.asarray(context_len, jnp.int32) - 1
  return jnp.where(last < window, 0, ((last - window) // stride + 1) * stride).astype(jnp.int32)


def aligned_window(window_BxM: jax.Array, context_len, origin) -> jax.Array:
  """The segment-aligned window [B, M]: sequence index origin + w at position w, zeros after
  the last byte (never seen: attention is causal), from the last M bytes `window_BxM`
  (right-aligned, as the sampler's loop keeps them)."""
  window = window_BxM.shape[1]
  filled = context_len - origin  # bytes in the aligned window, 1..M
  aligned_BxM = jnp.roll(window_BxM, filled - window, axis=1)
  return jnp.where(jnp.arange(window) < filled, aligned_BxM, 0)


def fill(keys_values, context_len, origin, segment_length: int, shared_kv: bool) -> ECPCache:
  """The cache after a full pass over the aligned window: each ring slot takes the keys/values
  [B, M, H, K] of its sequence index's window position (slots whose index lies before the
  window are filled from position 0 and masked out)."""
  window = keys_values[0][0].shape[1]
  ring = 2 * segment_length
  position_T = jnp.clip(kv_cache.ring_indices(context_len, 1, ring)[0] - origin, 0, window - 1)
  to_ring = lambda x_BxMxHxK: jnp.swapaxes(jnp.take(x_BxMxHxK, position_T, axis=1), 1, 2)
  ks = tuple(to_ring(k) for k, _ in keys_values)
  vs = ks if shared_kv else tuple(to_ring(v) for _, v in keys_values)
  return ECPCache(ks, vs, origin)


def ring_keys(cache: ECPCache, context_len, segment_length: int) -> tuple[jax.Array, jax.Array]:
  """The ring slots' window positions [B, 2m] and which of them the byte at context_len - 1
  may attend [B, 2m]: its previous segment (none in window segment 0) and its own."""
  batch, _, ring, _ = cache.k[0].shape
  last = context_len - 1
  index_BxT = kv_cache.ring_indices(context_len, batch, ring)
  first_usable = jnp.maximum(cache.origin, (last // segment_length - 1) * segment_length)
  return index_BxT - cache.origin, index_BxT >= first_usable
