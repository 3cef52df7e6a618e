"""Pre-LayerNorm residual blocks shared by Perceiver AR and the Transformer baseline.

Each block is split into `keys_values` (the part a decoding cache stores) and `attend`
(attention from queries over given keys/values, then the MLP), so the full forward pass and
cached sampling run the very same code.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from perceiver_ar_vl.config_choices import ACTIVATIONS
from perceiver_ar_vl.layers.attention import MultiHeadAttention
from perceiver_ar_vl.layers.chunked import projected_chunked_attention
from perceiver_ar_vl.layers.dots import accumulating_dot_general
from perceiver_ar_vl.layers.kernels import AttentionImpl, resolve_impl
from perceiver_ar_vl.layers.masks import AttentionMask

# model.activation -> its function (the names: config_choices.ACTIVATIONS).
ACTIVATION_FNS = {
  'gelu': nn.gelu,
  'relu': nn.relu,
  'sq_relu': lambda x: jnp.square(nn.relu(x)),
}
assert tuple(ACTIVATION_FNS) == ACTIVATIONS


class MLP(nn.Module):
  """Dense(mlp_dim) -> activation -> Dense(d_model)."""

  mlp_dim: int
  activation: str = 'gelu'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxSxD: jax.Array) -> jax.Array:
    dense = lambda features, name: nn.Dense(
      features,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      dot_general=accumulating_dot_general,
      name=name,
    )
    h = ACTIVATION_FNS[self.activation](dense(self.mlp_dim, 'fc_in')(x_BxSxD))
    return dense(x_BxSxD.shape[-1], 'fc_out')(h)


class AttentionBlock(nn.Module):
  """x_q += Dropout(Attn(LN(x_q), LN'(x_kv))); x_q += Dropout(MLP(LN(x_q))).

  `cross=True` gives the cross-attend block (separate LayerNorms for queries and for
  keys/values); `cross=False` a self-attention block (one LayerNorm for both).
  """

  num_heads: int
  d_model: int
  mlp_dim: int
  cross: bool = False
  dropout_rate: float = 0.0
  activation: str = 'gelu'
  rotary_fraction: float = 0.5
  max_wavelength: float = 10_000.0
  rotary_convention: str = 'half'
  use_rotary: bool = True
  attention_impl: AttentionImpl = 'auto'
  dtype: jnp.dtype = jnp.float32
  shared_kv: bool = False  # see MultiHeadAttention
  segment0_out: bool = False
  layer_norm_epsilon: float = 1e-6
  log_scale_base: int = 0  # see MultiHeadAttention

  def setup(self):
    layer_norm = lambda: nn.LayerNorm(
      epsilon=self.layer_norm_epsilon, dtype=self.dtype, param_dtype=jnp.float32
    )
    self.ln_q = layer_norm()
    self.ln_kv = layer_norm() if self.cross else self.ln_q
    self.attention = MultiHeadAttention(
      num_heads=self.num_heads,
      d_model=self.d_model,
      rotary_fraction=self.rotary_fraction,
      max_wavelength=self.max_wavelength,
      rotary_convention=self.rotary_convention,
      use_rotary=self.use_rotary,
      attention_impl=self.attention_impl,
      dtype=self.dtype,
      shared_kv=self.shared_kv,
      segment0_out=self.segment0_out,
      log_scale_base=self.log_scale_base,
    )
    self.ln_mlp = layer_norm()
    self.mlp = MLP(self.mlp_dim, self.activation, self.dtype)
    self.dropout = nn.Dropout(self.dropout_rate)

  def keys_values(self, x_kv_BxTxD: jax.Array, positions_BxT: jax.Array):
    """Keys and values [B, T, H, K] of the (normalised) key/value stream."""
    return self.attention.keys_values(self.ln_kv(x_kv_BxTxD), positions_BxT)

  def queries(
    self, x_q_BxSxD: jax.Array, positions_BxS: jax.Array, kv_len: int | None = None
  ) -> jax.Array:
    """Rotated queries [B, S, H, K] of the (normalised) query stream: what a model that
    runs its own attention pattern (ECP's segments) feeds its kernel."""
    return self.attention.queries(self.ln_q(x_q_BxSxD), positions_BxS, kv_len)

  def output(self, out_BxSxHxK: jax.Array, segment0: bool = False) -> jax.Array:
    """The attention output projection [B, S, D] of per-head results (`segment0`: the
    second projection that `segment0_out` adds)."""
    if segment0:
      return self.attention.out_segment0(out_BxSxHxK)
    return self.attention.out(out_BxSxHxK)

  def attend(
    self,
    x_q_BxSxD: jax.Array,
    positions_BxS: jax.Array,
    k_BxTxHxK: jax.Array,
    v_BxTxHxK: jax.Array,
    mask: AttentionMask,
    deterministic: bool = True,
    extra_BxSxD: jax.Array | None = None,
  ):
    """The block's output for the query stream, given keys/values and their mask;
    `extra_BxSxD` (a match head's output) joins the attention output before the residual."""
    q = self.queries(x_q_BxSxD, positions_BxS, k_BxTxHxK.shape[1])
    h = self.attention.attend(q, k_BxTxHxK, v_BxTxHxK, mask)
    return self.residual_and_mlp(x_q_BxSxD, h, deterministic, extra_BxSxD)

  def attend_to(
    self,
    x_q_BxSxD: jax.Array,
    positions_BxS: jax.Array,
    x_kv_BxTxD: jax.Array,
    positions_BxT: jax.Array,
    mask: AttentionMask,
    deterministic: bool = True,
    extra_BxSxD: jax.Array | None = None,
  ):
    """`attend(x_q, positions, *keys_values(x_kv, positions_kv), mask, ...)`, the same function.

    Where the attention kernel resolves to ``'chunked'``, the keys/values are made inside
    the kernel (`projected_chunked_attention`), so the backward pass keeps no LayerNorm
    output, no un-rotated keys and no full-size dk/dv: what a long window's memory needs.
    """
    q = self.queries(x_q_BxSxD, positions_BxS, x_kv_BxTxD.shape[1])
    kv_shape = x_kv_BxTxD.shape[:2] + q.shape[2:]
    impl = resolve_impl(self.attention_impl, q, jax.ShapeDtypeStruct(kv_shape, q.dtype))
    if impl != 'chunked' or self.shared_kv:
      k, v = self.keys_values(x_kv_BxTxD, positions_BxT)
      h = self.attention.attend(q, k, v, mask)
      return self.residual_and_mlp(x_q_BxSxD, h, deterministic, extra_BxSxD)
    if self.is_initializing():  # create the key/value parameters that are read below
      self.keys_values(x_kv_BxTxD[:, :1], positions_BxT[:, :1])
    params = {
      'ln': self.ln_kv.variables['params'],
      'key': self.attention.key.variables['params'],
      'value': self.attention.value.variables['params'],
    }
    rotary = None
    if self.use_rotary:
      rotary = (self.rotary_fraction, self.max_wavelength, self.rotary_convention)
    out_BxSxHxK = projected_chunked_attention(
      q,
      x_kv_BxTxD,
      params,
      mask,
      rotary=rotary,
      dtype=self.dtype,
      layer_norm_epsilon=self.layer_norm_epsilon,
    )
    h = self.attention.out(out_BxSxHxK)
    return self.residual_and_mlp(x_q_BxSxD, h, deterministic, extra_BxSxD)

  def residual_and_mlp(
    self,
    x_q_BxSxD: jax.Array,
    h_BxSxD: jax.Array,
    deterministic: bool,
    extra_BxSxD: jax.Array | None = None,
  ):
    """The rest of the block after attention (plus `extra`): residual, then the MLP."""
    if extra_BxSxD is not None:
      h_BxSxD = h_BxSxD + extra_BxSxD
    x = x_q_BxSxD + self.dropout(h_BxSxD, deterministic=deterministic)
    h = self.mlp(self.ln_mlp(x))
    return x + self.dropout(h, deterministic=deterministic)
