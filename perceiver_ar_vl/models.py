"""Perceiver AR with a variable number of latents, and the decoder-only Transformer baseline.

Perceiver AR (Hawthorne et al. 2022): the LAST N positions of the window are latents. A
cross-attend layer lets them attend to all M positions (causally), then L-1 causal
self-attention layers run over the latents only. Cost O(N*M + L*N^2) instead of O(L*M^2).

Static buckets: a call runs at bucket B >= N. Slot j of the B latent slots is window position
M-B+j; the last N slots are active, the first B-N are inactive padding that is masked out as
keys in every latent layer and carries no loss. N may be traced; B is static.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from perceiver_ar_vl.attention import ATTENTION_IMPLS, AttentionImpl, causal_mask
from perceiver_ar_vl.blocks import ACTIVATIONS, AttentionBlock

POSITION_ENCODINGS = ('rotary', 'absolute')


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


class _Backbone(nn.Module):
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
    if self.num_layers < 1:
      raise ValueError(f'num_layers must be >= 1, got {self.num_layers}.')

  def _block(self, name: str, cross: bool = False) -> AttentionBlock:
    return AttentionBlock(
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
    self.final_norm = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32)
    self.head = nn.Dense(
      self.vocab_size, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=nn.initializers.zeros
    )

  def embed_tokens(self, tokens_BxT: jax.Array, positions_BxT: jax.Array) -> jax.Array:
    """Token embedding (plus the absolute table when selected) in the compute dtype."""
    x = self.embed(tokens_BxT)
    if self.position_encoding == 'absolute':
      x = x + jnp.take(self.position_table, positions_BxT, axis=0)
    return x.astype(self.dtype)

  def logits(self, x_BxSxD: jax.Array) -> jax.Array:
    """Final LayerNorm and head; logits in float32 [B, S, vocab]."""
    return self.head(self.final_norm(x_BxSxD)).astype(jnp.float32)

  def _check_window(self, tokens_BxM: jax.Array, input_mask_BxM):
    if tokens_BxM.ndim != 2:
      raise ValueError(f'tokens must be [batch, window], got shape {tokens_BxM.shape}.')
    batch, context = tokens_BxM.shape
    if context > self.max_context:
      raise ValueError(f'Window of {context} tokens exceeds max_context={self.max_context}.')
    if input_mask_BxM is None:
      return jnp.ones((batch, context), bool)
    if input_mask_BxM.shape != tokens_BxM.shape:
      raise ValueError(
        f'input_mask shape {input_mask_BxM.shape} must equal tokens shape {tokens_BxM.shape}.'
      )
    return input_mask_BxM.astype(bool)


class PerceiverAR(_Backbone):
  """Perceiver AR; `num_latents` may change per call (see the module docstring).

  Extra field: `cross_attend_dropout`, the per-example probability of dropping each prefix
  key (a position that is not an active latent) from the cross-attend while training.
  """

  cross_attend_dropout: float = 0.0

  def setup(self):
    self._setup_common()
    self.cross_attend = self._block('cross_attend', cross=True)
    self.latent_blocks = [self._block(f'latent_{i}') for i in range(self.num_layers - 1)]

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
    valid_BxM = self._check_window(tokens_BxM, input_mask)
    batch, context = tokens_BxM.shape
    bucket = check_latents(num_latents, bucket, context)
    positions_BxM = jnp.broadcast_to(jnp.arange(context), (batch, context))
    x_BxMxD = self.embed_tokens(tokens_BxM, positions_BxM)

    # Cross-attend: the B latent slots attend to every window position.
    slot_positions_BxB = positions_BxM[:, context - bucket :]
    active_BxB = jnp.arange(bucket)[None, :] >= bucket - num_latents
    key_ok_BxM = valid_BxM
    if self.cross_attend_dropout > 0 and not deterministic:
      is_prefix_BxM = positions_BxM < context - num_latents
      drop_BxM = jax.random.bernoulli(
        self.make_rng('dropout'), self.cross_attend_dropout, (batch, context)
      )
      key_ok_BxM = key_ok_BxM & ~(is_prefix_BxM & drop_BxM)
    cross_mask = causal_mask(slot_positions_BxB, positions_BxM, key_ok_BxM)
    x_q_BxBxD = x_BxMxD[:, context - bucket :]
    if return_keys_values:
      keys_values = [self.cross_attend.keys_values(x_BxMxD, positions_BxM)]
      z_BxBxD = self.cross_attend.attend(
        x_q_BxBxD, slot_positions_BxB, *keys_values[0], cross_mask, deterministic
      )
    else:  # keys/values may be made inside a memory-efficient kernel: M can be long
      keys_values = [None]
      z_BxBxD = self.cross_attend.attend_to(
        x_q_BxBxD, slot_positions_BxB, x_BxMxD, positions_BxM, cross_mask, deterministic
      )

    # Latent self-attention: inactive slots and invalid positions are never keys.
    latent_ok_BxB = active_BxB & valid_BxM[:, context - bucket :]
    latent_mask = causal_mask(slot_positions_BxB, slot_positions_BxB, latent_ok_BxB)
    for block in self.latent_blocks:
      keys_values.append(block.keys_values(z_BxBxD, slot_positions_BxB))
      z_BxBxD = block.attend(
        z_BxBxD, slot_positions_BxB, *keys_values[-1], latent_mask, deterministic
      )
    logits = self.logits(z_BxBxD)
    return (logits, keys_values) if return_keys_values else logits


class Transformer(_Backbone):
  """Decoder-only baseline: `num_layers` causal self-attention blocks over all M positions.

  Same blocks, width, depth, heads and MLP as `PerceiverAR`, so comparisons are fair; it is
  Perceiver AR's layout with every position a latent in every layer (cost O(L*M^2)).
  """

  def setup(self):
    self._setup_common()
    self.blocks = [self._block(f'layer_{i}') for i in range(self.num_layers)]

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
    valid_BxM = self._check_window(tokens_BxM, input_mask)
    batch, context = tokens_BxM.shape
    positions_BxM = jnp.broadcast_to(jnp.arange(context), (batch, context))
    x_BxMxD = self.embed_tokens(tokens_BxM, positions_BxM)
    mask = causal_mask(positions_BxM, positions_BxM, valid_BxM)
    keys_values = []
    for block in self.blocks:
      keys_values.append(block.keys_values(x_BxMxD, positions_BxM))
      x_BxMxD = block.attend(x_BxMxD, positions_BxM, *keys_values[-1], mask, deterministic)
    logits = self.logits(x_BxMxD)
    return (logits, keys_values) if return_keys_values else logits


def forward_logits(
  model,
  params,
  tokens_BxM,
  num_latents,
  bucket: int,
  input_mask=None,
  deterministic: bool = True,
  rngs=None,
) -> jax.Array:
  """Logits [batch, bucket, vocab] of the last `bucket` positions, for either model type."""
  if isinstance(model, PerceiverAR):
    return model.apply(
      params,
      tokens_BxM,
      num_latents=num_latents,
      bucket=bucket,
      input_mask=input_mask,
      deterministic=deterministic,
      rngs=rngs,
    )
  logits = model.apply(
    params, tokens_BxM, input_mask=input_mask, deterministic=deterministic, rngs=rngs
  )
  return logits[:, tokens_BxM.shape[1] - bucket :]
