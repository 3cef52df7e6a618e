"""What every model shares: fields, embedding, blocks, head and window checks."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from perceiver_ar_vl.attention import ATTENTION_IMPLS, AttentionImpl
from perceiver_ar_vl.blocks import ACTIVATIONS, AttentionBlock
from perceiver_ar_vl.choices import POSITION_ENCODINGS, REMAT_NAMES

# Rematerialisation of each block's attention + MLP in the backward pass (`model.remat`):
# 'none' keeps every activation; 'block' keeps only the block's inputs and recomputes the rest
# (least memory, ~1/3 more compute); 'dots' keeps the outputs of matmuls with weights and
# recomputes the elementwise work and attention (jax's dots_with_no_batch_dims_saveable).
REMAT_POLICIES = {
  'none': None,
  'block': jax.checkpoint_policies.nothing_saveable,
  'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
assert tuple(REMAT_POLICIES) == REMAT_NAMES


class Backbone(nn.Module):
  """Shared fields and the embedding of both models."""

  vocab_size: int = 256
  num_layers: int = 6
  num_heads: int = 8
  d_model: int = 512
  mlp_dim: int = 2048
  max_context: int = 1024
  dropout_rate: float = 0.1
  activation: str = 'gelu'
  position_encoding: str = 'rotary'
  rotary_fraction: float = 0.5
  max_wavelength: float = 10_000.0
  attention_impl: AttentionImpl = 'auto'
  dtype: jnp.dtype = jnp.float32
  remat: str = 'none'  # see REMAT_POLICIES

  def _check_fields(self):
    if self.position_encoding not in POSITION_ENCODINGS:
      raise ValueError(
        f'Unknown position_encoding {self.position_encoding!r}; choose one of {POSITION_ENCODINGS}.'
      )
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(
        f'Unknown attention_impl {self.attention_impl!r}; choose one of {ATTENTION_IMPLS}.'
      )
    if self.activation not in ACTIVATIONS:
      raise ValueError(
        f'Unknown activation {self.activation!r}; choose one of {sorted(ACTIVATIONS)}.'
      )
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f'Unknown remat {self.remat!r}; choose one of {tuple(REMAT_POLICIES)}.')
    if self.num_layers < 1:
      raise ValueError(f'num_layers must be >= 1, got {self.num_layers}.')

  def _block(self, name: str, cross: bool = False, **overrides) -> AttentionBlock:
    """One attention block with the model's settings (`overrides` replace some)."""
    settings = dict(
      num_heads=self.num_heads,
      d_model=self.d_model,
      mlp_dim=self.mlp_dim,
      cross=cross,
      dropout_rate=self.dropout_rate,
      activation=self.activation,
      rotary_fraction=self.rotary_fraction,
      max_wavelength=self.max_wavelength,
      use_rotary=self.position_encoding == 'rotary',
      attention_impl=self.attention_impl,
      dtype=self.dtype,
      name=name,
    )
    block_cls = AttentionBlock
    if self.remat != 'none':  # attend/attend_to(self, ..., mask, deterministic): arg 6 static
      block_cls = nn.remat(
        AttentionBlock,
        policy=REMAT_POLICIES[self.remat],
        static_argnums=(6,),
        methods=['attend', 'attend_to'],
      )
    return block_cls(**{**settings, **overrides})

  def _setup_common(self):
    self._check_fields()
    self.embed = nn.Embed(
      self.vocab_size,
      self.d_model,
      param_dtype=jnp.float32,
      embedding_init=nn.initializers.normal(stddev=0.02),
    )
    if self.position_encoding == 'absolute':
      self.position_table = self.param(
        'position_table',
        nn.initializers.normal(stddev=0.02),
        (self.max_context, self.d_model),
        jnp.float32,
      )
    # The final LayerNorm and the head compute in float32 whatever the compute dtype: the
    # logits feed the loss (and softmax sampling), where bf16's 8 bits of mantissa would show.
    self.final_norm = nn.LayerNorm(dtype=jnp.float32, param_dtype=jnp.float32)
    self.head = nn.Dense(
      self.vocab_size,
      dtype=jnp.float32,
      param_dtype=jnp.float32,
      kernel_init=nn.initializers.zeros,
    )

  def embed_tokens(self, tokens_BxT: jax.Array, positions_BxT: jax.Array) -> jax.Array:
    """Token embedding (plus the absolute table when selected) in the compute dtype."""
    x = self.embed(tokens_BxT)
    if self.position_encoding == 'absolute':
      x = x + jnp.take(self.position_table, positions_BxT, axis=0)
    return x.astype(self.dtype)

  def logits(self, x_BxSxD: jax.Array) -> jax.Array:
    """Final LayerNorm and head, in float32; logits [B, S, vocab]."""
    return self.head(self.final_norm(x_BxSxD))

  def _check_window(self, tokens_BxM: jax.Array, input_mask_BxM) -> jax.Array:
    """Validates the window; returns the validity mask [B, M], or [1, M] when there is none."""
    if tokens_BxM.ndim != 2:
      raise ValueError(f'tokens must be [batch, window], got shape {tokens_BxM.shape}.')
    batch, context = tokens_BxM.shape
    if context > self.max_context:
      raise ValueError(f'Window of {context} tokens exceeds max_context={self.max_context}.')
    if input_mask_BxM is None:  # the same for every example: no per-example masks downstream
      return jnp.ones((1, context), bool)
    if input_mask_BxM.shape != tokens_BxM.shape:
      raise ValueError(
        f'input_mask shape {input_mask_BxM.shape} must equal tokens shape {tokens_BxM.shape}.'
      )
    return input_mask_BxM.astype(bool)
