"""Ring buffers of keys/values over a window: what the models' decoding caches are made of.

A cache over a window of M positions holds, in slot s, the keys/values of the latest
sequence index i = s (mod M) before the current byte, so a new byte overwrites one slot
instead of shifting the whole buffer. Caches are stored heads-major, [B, H, T, K], the
layout the attention's dot products read, so a decoding step transposes no cache; the
blocks take [B, T, H, K] (`seq_major`, which XLA folds into the dots). Sequence indices
below 0 are left padding (no byte yet) and are masked out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from perceiver_ar_vl.layers.masks import AttentionMask, causal_mask


def window_indices(context_len, batch: int, window: int) -> jax.Array:
  """[B, window] sequence index of each slot of the window that ends at `context_len` bytes
  (slot j holds index context_len - window + j); negative where there is no byte yet."""
  return jnp.broadcast_to(context_len - window + jnp.arange(window), (batch, window))


def ring_indices(context_len, batch: int, window: int) -> jax.Array:
  """[B, window] sequence index held by each slot of a ring buffer (slot = index mod window)
  once `context_len` bytes are in; negative where there is no byte yet."""
  last = context_len - 1
  return jnp.broadcast_to(last - (last - jnp.arange(window)) % window, (batch, window))


def to_ring(x_BxMxHxK: jax.Array, context_len) -> jax.Array:
  """Keys/values of a window pass (slot w = window position w) as a heads-major ring buffer
  [B, H, M, K] with slot = sequence index mod M."""
  window = x_BxMxHxK.shape[1]
  return jnp.roll(jnp.swapaxes(x_BxMxHxK, 1, 2), context_len % window, axis=2)


def ring_write(ring_BxHxMxK: jax.Array, new_Bx1xHxK: jax.Array, context_len) -> jax.Array:
  """Writes the keys/values of sequence index context_len - 1 into its ring slot."""
  slot = (context_len - 1) % ring_BxHxMxK.shape[2]
  return write_slot(ring_BxHxMxK, new_Bx1xHxK, slot)


def write_slot(cache_BxHxTxK: jax.Array, new_Bx1xHxK: jax.Array, slot) -> jax.Array:
  """Writes one position's keys/values [B, 1, H, K] into slot `slot` of a heads-major cache."""
  new_BxHx1xK = jnp.swapaxes(new_Bx1xHxK, 1, 2).astype(cache_BxHxTxK.dtype)
  return jax.lax.dynamic_update_slice_in_dim(cache_BxHxTxK, new_BxHx1xK, slot, axis=2)


def ring_mask(pos_Bx1: jax.Array, context_len, origin, batch: int, window: int) -> AttentionMask:
  """The mask of one query (at rotary position `pos_Bx1`) over a ring buffer of the window;
  `origin` is the sequence index that rotary treats as position 0."""
  index_BxM = ring_indices(context_len, batch, window)
  return causal_mask(pos_Bx1, index_BxM - origin, index_BxM >= 0)


def seq_major(x_BxHxTxK: jax.Array) -> jax.Array:
  """[B, T, H, K], the layout the blocks take (XLA folds it into the dots: no copy)."""
  return jnp.swapaxes(x_BxHxTxK, 1, 2)
