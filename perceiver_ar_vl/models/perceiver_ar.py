"""Perceiver AR with a variable number of latents, and its decoding cache.

Perceiver AR (Hawthorne et al. 2022): the LAST N positions of the window are latents. A
cross-attend layer lets them attend to all M positions (causally), then L-1 causal
self-attention layers run over the latents only. Cost O(N*M + L*N^2) instead of O(L*M^2).

Static buckets: a call runs at bucket B >= N. Slot j of the B latent slots is window position
M-B+j; the last N slots are active, the first B-N are inactive padding that is masked out as
keys in every latent layer and carries no loss. N may be traced; B is static.

Decoding cache (`PerceiverCache`): the keys/values of the cross-attend over the window (a ring
buffer) and of every latent layer (the latents since the last reset). A new byte adds one
cross-attend key and sends one query, the new latent, through the cross-attend and the
latent stack; the sampler's latent schedule (`sampling`) refills it with one full pass at
n0 = N/2 latents when it would hold more than N, as the original does.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from perceiver_ar_vl.layers import kv_cache
from perceiver_ar_vl.layers.masks import causal_mask
from perceiver_ar_vl.models.base import AttentionShape, LanguageModel


def check_latents(num_latents, bucket: int | None, context: int) -> int:
  """Validates N and B against the window length; returns the static bucket B."""
  concrete_n = None
  if isinstance(num_latents, (int, np.integer)):
    concrete_n = int(num_latents)
  if bucket is None:
    if concrete_n is None:
      raise ValueError(
        'num_latents is traced, so its bucket must be given: pass a static bucket=B >= num_latents.'
      )
    bucket = concrete_n
  bucket = int(bucket)
  if bucket > context:
    raise ValueError(
      f'bucket={bucket} exceeds the window of {context} tokens; use a bucket '
      f'<= {context} (or a longer window).'
    )
  if concrete_n is not None:
    if concrete_n < 1:
      raise ValueError(f'num_latents must be >= 1, got {concrete_n}.')
    if concrete_n > bucket:
      raise ValueError(
        f'num_latents={concrete_n} does not fit in bucket={bucket}; use a bucket >= {concrete_n}.'
      )
  return bucket


class PerceiverCache(NamedTuple):
  """Cached keys/values of Perceiver AR, heads-major. H heads, K head dim, N the capacity.

  cross_k, cross_v: [B, H, M, K] cross-attend keys/values of the window, a ring buffer
    (`layers.kv_cache`): slot s holds sequence index i = s (mod M).
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


