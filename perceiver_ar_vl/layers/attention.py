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

  def setup(self):
    if self.d_model % self.num_heads:
      raise ValueError(
        f'd_model ({self.d_model}) must be divisible by num_heads ({self.num_heads}).'
      )
    head_dim = self.d_model // self.num_heads
    dense = lambda name: nn.DenseGeneral(
      (self.num_heads, head_dim), dtype=self.dtype, param_dtype=jnp.float32, name=name
    )
    self.query, self.key, self.value = dense('query'), dense('key'), dense('value')
    out = lambda name: nn.DenseGeneral(
      self.d_model, axis=(-2, -1), dtype=self.dtype, param_dtype=jnp.float32, name=name
    )
    self.out = out('out')
    if self.segment0_out:
      self.out_segment0 = out('out_segment0')

  def _rotate(self, x_BxTxHxK: jax.Array, positions_BxT: jax.Array) -> jax.Array:
    if not self.use_rotary:
      return x_BxTxHxK
    return apply_rotary(
      x_BxTxHxK, positions_BxT, self.rotary_fraction, self.max_wavelength, self.rotary_convention
    )

  def queries(self, x_BxSxD: jax.Array, positions_BxS: jax.Array) -> jax.Array:
    """Rotated queries [B, S, H, K]."""
    return self._rotate(self.query(x_BxSxD), positions_BxS)

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
    return self.attend(self.queries(x_q_BxSxD, q_positions_BxS), k, v, mask)
