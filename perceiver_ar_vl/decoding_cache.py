"""Decoding caches for sampling: what is kept between steps, and the steps that fill and
extend it (see `sampling` for the paths and the latent schedule).

  * `PerceiverCache`: keys/values of the cross-attend (a ring buffer over the window) and of
    every latent layer (the latents since the last reset), heads-major [B, H, T, K];
  * `TransformerCache`: a plain KV cache of every layer over the window (ring buffers).
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