class PerceiverAR(LanguageModel):
  """Perceiver AR; `num_latents` may change per call (see the module docstring).

  Extra fields, both active only while training (deterministic=False):
    `cross_attend_dropout`: the per-example probability of dropping each prefix key (a
      position that is not an active latent) from the cross-attend;
    `latent_dropout`: the per-example probability of dropping each active latent as a key of
      the latent self-attention layers (the original's `latent_dropout_prob`); a latent always
      still sees itself, so no query is left without keys.
  """

  scores_every_position = False

  cross_attend_dropout: float = 0.0
  latent_dropout: float = 0.0
  latent_query_projection: bool = False  # the original's z_linear
  num_cross_attend_heads: int = 0  # 0 = num_heads
  cross_attend_mlp_dim: int = 0  # 0 = mlp_dim

  @classmethod
  def options_from_config(cls, model_config) -> dict:
    m = model_config
    return dict(
      cross_attend_dropout=m.cross_attend_dropout,
      latent_dropout=m.latent_dropout,
      latent_query_projection=m.latent_query_projection,
      num_cross_attend_heads=m.num_cross_attend_heads,
      cross_attend_mlp_dim=m.cross_attend_mlp_dim,
    )

  def setup(self):
    self.setup_shared()
    self.cross_attend = self.make_block(
      'cross_attend',
      cross=True,
      num_heads=self.num_cross_attend_heads or self.num_heads,
      mlp_dim=self.cross_attend_mlp_dim or self.mlp_dim,
    )
    if self.latent_query_projection:  # Linear with bias; its output is also the residual
      self.z_linear = nn.Dense(self.d_model, dtype=self.dtype, param_dtype=jnp.float32)
    self.latent_blocks = [self.make_block(f'latent_{i}') for i in range(self.num_layers - 1)]

  def __call__(
    self,
    tokens_BxM: jax.Array,
    num_latents,
    bucket: int | None = None,
    input_mask: jax.Array | None = None,
    deterministic: bool = True,
    return_keys_values: bool = False,
  ):
    """Logits [batch, bucket, vocab] for the last `bucket` positions; last N slots active.

    With `return_keys_values`, returns (logits, keys_values): one (k, v) pair per layer, the
    cross-attend's over all M positions [B, M, H, K] first, then each latent layer's over the
    B slots [B, B, H, K] (what a decoding cache keeps).
    """
    valid_BxM = self.check_window(tokens_BxM, input_mask)
    batch, context = tokens_BxM.shape
    bucket = check_latents(num_latents, bucket, context)
    positions_1xM = jnp.arange(context)[None]  # the same for every example
    x_BxMxD = self.embed_tokens(tokens_BxM, positions_1xM)

    # Cross-attend: the B latent slots attend to every window position.
    slot_positions_1xB = positions_1xM[:, context - bucket :]
    active_1xB = jnp.arange(bucket)[None, :] >= bucket - num_latents
    key_ok_BxM = valid_BxM
    if self.cross_attend_dropout > 0 and not deterministic:
      is_prefix_1xM = positions_1xM < context - num_latents
      drop_BxM = jax.random.bernoulli(
        self.make_rng('dropout'), self.cross_attend_dropout, (batch, context)
      )
      key_ok_BxM = key_ok_BxM & ~(is_prefix_1xM & drop_BxM)
    cross_mask = causal_mask(slot_positions_1xB, positions_1xM, key_ok_BxM, aligned=True)
    x_q_BxBxD = self.latent_queries(x_BxMxD[:, context - bucket :])
    if return_keys_values:
      keys_values = [self.cross_attend.keys_values(x_BxMxD, positions_1xM)]
      z_BxBxD = self.cross_attend.attend(
        x_q_BxBxD, slot_positions_1xB, *keys_values[0], cross_mask, deterministic
      )
    else:  # keys/values may be made inside a memory-efficient kernel: M can be long
      keys_values = [None]
      z_BxBxD = self.cross_attend.attend_to(
        x_q_BxBxD, slot_positions_1xB, x_BxMxD, positions_1xM, cross_mask, deterministic
      )

    # Latent self-attention: inactive slots and invalid positions are never keys.
    latent_ok_BxB = active_1xB & valid_BxM[:, context - bucket :]
    if self.latent_dropout > 0 and not deterministic:
      drop_BxB = jax.random.bernoulli(
        self.make_rng('dropout'), self.latent_dropout, (batch, bucket)
      )
      latent_ok_BxB = latent_ok_BxB & ~drop_BxB
    latent_mask = causal_mask(slot_positions_1xB, slot_positions_1xB, latent_ok_BxB, aligned=True)
    for block in self.latent_blocks:
      keys_values.append(block.keys_values(z_BxBxD, slot_positions_1xB))
      z_BxBxD = block.attend(
        z_BxBxD, slot_positions_1xB, *keys_values[-1], latent_mask, deterministic
      )
    logits = self.head_logits(z_BxBxD)
    return (logits, keys_values) if return_keys_values else logits

  def latent_queries(self, x_BxSxD: jax.Array) -> jax.Array:
    """The cross-attend's query stream of latent embeddings: the embeddings themselves, or
    with `latent_query_projection` their Linear projection (the original's z_linear)."""
    return self.z_linear(x_BxSxD) if self.latent_query_projection else x_BxSxD

  def window_logits(self, tokens_BxM, num_latents, bucket, input_mask=None, deterministic=True):
    return self(tokens_BxM, num_latents, bucket, input_mask, deterministic)

  def prefill_cache(self, window_BxM, context_len, num_latents: int, capacity: int):
    """Full pass at `num_latents` latents over the window; fills a `PerceiverCache` whose
    latent layers hold up to `capacity` latents. Rotary positions are 0..M-1 as in the
    uncached window; `origin` maps them back to sequence indices."""
    batch, window = window_BxM.shape
    valid_BxM = kv_cache.window_indices(context_len, batch, window) >= 0
    logits_BxNxV, keys_values = self(
      window_BxM, num_latents, input_mask=valid_BxM, return_keys_values=True
    )
    (cross_k, cross_v), *latent_kv = keys_values
    pad = ((0, 0), (0, 0), (0, capacity - num_latents), (0, 0))
    heads_major = lambda x: jnp.pad(jnp.swapaxes(x, 1, 2), pad)
    cache = PerceiverCache(
      kv_cache.to_ring(cross_k, context_len),
      kv_cache.to_ring(cross_v, context_len),
      tuple(heads_major(k) for k, _ in latent_kv),
      tuple(heads_major(v) for _, v in latent_kv),
      jnp.asarray(context_len - window, jnp.int32),
    )
    return logits_BxNxV[:, -1], cache

  def extend_cache(self, cache: PerceiverCache, token_B, context_len, num_latents):
    """Adds the byte at sequence index context_len - 1 as latent number `num_latents`: one
    query through the cross-attend (over the window's ring cache) and every latent layer
    (over the latents since the last reset)."""
    batch, _, window, _ = cache.cross_k.shape
    pos_Bx1 = jnp.full((batch, 1), context_len - 1 - cache.origin)
    x_Bx1xD = self.embed_tokens(token_B[:, None], pos_Bx1)
    k_Bx1xHxK, v_Bx1xHxK = self.cross_attend.keys_values(x_Bx1xD, pos_Bx1)
    cross_k = kv_cache.ring_write(cache.cross_k, k_Bx1xHxK, context_len)
    cross_v = kv_cache.ring_write(cache.cross_v, v_Bx1xHxK, context_len)
    mask_Bx1xM = kv_cache.ring_mask(pos_Bx1, context_len, cache.origin, batch, window)
    z_Bx1xD = self.cross_attend.attend(
      self.latent_queries(x_Bx1xD),
      pos_Bx1,
      kv_cache.seq_major(cross_k),
      kv_cache.seq_major(cross_v),
      mask_Bx1xM,
    )

    latent_k, latent_v = [], []
    slot = num_latents - 1  # the new latent's slot; slots after it are unused
    capacity = cache.latent_k[0].shape[2] if cache.latent_k else 0
    latent_pos_BxN = jnp.broadcast_to(pos_Bx1 - slot + jnp.arange(capacity), (batch, capacity))
    latent_ok_BxN = latent_pos_BxN + cache.origin >= 0  # a real byte, not left padding
    mask_Bx1xN = causal_mask(pos_Bx1, latent_pos_BxN, latent_ok_BxN)
    for block, k_cache, v_cache in zip(
      self.latent_blocks, cache.latent_k, cache.latent_v, strict=True
    ):
      k_Bx1xHxK, v_Bx1xHxK = block.keys_values(z_Bx1xD, pos_Bx1)
      k_cache = kv_cache.write_slot(k_cache, k_Bx1xHxK, slot)
      v_cache = kv_cache.write_slot(v_cache, v_Bx1xHxK, slot)
      z_Bx1xD = block.attend(
        z_Bx1xD, pos_Bx1, kv_cache.seq_major(k_cache), kv_cache.seq_major(v_cache), mask_Bx1xN
      )
      latent_k.append(k_cache)
      latent_v.append(v_cache)
    cache = PerceiverCache(cross_k, cross_v, tuple(latent_k), tuple(latent_v), cache.origin)
    return self.head_logits(z_Bx1xD[:, 0]), cache

  @nn.nowrap
  def needs_prefill(self, cache, step, context_len, latent_reset):
    del cache, step, context_len  # the latent schedule decides: back at n0 = a full pass
    return jnp.asarray(latent_reset)

  @nn.nowrap
  def attention_shapes(self, bucket: int) -> tuple[AttentionShape, ...]:
    context = self.max_context
    if not 1 <= bucket <= context:
      raise ValueError(f'bucket must be in [1, {context}] for Perceiver AR, got {bucket}.')
    cross = AttentionShape(bucket, context, context, self.cross_attend_mlp_dim)
    return (cross,) + (AttentionShape(bucket, bucket, bucket),) * (self.num_layers - 1)
