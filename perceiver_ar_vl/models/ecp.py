"""ECP: the Efficient Context Propagating Perceiver (Mahmood & Huang 2024, arXiv 2412.06106).

Every layer keeps all n positions of the window (no latent/prefix split); the loss is on all
n. The window is cut into S segments of m = `segment_length` positions. In every layer,
segment 0 attends causally within itself, and each segment s >= 1 attends to all of segment
s-1 plus itself causally, so query i of segment s sees m + i + 1 keys. Cost ~2*n*m scores per
layer instead of n^2, and the receptive field grows by one segment per layer.

`segment_attention` folds the segments into the batch: queries [B*S, m], keys/values
[B*S, 2m] (the previous segment, then this one), and runs the project's attention kernel with
the usual position-built causal mask, so memory and FLOPs follow n*m.

Options (the authors' code, github MetaMain/ECPTransformer; default off = our standard
attention, rotary on part of every layer and separate K and V):
  * `ecp_shared_kv`: one projection is both keys and values (K = V);
  * `ecp_rotary_first_layer_only`: rotary on the full head dim, in layer 0 only;
  * `ecp_segment0_out`: segment 0 has its own attention output projection.

Decoding: `ecp_cache.ECPCache` keeps per layer the keys/values of the previous and the
current segment, over a segment-aligned window (see `models/ecp_cache.py`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from perceiver_ar_vl.layers import kv_cache
from perceiver_ar_vl.layers.kernels import AttentionImpl, dot_product_attention
from perceiver_ar_vl.layers.masks import causal_mask
from perceiver_ar_vl.models import ecp_cache
from perceiver_ar_vl.models.base import AttentionShape, LanguageModel


def segment_attention(
  q_BxNxHxK: jax.Array,
  k_BxNxHxK: jax.Array,
  v_BxNxHxK: jax.Array,
  positions_BxN: jax.Array,
  key_ok_BxN: jax.Array,
  segment_length: int,
  impl: AttentionImpl = 'auto',
) -> jax.Array:
  """ECP's pairwise segment attention: [B, N, H, K] out; N a multiple of `segment_length`.

  positions and key_ok are [B or 1, N].
  """
  batch, n = q_BxNxHxK.shape[:2]
  m = segment_length
  segments = n // m
  positions_BxN = jnp.broadcast_to(positions_BxN, (batch, n))  # segments fold into the batch
  key_ok_BxN = jnp.broadcast_to(key_ok_BxN, (batch, n))

  def per_segment(x_BxNx___):  # [B, N, ...] -> [B*S, m, ...]
    return x_BxNx___.reshape(batch * segments, m, *x_BxNx___.shape[2:])

  def previous_and_own(x_BxNx___, fill):  # [B, N, ...] -> [B*S, 2m, ...]
    if segments == 1:
      return x_BxNx___
    x_BxSxmx___ = x_BxNx___.reshape(batch, segments, m, *x_BxNx___.shape[2:])
    before = jnp.full_like(x_BxSxmx___[:, :1], fill)  # segment 0 has no previous segment
    previous = jnp.concatenate([before, x_BxSxmx___[:, :-1]], axis=1)
    both = jnp.concatenate([previous, x_BxSxmx___], axis=2)
    return both.reshape(batch * segments, 2 * m, *x_BxNx___.shape[2:])

  mask = causal_mask(
    per_segment(positions_BxN),
    previous_and_own(positions_BxN, -1),
    previous_and_own(key_ok_BxN, False),
  )
  out = dot_product_attention(
    per_segment(q_BxNxHxK),
    previous_and_own(k_BxNxHxK, 0),
    previous_and_own(v_BxNxHxK, 0),
    mask,
    impl,
  )
  return out.reshape(q_BxNxHxK.shape)


class ECP(LanguageModel):
  """ECP over a window of M bytes, logits for all M positions (see the module docstring).

  With one segment (segment_length = M) and the default options this is exactly the
  `Transformer` baseline (same parameter names and values give the same logits).
  """

  scores_every_position = True

  segment_length: int = 128
  ecp_shared_kv: bool = False
  ecp_rotary_first_layer_only: bool = False
  ecp_segment0_out: bool = False

  @classmethod
  def options_from_config(cls, model_config) -> dict:
    return dict(segment_length=model_config.ecp_segment_length)

  def setup(self):
    self.setup_shared()
    if self.remat != 'none':
      raise ValueError("ECP does not support remat yet; use model.remat='none'.")
    if self.segment_length < 1:
      raise ValueError(f'segment_length must be >= 1, got {self.segment_length}.')
    rotary = self.position_encoding == 'rotary'
    blocks = []
    for i in range(self.num_layers):
      options = dict(shared_kv=self.ecp_shared_kv, segment0_out=self.ecp_segment0_out)
      if self.ecp_rotary_first_layer_only:
        options.update(use_rotary=rotary and i == 0, rotary_fraction=1.0)
      blocks.append(self.make_block(f'layer_{i}', **options))
    self.blocks = blocks

  def __call__(
    self,
    tokens_BxM: jax.Array,
    input_mask: jax.Array | None = None,
    deterministic: bool = True,
    return_keys_values: bool = False,
  ):
    """Logits [batch, M, vocab], one per window position; M a multiple of segment_length.

    With `return_keys_values`, returns (logits, keys_values): one (k, v) pair [B, M, H, K]
    per layer, computed from that layer's inputs (what `ecp_cache.ECPCache` keeps).
    """
    valid_BxM = self.check_window(tokens_BxM, input_mask)
    context = tokens_BxM.shape[1]
    m = self.segment_length
    if context % m:
      raise ValueError(
        f'The window of {context} tokens is not a whole number of segments of {m}; use a '
        'window that is a multiple of segment_length.'
      )
    positions_1xM = jnp.arange(context)[None]  # the same for every example
    x_BxMxD = self.embed_tokens(tokens_BxM, positions_1xM)
    keys_values = []
    for block in self.blocks:
      q = block.queries(x_BxMxD, positions_1xM)
      k, v = block.keys_values(x_BxMxD, positions_1xM)
      keys_values.append((k, v))
      out_BxMxHxK = segment_attention(q, k, v, positions_1xM, valid_BxM, m, self.attention_impl)
      if self.ecp_segment0_out:  # segment 0's own output projection
        first, rest = out_BxMxHxK[:, :m], out_BxMxHxK[:, m:]
        h_BxMxD = jnp.concatenate([block.output(first, segment0=True), block.output(rest)], 1)
      else:
        h_BxMxD = block.output(out_BxMxHxK)
      x_BxMxD = block.residual_and_mlp(x_BxMxD, h_BxMxD, deterministic)
    logits = self.head_logits(x_BxMxD)
    return (logits, keys_values) if return_keys_values else logits

  def window_logits(self, tokens_BxM, num_latents, bucket, input_mask=None, deterministic=True):
    del num_latents  # every position is a query
    logits_BxMxV = self(tokens_BxM, input_mask, deterministic)
    return logits_BxMxV[:, tokens_BxM.shape[1] - bucket :]

  @nn.nowrap
  def window_origin(self, context_len) -> jax.Array:
    """The aligned window's start for the byte at context_len - 1 (`ecp_cache`)."""
    return ecp_cache.window_origin(
      self.max_context, self.segment_length, self.num_layers, context_len
    )

  def _aligned_pass(self, window_BxM, context_len):
    """The forward pass over the aligned window: (logits [B, vocab] of the last byte, origin,
    per-layer keys/values [B, M, H, K])."""
    origin = self.window_origin(context_len)
    aligned_BxM = ecp_cache.aligned_window(window_BxM, context_len, origin)
    logits_BxMxV, keys_values = self(aligned_BxM, return_keys_values=True)
    logits_BxV = jax.lax.dynamic_index_in_dim(logits_BxMxV, context_len - 1 - origin, 1, False)
    return logits_BxV, origin, keys_values

  def next_logits(self, window_BxM, context_len, num_latents, bucket: int):
    """The uncached step: the last byte's logits of a pass over its aligned window."""
    del num_latents, bucket
    return self._aligned_pass(window_BxM, context_len)[0]

  def prefill_cache(self, window_BxM, context_len, num_latents: int, capacity: int):
    """Full pass over the aligned window; returns (logits [B, vocab] of the last byte, cache)."""
    del num_latents, capacity
    logits_BxV, origin, keys_values = self._aligned_pass(window_BxM, context_len)
    cache = ecp_cache.fill(
      keys_values, context_len, origin, self.segment_length, self.ecp_shared_kv
    )
    return logits_BxV, cache

  def extend_cache(self, cache: ecp_cache.ECPCache, token_B, context_len, num_latents):
    """Adds the byte at sequence index context_len - 1: one query through every layer, over
    the keys/values of its previous segment (none in window segment 0) and of its own."""
    del num_latents
    batch = token_B.shape[0]
    pos_Bx1 = jnp.full((batch, 1), context_len - 1 - cache.origin)
    x_Bx1xD = self.embed_tokens(token_B[:, None], pos_Bx1)
    kv_pos_BxT, key_ok_BxT = ecp_cache.ring_keys(cache, context_len, self.segment_length)
    mask_Bx1xT = causal_mask(pos_Bx1, kv_pos_BxT, key_ok_BxT)
    in_segment0 = context_len - 1 - cache.origin < self.segment_length  # own projection
    ks, vs = [], []
    for block, k_cache, v_cache in zip(self.blocks, cache.k, cache.v, strict=True):
      k_Bx1xHxK, v_Bx1xHxK = block.keys_values(x_Bx1xD, pos_Bx1)
      k_cache = kv_cache.ring_write(k_cache, k_Bx1xHxK, context_len)
      v_cache = (
        k_cache if self.ecp_shared_kv else kv_cache.ring_write(v_cache, v_Bx1xHxK, context_len)
      )
      out_Bx1xHxK = dot_product_attention(
        block.queries(x_Bx1xD, pos_Bx1),
        kv_cache.seq_major(k_cache),
        kv_cache.seq_major(v_cache),
        mask_Bx1xT,
        self.attention_impl,
      )
      h_Bx1xD = block.output(out_Bx1xHxK)
      if self.ecp_segment0_out:
        h_Bx1xD = jnp.where(in_segment0, block.output(out_Bx1xHxK, segment0=True), h_Bx1xD)
      x_Bx1xD = block.residual_and_mlp(x_Bx1xD, h_Bx1xD, True)
      ks.append(k_cache)
      vs.append(v_cache)
    return self.head_logits(x_Bx1xD[:, 0]), ecp_cache.ECPCache(tuple(ks), tuple(vs), cache.origin)

  @nn.nowrap
  def needs_prefill(self, cache, step, context_len, latent_reset):
    """At the first step, and when the aligned window jumps ahead (a new origin)."""
    del latent_reset
    return (jnp.asarray(step) == 0) | (self.window_origin(context_len) != cache.origin)

  @nn.nowrap
  def cached_sampling_error(self) -> str | None:
    return None  # the aligned window keeps each byte's position until a jump: any encoding

  @nn.nowrap
  def attention_shapes(self, bucket: int) -> tuple[AttentionShape, ...]:
    del bucket  # every position is a query in every layer
    m, context = self.segment_length, self.max_context
    keys_per_query = context if m == context else 2 * m  # one segment has no previous one
    return (AttentionShape(context, context, keys_per_query),) * self.num_layers
