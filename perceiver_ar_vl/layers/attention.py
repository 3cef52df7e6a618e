"""Multi-head attention with partial rotary position encoding and a switchable kernel.

The attention kernel is chosen in exactly one place, `layers.kernels.dot_product_attention`
(einsum reference, XLA, cuDNN, chunked memory-efficient, or 'auto' per backend and shape).

Parameters are always float32; `dtype` is the compute dtype (bfloat16 on GPU).
Shapes: B batch, S query length, T key length, H heads, K head dim, D model dim.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from perceiver_ar_vl.layers.dots import accumulating_dot_general
from perceiver_ar_vl.layers.kernels import AttentionImpl, dot_product_attention
from perceiver_ar_vl.layers.masks import AttentionMask
from perceiver_ar_vl.layers.rotary import apply_rotary


class MultiHeadAttention(nn.Module):
  """Projections to heads, rotary on q and k, the attention kernel, output projection.

  Split into `queries`, `keys_values` and `attend` so that a decoding cache can keep the
  rotated keys and values of past positions and reuse them.

  `shared_kv`: one projection serves as keys and values (v = the rotated k; ECP's authors'
  choice). `segment0_out`: a second output projection `out_segment0` exists (ECP gives its
  first segment its own).
  """

  num_heads: int
  d_model: int
  rotary_fraction: float = 0.5
  max_wavelength: float = 10_000.0
  rotary_convention: str = 'half'  # or 'interleaved' (layers.rotary)
  use_rotary: bool = True
  attention_impl: AttentionImpl = 'auto'
  dtype: jnp.dtype = jnp.float32
  shared_kv: bool = False
  segment0_out: bool = False
  # > 0: Scalable-Softmax (arXiv 2501.19399). Each head's queries are scaled by s_h * ln(T),
  # T = the keys' length (the window), with s_h learned from 1 / ln(log_scale_base): logits
  # stay as peaked over 131k keys as over 1k. T rather than each query's own count of visible
  # keys, so that a cached key (made when the window started elsewhere) keeps its value.
  log_scale_base: int = 0

  def setup(self):
    if self.d_model % self.num_heads:
      raise ValueError(
        f'd_model ({self.d_model}) must be divisible by num_heads ({self.num_heads}).'
      )
    head_dim = self.d_model // self.num_heads
    dense = lambda name: nn.DenseGeneral(
      (self.num_heads, head_dim),
      dtype=self.dtype,
      param_dtype=jnp.float32,
      dot_general=accumulating_dot_general,
      name=name,
    )
    self.query, self.key, self.value = dense('query'), dense('key'), dense('value')
    out = lambda name: nn.DenseGeneral(
      self.d_model,
      axis=(-2, -1),
      dtype=self.dtype,
      param_dtype=jnp.float32,
      dot_general=accumulating_dot_general,
      name=name,
    )
    self.out = out('out')
    if self.segment0_out:
      self.out_segment0 = out('out_segment0')
    if self.log_scale_base:
      init = 1.0 / np.log(max(self.log_scale_base, 2))
      self.log_scale = self.param(
        'log_scale', nn.initializers.constant(init), (self.num_heads,), jnp.float32
      )

  def _rotate(self, x_BxTxHxK: jax.Array, positions_BxT: jax.Array) -> jax.Array:
    if not self.use_rotary:
      return x_BxTxHxK
    return apply_rotary(
      x_BxTxHxK, positions_BxT, self.rotary_fraction, self.max_wavelength, self.rotary_convention
    )

  def queries(
    self, x_BxSxD: jax.Array, positions_BxS: jax.Array, kv_len: int | None = None
  ) -> jax.Array:
    """Rotated queries [B, S, H, K] (with `log_scale_base`: scaled for `kv_len` keys)."""
    q_BxSxHxK = self._rotate(self.query(x_BxSxD), positions_BxS)
    if not self.log_scale_base:
      return q_BxSxHxK
    keys = kv_len or self.log_scale_base
    return q_BxSxHxK * (np.log(keys) * self.log_scale).astype(q_BxSxHxK.dtype)[:, None]

  def keys_values(self, x_BxTxD: jax.Array, positions_BxT: jax.Array):
    """Rotated keys and values, each [B, T, H, K]."""
    k_BxTxHxK = self._rotate(self.key(x_BxTxD), positions_BxT)
    return k_BxTxHxK, k_BxTxHxK if self.shared_kv else self.value(x_BxTxD)

  def attend(
    self, q_BxSxHxK: jax.Array, k_BxTxHxK: jax.Array, v_BxTxHxK: jax.Array, mask: AttentionMask
  ) -> jax.Array:
    """Attention over the given keys/values, projected back to [B, S, D]."""
    out_BxSxHxK = dot_product_attention(q_BxSxHxK, k_BxTxHxK, v_BxTxHxK, mask, self.attention_impl)
    return self.out(out_BxSxHxK)

  def __call__(self, x_q_BxSxD, x_kv_BxTxD, q_positions_BxS, kv_positions_BxT, mask: AttentionMask):
    k, v = self.keys_values(x_kv_BxTxD, kv_positions_BxT)
    q = self.queries(x_q_BxSxD, q_positions_BxS, x_kv_BxTxD.shape[1])
    return self.attend(q, k, v, mask)
