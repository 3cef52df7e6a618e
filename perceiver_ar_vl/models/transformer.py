"""The decoder-only Transformer baseline, built from the same blocks as Perceiver AR, and its
decoding cache (a plain KV cache of every layer over the window, ring buffers)."""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from perceiver_ar_vl.layers import kv_cache
from perceiver_ar_vl.layers.masks import causal_mask
from perceiver_ar_vl.models.base import AttentionShape, LanguageModel


class TransformerCache(NamedTuple):
  """Cached keys/values of the Transformer: per layer [B, H, M, K], a ring buffer over the
  window (`layers.kv_cache`).

  origin: int32 scalar, the sequence index that rotary treats as position 0.
  """

  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  origin: jax.Array


class Transformer(LanguageModel):
  """Decoder-only baseline: `num_layers` causal self-attention blocks over all M positions.

  Same blocks, width, depth, heads and MLP as `PerceiverAR`, so comparisons are fair; it is
  Perceiver AR's layout with every position a latent in every layer (cost O(L*M^2)).
  """

  scores_every_position = True

  def setup(self):
    self.setup_shared()
    self.blocks = [self.make_block(f'layer_{i}') for i in range(self.num_layers)]

  def __call__(
    self,
    tokens_BxM: jax.Array,
    input_mask: jax.Array | None = None,
    deterministic: bool = True,
    return_keys_values: bool = False,
  ):
    """Logits [batch, M, vocab], one per window position.

    With `return_keys_values`, returns (logits, keys_values): one (k, v) pair [B, M, H, K]
    per layer (what a decoding cache keeps).
    """
    valid_BxM = self.check_window(tokens_BxM, input_mask)
    positions_1xM = jnp.arange(tokens_BxM.shape[1])[None]  # the same for every example
    x_BxMxD = self.embed_tokens(tokens_BxM, positions_1xM)
    mask = causal_mask(positions_1xM, positions_1xM, valid_BxM, aligned=True)
    keys_values = []
    for block in self.blocks:
      keys_values.append(block.keys_values(x_BxMxD, positions_1xM))
      x_BxMxD = block.attend(x_BxMxD, positions_1xM, *keys_values[-1], mask, deterministic)
    logits = self.head_logits(x_BxMxD)
    return (logits, keys_values) if return_keys_values else logits

  def window_logits(self, tokens_BxM, num_latents, bucket, input_mask=None, deterministic=True):
    del num_latents  # every position is a query
    logits_BxMxV = self(tokens_BxM, input_mask, deterministic)
    return logits_BxMxV[:, tokens_BxM.shape[1] - bucket :]

  def prefill_cache(self, window_BxM, context_len, num_latents: int, capacity: int):
    """Full pass over the window; returns (logits [B, vocab] of the last position, cache)."""
    del num_latents, capacity
    batch, window = window_BxM.shape
    valid_BxM = kv_cache.window_indices(context_len, batch, window) >= 0
    logits_BxMxV, keys_values = self(window_BxM, input_mask=valid_BxM, return_keys_values=True)
    cache = TransformerCache(
      tuple(kv_cache.to_ring(k, context_len) for k, _ in keys_values),
      tuple(kv_cache.to_ring(v, context_len) for _, v in keys_values),
      jnp.asarray(context_len - window, jnp.int32),
    )
    return logits_BxMxV[:, -1], cache

  def extend_cache(self, cache: TransformerCache, token_B, context_len, num_latents):
    """Adds the byte at sequence index context_len - 1: one query through every layer."""
    del num_latents
    batch, _, window, _ = cache.k[0].shape
    pos_Bx1 = jnp.full((batch, 1), context_len - 1 - cache.origin)
    x_Bx1xD = self.embed_tokens(token_B[:, None], pos_Bx1)
    mask_Bx1xM = kv_cache.ring_mask(pos_Bx1, context_len, cache.origin, batch, window)
    ks, vs = [], []
    for block, k_cache, v_cache in zip(self.blocks, cache.k, cache.v, strict=True):
      k_Bx1xHxK, v_Bx1xHxK = block.keys_values(x_Bx1xD, pos_Bx1)
      k_cache = kv_cache.ring_write(k_cache, k_Bx1xHxK, context_len)
      v_cache = kv_cache.ring_write(v_cache, v_Bx1xHxK, context_len)
      x_Bx1xD = block.attend(
        x_Bx1xD, pos_Bx1, kv_cache.seq_major(k_cache), kv_cache.seq_major(v_cache), mask_Bx1xM
      )
      ks.append(k_cache)
      vs.append(v_cache)
    return self.head_logits(x_Bx1xD[:, 0]), TransformerCache(tuple(ks), tuple(vs), cache.origin)

  @nn.nowrap
  def needs_prefill(self, cache, step, context_len, latent_reset):
    del cache, context_len, latent_reset  # one full pass at the first step
    return jnp.asarray(step) == 0

  @nn.nowrap
  def attention_shapes(self, bucket: int) -> tuple[AttentionShape, ...]:
    del bucket  # every position is a query in every layer
    m = self.max_context
    return (AttentionShape(m, m, m),) * self.num_layers
