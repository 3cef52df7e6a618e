"""Pre-LayerNorm residual blocks shared by Perceiver AR and the Transformer baseline.

Each block is split into `keys_values` (the part a decoding cache stores) and `attend`
(attention from queries over given keys/values, then the MLP), so the full forward pass and
cached sampling run the very same code.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from perceiver_ar_vl.attention import AttentionImpl, MultiHeadAttention

ACTIVATIONS = {
  'gelu': nn.gelu,
  'relu': nn.relu,
  'sq_relu': lambda x: jnp.square(nn.relu(x)),
}


class MLP(nn.Module):
  """Dense(mlp_dim) -> activation -> Dense(d_model)."""

  mlp_dim: int
  activation: str = 'gelu'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
