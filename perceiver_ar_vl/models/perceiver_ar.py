"""Perceiver AR with a variable number of latents, and its decoding cache.

Perceiver AR (Hawthorne et al. 2022): the LAST N positions of the window are latents. A
cross-attend layer lets them attend to all M positions (causally), then L-1 causal
self-attention layers run over the latents only. Cost O(N*M + L*N^2) instead of O(L*M^2).

Static buckets: a call runs at bucket B >= N. Slot j of the B latent slots is window position
M-B+j; the last N slots are active, the first B-N are inactive padding that is masked out as
keys in every latent layer and carries no loss. N may be traced; B is static.

Decoding cache (`perceiver_ar_cache.PerceiverCache`): the keys/values of the cross-attend
over the window (a ring buffer) and of every latent layer (the latents since the last
reset). A new byte adds one cross-attend key and sends one query, the new latent, through
the cross-attend and the latent stack; the sampler's latent schedule (`sampling`) refills it
with one full pass at n0 = N/2 latents when it would hold more than N, as the original does.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from perceiver_ar_vl import latents
from perceiver_ar_vl.layers import kv_cache
from perceiver_ar_vl.layers.kernels import resolve_impl
from perceiver_ar_vl.layers.masks import causal_mask
from perceiver_ar_vl.layers.match import NgramMatch
from perceiver_ar_vl.models import perceiver_ar_cache
from perceiver_ar_vl.models.base import AttentionShape, LanguageModel
from perceiver_ar_vl.models.perceiver_ar_cache import PerceiverCache


class PerceiverAR(LanguageModel):
  """Perceiver AR; `num_latents` may change per call (see the module docstring).

  Extra fields, both active only while training (deterministic=False):
    `cross_attend_dropout`: the per-example probability of dropping each prefix key (a
      position that is not an active latent) from the cross-attend;
    `latent_dropout`: the per-example probability of dropping each active latent as a key of
      the latent self-attention layers (the original's `latent_dropout_prob`); a latent always
      still sees itself, so no query is left without keys.

  Long-context options of the cross-attend (off by default: the original's model):
    `match_ngrams`: one n-gram match head per length k (`layers.match`): latents find earlier
      occurrences of their last k bytes by content and read the byte that followed;
    `cross_attend_rotary_fraction`: its rotary share (-1 = `rotary_fraction`; 0 = no
      positions in the cross-attend, so no fixed-offset shortcut that fails at other distances);
    `cross_attend_log_scale`: Scalable-Softmax on its heads (`layers.attention`).
  """

  scores_every_position = False

  cross_attend_dropout: float = 0.0
  latent_dropout: float = 0.0
  latent_query_projection: bool = False  # the original's z_linear
  num_cross_attend_heads: int = 0  # 0 = num_heads
  cross_attend_mlp_dim: int = 0  # 0 = mlp_dim
  match_ngrams: tuple[int, ...] = ()
  match_strength_init: float = 2.0
  cross_attend_rotary_fraction: float = -1.0  # -1 = rotary_fraction
  cross_attend_log_scale: bool = False

  @nn.nowrap
  def has_long_context_options(self) -> bool:
    """Whether any option the original model lacks is on (match heads, the cross-attend's
    own rotary share, Scalable-Softmax)."""
    return bool(
      self.match_ngrams or self.cross_attend_rotary_fraction >= 0 or self.cross_attend_log_scale
    )

  def setup(self):
    self.setup_shared()
    cross_heads = self.num_cross_attend_heads or self.num_heads
    rotary_fraction = self.rotary_fraction
    if self.cross_attend_rotary_fraction >= 0:
      rotary_fraction = self.cross_attend_rotary_fraction
    self.cross_attend = self.make_block(
      'cross_attend',
      cross=True,
      num_heads=cross_heads,
      mlp_dim=self.cross_attend_mlp_dim or self.mlp_dim,
      rotary_fraction=rotary_fraction,
      use_rotary=self.position_encoding == 'rotary' and rotary_fraction > 0,
      log_scale_base=self.max_context if self.cross_attend_log_scale else 0,
    )
    if self.match_ngrams:
      if max(self.match_ngrams) >= self.max_context or min(self.match_ngrams) < 1:
        raise ValueError(f'model.match_ngrams={self.match_ngrams} must be in [1, max_context - 1].')
      self.match = NgramMatch(
        ngrams=self.match_ngrams,
        d_model=self.d_model,
        head_dim=self.d_model // cross_heads,
        strength_init=self.match_strength_init,
        dtype=self.dtype,
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

    With `return_keys_values`, returns (logits, keys_values, match_cache): one (k, v) pair
    per layer, the cross-attend's over all M positions [B, M, H, K] first, then each latent
    layer's over the B slots [B, B, H, K], and the match heads' (key codes [B, G, M], values
    [B, M, G, K]) or None (what a decoding cache keeps).
    """
    valid_BxM = self.check_window(tokens_BxM, input_mask)
    batch, context = tokens_BxM.shape
    bucket = latents.check_latents(num_latents, bucket, context)
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
    match_BxBxD = match_cache = None
    if self.match_ngrams:
      match_BxBxD, match_cache = self.match(
        tokens_BxM,
        valid_BxM,
        key_ok_BxM,
        x_BxMxD,
        bucket,
        dense=self.match_dense(batch, bucket, context),
        return_cache=True,
      )
    if return_keys_values:
      keys_values = [self.cross_attend.keys_values(x_BxMxD, positions_1xM)]
      z_BxBxD = self.cross_attend.attend(
        x_q_BxBxD, slot_positions_1xB, *keys_values[0], cross_mask, deterministic, match_BxBxD
      )
    else:  # keys/values may be made inside a memory-efficient kernel: M can be long
      keys_values = [None]
      z_BxBxD = self.cross_attend.attend_to(
        x_q_BxBxD,
        slot_positions_1xB,
        x_BxMxD,
        positions_1xM,
        cross_mask,
        deterministic,
        match_BxBxD,
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
    if return_keys_values:
      return logits, keys_values, match_cache
    return logits

  @nn.nowrap
  def match_dense(self, batch: int, queries: int, keys: int) -> bool:
    """Whether the match heads take the dense reference path: where the cross-attend's
    kernel resolves to the dense 'einsum' one (the sorted path everywhere else)."""
    heads = self.num_cross_attend_heads or self.num_heads
    q = jax.ShapeDtypeStruct((batch, queries, heads, self.d_model // heads), self.dtype)
    k = jax.ShapeDtypeStruct((batch, keys, heads, self.d_model // heads), self.dtype)
    return resolve_impl(self.attention_impl, q, k) == 'einsum'

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
    logits_BxNxV, keys_values, match_cache = self(
      window_BxM, num_latents, input_mask=valid_BxM, return_keys_values=True
    )
    recent = max(self.match_ngrams, default=-1) + 1
    recent_BxR = jnp.where(valid_BxM, window_BxM, -1)[:, window - recent :]
    cache = perceiver_ar_cache.from_window_pass(
      keys_values, match_cache, recent_BxR, context_len, capacity - num_latents
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
    match_Bx1xD, match_state = None, cache[-3:]
    if self.match_ngrams:
      match_Bx1xD, match_state = self.extend_match(cache, token_B, x_Bx1xD, context_len)
    z_Bx1xD = self.cross_attend.attend(
      self.latent_queries(x_Bx1xD),
      pos_Bx1,
      kv_cache.seq_major(cross_k),
      kv_cache.seq_major(cross_v),
      mask_Bx1xM,
      True,
      match_Bx1xD,
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
    cache = PerceiverCache(
      cross_k, cross_v, tuple(latent_k), tuple(latent_v), cache.origin, *match_state
    )
    return self.head_logits(z_Bx1xD[:, 0]), cache

  def extend_match(self, cache: PerceiverCache, token_B, x_Bx1xD, context_len):
    """The match heads' output [B, 1, D] for the byte at sequence index context_len - 1, and
    the cache's (match_codes, match_v, recent) with that byte added as a key. A key at
    sequence index s may match while its n-gram [s-k, s-1] lies inside the current window
    (s - k >= max(context_len - M, 0)), exactly as in the uncached window."""
    batch, _, window = cache.match_codes.shape
    recent_BxR = jnp.concatenate([cache.recent[:, 1:], token_B[:, None].astype(jnp.int32)], 1)
    recent_ok_BxR = recent_BxR >= 0
    slot = (context_len - 1) % window
    # Per head, the n-gram codes ending at each recent byte: the new key's code is the one
    # ending just before it, the query's the one ending at it.
    codes, oks = zip(*self.match.codes(recent_BxR, recent_ok_BxR), strict=True)
    codes_BxGxR, oks_BxGxR = jnp.stack(codes, 1), jnp.stack(oks, 1)
    codes_BxGxM = jax.lax.dynamic_update_slice_in_dim(
      cache.match_codes, codes_BxGxR[:, :, -2:-1], slot, axis=2
    )
    v_BxGxMxK = kv_cache.ring_write(cache.match_v, self.match.values(x_Bx1xD), context_len)
    key_ok_BxGxM = perceiver_ar_cache.match_keys_usable(
      context_len, batch, window, self.match_ngrams
    )
    out_Bx1xD = self.match.cached(
      codes_BxGxR[:, :, -1], oks_BxGxR[:, :, -1], codes_BxGxM, key_ok_BxGxM, v_BxGxMxK
    )
    return out_Bx1xD, (codes_BxGxM, v_BxGxMxK, recent_BxR)

  @nn.nowrap
  def needs_prefill(self, cache, step, context_len, latent_reset):
    del cache, step, context_len  # the latent schedule decides: back at n0 = a full pass
    return jnp.asarray(latent_reset)

  @nn.nowrap
  def attention_shapes(self, bucket: int) -> tuple[AttentionShape, ...]:
    context = self.max_context
    if not 1 <= bucket <= context:
      raise ValueError(f'bucket must be in [1, {context}] for Perceiver AR, got {bucket}.')
    match_channels = len(self.match_ngrams) * (
      self.d_model // (self.num_cross_attend_heads or self.num_heads)
    )
    cross = AttentionShape(bucket, context, context, self.cross_attend_mlp_dim, match_channels)
    return (cross,) + (AttentionShape(bucket, bucket, bucket),) * (self.num_layers - 1)
