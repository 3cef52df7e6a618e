"""Decoding caches for sampling: what is kept between steps, and the steps that fill and
extend it (see `sampling` for the paths and the latent schedule).

  * `PerceiverCache`: keys/values of the cross-attend (a ring buffer over the window) and of
    every latent layer (the latents since the last reset), heads-major [B, H, T, K];
  * `TransformerCache`: a plain KV cache of every layer over the window (ring buffers);
  * `ECPCache`: per layer the keys/values of ECP's previous and current segment (a ring
    buffer of 2m), over a segment-aligned window (`ecp_origin`; see the ECP section).
`*_prefill` runs one full pass that fills a cache; `*_extend` adds one byte (one query through
every layer). Window slots hold sequence indices `context_len - M + j`: negative ones are left
padding, masked out.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from perceiver_ar_vl import models
from perceiver_ar_vl.attention import dot_product_attention


class PerceiverCache(NamedTuple):
  """Cached keys/values of Perceiver AR. H heads, K head dim, N = the sampler's num_latents.

  Stored heads-major, [B, H, T, K]: the layout the attention's dot products read, so a step
  transposes no cache.

  cross_k, cross_v: [B, H, M, K] cross-attend keys/values of the window, a ring buffer: slot
    s holds sequence index i = s (mod M), the latest such i before the current byte (a new
    byte overwrites the oldest slot instead of shifting the whole buffer).
  latent_k, latent_v: per latent layer [B, H, N, K]; slot i holds the i-th latent since the
    last reset (slots at or past the current latent count are unused and masked out).
  origin: int32 scalar, the sequence index that rotary treats as position 0 (the first
    window position at the last reset), so cached positions stay below M + N.
  """

  cross_k: jax.Array
  cross_v: jax.Array
  latent_k: tuple[jax.Array, ...]
  latent_v: tuple[jax.Array, ...]
  origin: jax.Array


class TransformerCache(NamedTuple):
  """Cached keys/values of the Transformer: per layer [B, H, M, K], a ring buffer over the
  window as `PerceiverCache.cross_k`.

  origin: int32 scalar, the sequence index that rotary treats as position 0.
  """

  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  origin: jax.Array


# ------------------------------------------------------------------ windows and masks


def left_padded_window(tokens_BxT: np.ndarray, window: int) -> np.ndarray:
  """The last `window` tokens [B, window], left-padded with 0 when there are fewer."""
  tail_BxS = tokens_BxT[:, max(0, tokens_BxT.shape[1] - window) :]
  out_BxW = np.zeros((tokens_BxT.shape[0], window), np.int32)
  out_BxW[:, window - tail_BxS.shape[1] :] = tail_BxS
  return out_BxW


def shift_in(buffer_BxTx_: jax.Array, new_Bx1x_: jax.Array) -> jax.Array:
  """Drops the oldest slot of a [B, T, ...] buffer and appends `new` [B, 1, ...] at the end."""
  return jnp.concatenate([buffer_BxTx_[:, 1:], new_Bx1x_.astype(buffer_BxTx_.dtype)], axis=1)


def window_indices(context_len, batch: int, window: int) -> jax.Array:
  """[B, window] sequence index of each window slot; negative where there is no byte yet."""
  return jnp.broadcast_to(context_len - window + jnp.arange(window), (batch, window))


def _ring_indices(context_len, batch: int, window: int) -> jax.Array:
  """[B, window] sequence index held by each slot of a ring buffer (slot = index mod window)
  once `context_len` bytes are in; negative where there is no byte yet."""
  last = context_len - 1
  return jnp.broadcast_to(last - (last - jnp.arange(window)) % window, (batch, window))


def _to_ring(x_BxMxHxK: jax.Array, context_len) -> jax.Array:
  """Keys/values of a window pass (slot w = window position w) as a heads-major ring buffer
  [B, H, M, K] with slot = sequence index mod M."""
  window = x_BxMxHxK.shape[1]
  return jnp.roll(jnp.swapaxes(x_BxMxHxK, 1, 2), context_len % window, axis=2)


def _ring_write(ring_BxHxMxK: jax.Array, new_Bx1xHxK: jax.Array, context_len) -> jax.Array:
  """Writes the keys/values of sequence index context_len - 1 into its ring slot."""
  slot = (context_len - 1) % ring_BxHxMxK.shape[2]
  new_BxHx1xK = jnp.swapaxes(new_Bx1xHxK, 1, 2).astype(ring_BxHxMxK.dtype)
  return jax.lax.dynamic_update_slice_in_dim(ring_BxHxMxK, new_BxHx1xK, slot, axis=2)


def _ring_mask(pos_Bx1: jax.Array, context_len, origin, batch: int, window: int):
  """The mask of one query (at rotary position `pos_Bx1`) over a ring buffer of the window."""
  index_BxM = _ring_indices(context_len, batch, window)
  return models.causal_mask(pos_Bx1, index_BxM - origin, index_BxM >= 0)


def _seq_major(x_BxHxTxK: jax.Array) -> jax.Array:
  """[B, T, H, K], the layout the blocks take (XLA folds it into the dots: no copy)."""
  return jnp.swapaxes(x_BxHxTxK, 1, 2)


# ------------------------------------------------------------------ Perceiver AR cache


def perceiver_prefill(model, variables, window_BxM, context_len, num_latents: int, capacity: int):
  """Full pass at `num_latents` latents over the window; fills a `PerceiverCache`.

  Returns (logits [B, vocab] of the last position, cache). Rotary positions are 0..M-1 as in
  the uncached window; `origin` maps them back to sequence indices.
  """
  batch, window = window_BxM.shape
  valid_BxM = window_indices(context_len, batch, window) >= 0
  logits_BxNxV, keys_values = model.apply(
    variables, window_BxM, num_latents, input_mask=valid_BxM, return_keys_values=True
  )
  (cross_k, cross_v), *latent_kv = keys_values
  pad = ((0, 0), (0, 0), (0, capacity - num_latents), (0, 0))
  heads_major = lambda x: jnp.pad(jnp.swapaxes(x, 1, 2), pad)
  cache = PerceiverCache(
    _to_ring(cross_k, context_len),
    _to_ring(cross_v, context_len),
    tuple(heads_major(k) for k, _ in latent_kv),
    tuple(heads_major(v) for _, v in latent_kv),
    jnp.asarray(context_len - window, jnp.int32),
  )
  return logits_BxNxV[:, -1], cache


def perceiver_extend(module, cache: PerceiverCache, token_B, context_len, num_latents):
  """Adds the byte at sequence index context_len - 1 as latent number `num_latents`.

  One query through the cross-attend (over the window's ring cache) and every latent layer
  (over the latents since the last reset). Returns (logits [B, vocab], updated cache).
  """
  batch, _, window, _ = cache.cross_k.shape
  pos_Bx1 = jnp.full((batch, 1), context_len - 1 - cache.origin)
  x_Bx1xD = module.embed_tokens(token_B[:, None], pos_Bx1)
  k_Bx1xHxK, v_Bx1xHxK = module.cross_attend.keys_values(x_Bx1xD, pos_Bx1)
  cross_k = _ring_write(cache.cross_k, k_Bx1xHxK, context_len)
  cross_v = _ring_write(cache.cross_v, v_Bx1xHxK, context_len)
  mask_Bx1xM = _ring_mask(pos_Bx1, context_len, cache.origin, batch, window)
  z_Bx1xD = module.cross_attend.attend(
    x_Bx1xD, pos_Bx1, _seq_major(cross_k), _seq_major(cross_v), mask_Bx1xM
  )

  latent_k, latent_v = [], []
  slot = num_latents - 1  # the new latent's slot; slots after it are unused
  capacity = cache.latent_k[0].shape[2] if cache.latent_k else 0
  latent_pos_BxN = jnp.broadcast_to(pos_Bx1 - slot + jnp.arange(capacity), (batch, capacity))
  latent_ok_BxN = latent_pos_BxN + cache.origin >= 0  # a real byte, not left padding
  mask_Bx1xN = models.causal_mask(pos_Bx1, latent_pos_BxN, latent_ok_BxN)
  for block, k_cache, v_cache in zip(
    module.latent_blocks, cache.latent_k, cache.latent_v, strict=True
  ):
    k_Bx1xHxK, v_Bx1xHxK = block.keys_values(z_Bx1xD, pos_Bx1)
    k_cache = jax.lax.dynamic_update_slice_in_dim(
      k_cache, jnp.swapaxes(k_Bx1xHxK, 1, 2).astype(k_cache.dtype), slot, axis=2
    )
    v_cache = jax.lax.dynamic_update_slice_in_dim(
      v_cache, jnp.swapaxes(v_Bx1xHxK, 1, 2).astype(v_cache.dtype), slot, axis=2
    )
    z_Bx1xD = block.attend(z_Bx1xD, pos_Bx1, _seq_major(k_cache), _seq_major(v_cache), mask_Bx1xN)
    latent_k.append(k_cache)
    latent_v.append(v_cache)
  cache = PerceiverCache(cross_k, cross_v, tuple(latent_k), tuple(latent_v), cache.origin)
  return module.logits(z_Bx1xD[:, 0]), cache


# ------------------------------------------------------------------ Transformer cache


def transformer_prefill(model, variables, window_BxM, context_len):
  """Full pass over the window; returns (logits [B, vocab] of the last position, cache)."""
  batch, window = window_BxM.shape
  valid_BxM = window_indices(context_len, batch, window) >= 0
  logits_BxMxV, keys_values = model.apply(
    variables, window_BxM, input_mask=valid_BxM, return_keys_values=True
  )
  cache = TransformerCache(
    tuple(_to_ring(k, context_len) for k, _ in keys_values),
    tuple(_to_ring(v, context_len) for _, v in keys_values),
    jnp.asarray(context_len - window, jnp.int32),
  )
  return logits_BxMxV[:, -1], cache


def transformer_extend(module, cache: TransformerCache, token_B, context_len):
  """Adds the byte at sequence index context_len - 1: one query through every layer."""
  batch, _, window, _ = cache.k[0].shape
  pos_Bx1 = jnp.full((batch, 1), context_len - 1 - cache.origin)
  x_Bx1xD = module.embed_tokens(token_B[:, None], pos_Bx1)
  mask_Bx1xM = _ring_mask(pos_Bx1, context_len, cache.origin, batch, window)
  ks, vs = [], []
  for block, k_cache, v_cache in zip(module.blocks, cache.k, cache.v, strict=True):
    k_Bx1xHxK, v_Bx1xHxK = block.keys_values(x_Bx1xD, pos_Bx1)
    k_cache = _ring_write(k_cache, k_Bx1xHxK, context_len)
    v_cache = _ring_write(v_cache, v_Bx1xHxK, context_len)
    x_Bx1xD = block.attend(x_Bx1xD, pos_Bx1, _seq_major(k_cache), _seq_major(v_cache), mask_Bx1xM)
    ks.append(k_cache)
    vs.append(v_cache)
  return module.logits(x_Bx1xD[:, 0]), TransformerCache(tuple(ks), tuple(vs), cache.origin)


# ------------------------------------------------------------------ ECP cache
#
# ECP's segments are fixed in window positions (0, m, 2m, ...), so a cache is exact only if
# the window does not slide by one byte a step. Both ECP paths (cached and uncached) therefore
# run on a segment-aligned window [origin, origin + M) of sequence indices that stays put while
# it fills, and jumps by whole segments when a byte would fall past its end (`ecp_origin`):
# the byte at window position w = index - origin gets logits of the model's forward pass over
# that window, exactly, for every option and both position encodings. Within a window a
# query of segment s sees only segments s-1 and s, so the cache holds 2m positions per layer.


class ECPCache(NamedTuple):
  """Cached keys/values of ECP: per layer [B, H, 2m, K] (m = segment_length), heads-major.

  k, v: a ring buffer over the previous and the current segment: slot j holds sequence index
    i = j (mod 2m), the latest such i before the current byte. As window segments start at
    multiples of m, the two segments fill the two halves; when the current segment is full,
    the next byte's writes overwrite the segment before the previous one, so the current
    segment becomes the previous one without a copy. Slots of the current segment past the
    current byte still hold older keys and are masked out. With `ecp_shared_kv`, v is k.
  origin: int32 scalar, the sequence index at window position 0 (see `ecp_origin`): rotary
    and the absolute table use window positions index - origin, and window segment 0 (no
    previous segment; `ecp_segment0_out`) starts there.
  """

  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  origin: jax.Array


def ecp_kept_segments(model) -> int:
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
  return min(model.max_context // model.segment_length - 1, model.num_layers)


def ecp_origin(model, context_len):
  """The window start (sequence index, a multiple of m) for the byte at context_len - 1.

  0 while the sequence fits the window (prompt and output from window position 0: no left
  padding); then it advances in strides of (S - kept) segments (`ecp_kept_segments`), so a
  byte past the window's end starts a window whose last segment is the byte's own. Works on
  Python and traced ints.
  """
  window, m = model.max_context, model.segment_length
  stride = (window // m - ecp_kept_segments(model)) * m
  last = jnp.asarray(context_len, jnp.int32) - 1
  return jnp.where(last < window, 0, ((last - window) // stride + 1) * stride).astype(jnp.int32)


def ecp_window(window_BxM: jax.Array, context_len, origin) -> jax.Array:
  """The segment-aligned window [B, M]: sequence index origin + w at position w, zeros after
  the last byte (never seen: attention is causal), from the last M bytes `window_BxM`
  (right-aligned, as the sampler's loop keeps them)."""
  window = window_BxM.shape[1]
  filled = context_len - origin  # bytes in the aligned window, 1..M
  aligned_BxM = jnp.roll(window_BxM, filled - window, axis=1)
  return jnp.where(jnp.arange(window) < filled, aligned_BxM, 0)


def ecp_window_logits(model, variables, window_BxM, context_len, return_keys_values=False):
  """The forward pass over the aligned window: (logits [B, vocab] of the last byte, origin),
  plus the per-layer keys/values [B, M, H, K] with `return_keys_values`. The uncached path."""
  origin = ecp_origin(model, context_len)
  out = model.apply(
    variables, ecp_window(window_BxM, context_len, origin), return_keys_values=return_keys_values
  )
  logits_BxMxV, keys_values = out if return_keys_values else (out, None)
  logits_BxV = jax.lax.dynamic_index_in_dim(logits_BxMxV, context_len - 1 - origin, 1, False)
  return (logits_BxV, origin, keys_values) if return_keys_values else (logits_BxV, origin)


def ecp_prefill(model, variables, window_BxM, context_len):
  """Full pass over the aligned window; returns (logits [B, vocab] of the last byte, cache).

  Each ring slot takes the keys/values of its sequence index's window position (slots whose
  index lies before the window are filled from position 0 and masked out).
  """
  logits_BxV, origin, keys_values = ecp_window_logits(
    model, variables, window_BxM, context_len, return_keys_values=True
  )
  window = window_BxM.shape[1]
  ring = 2 * model.segment_length
  position_T = jnp.clip(_ring_indices(context_len, 1, ring)[0] - origin, 0, window - 1)
  to_ring = lambda x_BxMxHxK: jnp.swapaxes(jnp.take(x_BxMxHxK, position_T, axis=1), 1, 2)
  ks = tuple(to_ring(k) for k, _ in keys_values)
  vs = ks if model.ecp_shared_kv else tuple(to_ring(v) for _, v in keys_values)
  return logits_BxV, ECPCache(ks, vs, origin)


def ecp_extend(module, cache: ECPCache, token_B, context_len):
  """Adds the byte at sequence index context_len - 1: one query through every layer, over the
  keys/values of its previous segment (none in window segment 0) and of its own up to itself.
  """
  batch, _, ring, _ = cache.k[0].shape
  m = module.segment_length
  last = context_len - 1
  pos_Bx1 = jnp.full((batch, 1), last - cache.origin)
  x_Bx1xD = module.embed_tokens(token_B[:, None], pos_Bx1)
  index_BxT = _ring_indices(context_len, batch, ring)
  first_usable = jnp.maximum(cache.origin, (last // m - 1) * m)  # the previous segment's start
  mask_Bx1xT = models.causal_mask(pos_Bx1, index_BxT - cache.origin, index_BxT >= first_usable)
  in_segment0 = last - cache.origin < m  # window segment 0: its own output projection
  ks, vs = [], []
  for block, k_cache, v_cache in zip(module.blocks, cache.k, cache.v, strict=True):
    k_Bx1xHxK, v_Bx1xHxK = block.keys_values(x_Bx1xD, pos_Bx1)
    k_cache = _ring_write(k_cache, k_Bx1xHxK, context_len)
    v_cache = k_cache if module.ecp_shared_kv else _ring_write(v_cache, v_Bx1xHxK, context_len)
    q_Bx1xHxK = block.attention.queries(block.ln_q(x_Bx1xD), pos_Bx1)
    out_Bx1xHxK = dot_product_attention(
      q_Bx1xHxK, _seq_major(k_cache), _seq_major(v_cache), mask_Bx1xT, module.attention_impl
    )
    h_Bx1xD = block.attention.out(out_Bx1xHxK)
    if module.ecp_segment0_out:
      h_Bx1xD = jnp.where(in_segment0, block.attention.out_segment0(out_Bx1xHxK), h_Bx1xD)
    x_Bx1xD = block.residual_and_mlp(x_Bx1xD, h_Bx1xD, True)
    ks.append(k_cache)
    vs.append(v_cache)
  return module.logits(x_Bx1xD[:, 0]), ECPCache(tuple(ks), tuple(vs), cache.origin)
