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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from perceiver_ar_vl.attention import AttentionImpl, causal_mask, dot_product_attention
from perceiver_ar_vl.models.backbone import Backbone


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


class ECP(Backbone):
  """ECP over a window of M bytes, logits for all M positions (see the module docstring).

  With one segment (segment_length = M) and the default options this is exactly the
  `Transformer` baseline (same parameter names and values give the same logits).
  """

  segment_length: int = 128
  ecp_shared_kv: bool = False
  ecp_rotary_first_layer_only: bool = False
  ecp_segment0_out: bool = False

  def setup(self):
    self._setup_common()
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
      blocks.append(self._block(f'layer_{i}', **options))
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
    per layer, computed from that layer's inputs (what `decoding_cache.ECPCache` keeps).
    """
    valid_BxM = self._check_window(tokens_BxM, input_mask)
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
      q = block.attention.queries(block.ln_q(x_BxMxD), positions_1xM)
      k, v = block.keys_values(x_BxMxD, positions_1xM)
      keys_values.append((k, v))
      out_BxMxHxK = segment_attention(q, k, v, positions_1xM, valid_BxM, m, self.attention_impl)
      if self.ecp_segment0_out:  # segment 0's own output projection
        first, rest = out_BxMxHxK[:, :m], out_BxMxHxK[:, m:]
        h_BxMxD = jnp.concatenate(
          [block.attention.out_segment0(first), block.attention.out(rest)], axis=1
        )
      else:
        h_BxMxD = block.attention.out(out_BxMxHxK)
      x_BxMxD = block.residual_and_mlp(x_BxMxD, h_BxMxD, deterministic)
    logits = self.logits(x_BxMxD)
    return (logits, keys_values) if return_keys_values else logits
