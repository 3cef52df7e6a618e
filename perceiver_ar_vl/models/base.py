"""The model interface: what every model implements and what the rest of the library calls.

Training, evaluation, sampling, the FLOP model and the experiment runner reach a model only
through `LanguageModel`; none of them looks at a model's class or its submodules, and only
`models/` (with `layers/`) uses Flax linen. A model is a linen module that implements

  * `window_logits(tokens_BxM, num_latents, bucket, input_mask, deterministic)`: logits
    [B, bucket, vocab] of the window's last `bucket` positions (Perceiver AR: its latent
    slots, the last `num_latents` active; a model that scores every position returns its
    last `bucket` and ignores `num_latents`);
  * `prefill_cache(window_BxM, context_len, num_latents, capacity)` and
    `extend_cache(cache, token_B, context_len, num_latents)`: its decoding cache, one full
    pass that fills it and one new byte through it, each returning (logits [B, vocab], cache);
  * `needs_prefill(cache, step, context_len, latent_reset)`: whether a decoding step must
    refill the cache with a full pass;
  * `attention_shapes(bucket)`: the (queries, keys, keys per query) of each attention
    layer, which the FLOP model counts;
  * `scores_every_position` (class attribute): it predicts every window position;

and inherits the calls the library makes with a model's variables: `init_variables`,
`forward`, `prefill`, `extend` and `uncached_logits`. A new model is a module here that
subclasses `LanguageModel` plus its entry in `config_choices.MODEL_TYPES`.

Parameters are float32; `dtype` is the compute dtype of everything but the final LayerNorm,
the head and the loss.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from perceiver_ar_vl import config_choices
from perceiver_ar_vl.layers.blocks import AttentionBlock
from perceiver_ar_vl.layers.kernels import AttentionImpl
from perceiver_ar_vl.layers.kv_cache import window_indices
from perceiver_ar_vl.layers.sinusoid import sinusoidal_table

# Rematerialisation of each block's attention + MLP in the backward pass (`model.remat`):
# 'none' keeps every activation; 'block' keeps only the block's inputs and recomputes the rest
# (least memory, ~1/3 more compute); 'dots' keeps the outputs of matmuls with weights and
# recomputes the elementwise work and attention (jax's dots_with_no_batch_dims_saveable).
REMAT_POLICIES = {
  'none': None,
  'block': jax.checkpoint_policies.nothing_saveable,
  'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
assert tuple(REMAT_POLICIES) == config_choices.REMAT_NAMES


class AttentionShape(NamedTuple):
  """One attention layer as the FLOP model counts it (per example).

  queries: positions that get a query (and an MLP); keys: positions whose keys/values are
  projected; keys_per_query: keys each query scores (dense: no causal discount); mlp_dim:
  the width of its MLP where it differs from the model's; match_channels: the n-gram match
  heads' value channels in all (their value and output projections and their match sums).
  """

  queries: int
  keys: int
  keys_per_query: int
  mlp_dim: int = 0  # the layer's MLP width; 0 = the model's mlp_dim
  match_channels: int = 0  # n-gram match heads x their value width (layers.match)


class LanguageModel(nn.Module):
  """Shared fields, embedding and head, and the interface of the module docstring."""

  scores_every_position: ClassVar[bool] = False

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
  rotary_convention: str = 'half'  # 'interleaved': the original's (layers.rotary)
  position_origin: str = 'window'  # 'first_byte': tables count from a row's first valid byte
  layer_norm_epsilon: float = 1e-6  # Flax's default; the original (Haiku) uses 1e-5
  attention_impl: AttentionImpl = 'auto'
  dtype: jnp.dtype = jnp.float32
  remat: str = 'none'  # see REMAT_POLICIES

  # ---------------------------------------------------------------- what a model implements

  def window_logits(
    self,
    tokens_BxM: jax.Array,
    num_latents,
    bucket: int,
    input_mask: jax.Array | None = None,
    deterministic: bool = True,
  ) -> jax.Array:
    """Logits [B, bucket, vocab] of the window's last `bucket` positions."""
    raise NotImplementedError

  def prefill_cache(self, window_BxM: jax.Array, context_len, num_latents: int, capacity: int):
    """A full pass over the window that fills a new cache: (logits [B, vocab], cache)."""
    raise NotImplementedError

  def extend_cache(self, cache: Any, token_B: jax.Array, context_len, num_latents):
    """The byte at sequence index context_len - 1 through the cache: (logits, cache)."""
    raise NotImplementedError

  def next_logits(self, window_BxM: jax.Array, context_len, num_latents, bucket: int):
    """Logits [B, vocab] of the byte after the window of the last M bytes (left-padded and
    masked where there is no byte yet): one uncached decoding step."""
    batch, window = window_BxM.shape
    valid_BxM = window_indices(context_len, batch, window) >= 0
    window_BxM = self.mark_padding(window_BxM, valid_BxM)
    return self.window_logits(window_BxM, num_latents, bucket, valid_BxM)[:, -1]

  @nn.nowrap
  def needs_prefill(self, cache: Any, step, context_len, latent_reset) -> jax.Array:
    """Whether decoding step `step` refills the cache with a full pass (`latent_reset`: the
    sampler's latent schedule is back at its start)."""
    raise NotImplementedError

  @nn.nowrap
  def attention_shapes(self, bucket: int) -> tuple[AttentionShape, ...]:
    """Each attention layer's shape at latent bucket `bucket` (see `AttentionShape`)."""
    raise NotImplementedError

  @nn.nowrap
  def cached_sampling_error(self) -> str | None:
    """Why cached sampling cannot run with these settings; None when it can.

    A cache keeps keys computed at earlier window positions: with absolute positions every
    byte's window position, hence its embedding, shifts each step, so they go stale.
    """
    if self.position_encoding == 'rotary':
      return None
    return (
      f"Cached sampling needs position_encoding='rotary'; with {self.position_encoding!r} "
      "every byte's window position changes each step, so cached keys/values go stale. "
      'Pass cached=False.'
    )

  @classmethod
  def options_from_config(cls, model_config: Any) -> dict[str, Any]:
    """The fields of this model that `config.model` names otherwise (`config_lib.create_model`
    passes every spec field that the class declares under the same name)."""
    del model_config
    return {}

  # ---------------------------------------------------------------- what the library calls

  @nn.nowrap
  def init_variables(self, rng: jax.Array) -> dict:
    """Fresh variables ({'params': ...}); their shapes do not depend on the latent count.
    Compiled: run eagerly, the init pass dispatches every op one by one (2-3x slower)."""
    tokens_1xM = jnp.zeros((1, self.max_context), jnp.int32)
    return jax.jit(lambda r: self.init(r, tokens_1xM, 1, 1, method='window_logits'))(rng)

  @nn.nowrap
  def forward(
    self,
    variables,
    tokens_BxM: jax.Array,
    num_latents,
    bucket: int,
    *,
    input_mask: jax.Array | None = None,
    rngs: dict | None = None,
  ) -> jax.Array:
    """`window_logits` with these variables; training mode (dropout) when `rngs` is given."""
    return self.apply(
      variables,
      self.mark_padding(tokens_BxM, input_mask),
      num_latents,
      bucket,
      input_mask,
      not rngs,
      rngs=rngs,
      method='window_logits',
    )

  @nn.nowrap
  def prefill(self, variables, window_BxM, context_len, num_latents: int, capacity: int):
    """`prefill_cache` with these variables."""
    args = (window_BxM, context_len, num_latents, capacity)
    return self.apply(variables, *args, method='prefill_cache')

  @nn.nowrap
  def extend(self, variables, cache, token_B, context_len, num_latents):
    """`extend_cache` with these variables."""
    return self.apply(variables, cache, token_B, context_len, num_latents, method='extend_cache')

  @nn.nowrap
  def uncached_logits(self, variables, window_BxM, context_len, num_latents, bucket: int):
    """`next_logits` with these variables."""
    args = (window_BxM, context_len, num_latents, bucket)
    return self.apply(variables, *args, method='next_logits')

  # ---------------------------------------------------------------- shared parts

  def _check_fields(self):
    for key, value in (
      ('model.position_encoding', self.position_encoding),
      ('model.attention_impl', self.attention_impl),
      ('model.activation', self.activation),
      ('model.remat', self.remat),
      ('model.rotary_convention', self.rotary_convention),
      ('model.position_origin', self.position_origin),
    ):
      message = config_choices.unknown_choice(key, value)
      if message:
        raise ValueError(message)
    if self.num_layers < 1:
      raise ValueError(f'num_layers must be >= 1, got {self.num_layers}.')

  def make_block(self, name: str, cross: bool = False, **overrides) -> AttentionBlock:
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
      rotary_convention=self.rotary_convention,
      use_rotary=self.position_encoding == 'rotary',
      attention_impl=self.attention_impl,
      dtype=self.dtype,
      layer_norm_epsilon=self.layer_norm_epsilon,
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

  def setup_shared(self):
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
    elif self.position_encoding == 'sinusoidal':
      self.position_table = sinusoidal_table(self.max_context, self.d_model)
    # The final LayerNorm and the head compute in float32 whatever the compute dtype: the
    # logits feed the loss (and softmax sampling), where bf16's 8 bits of mantissa would show.
    self.final_norm = nn.LayerNorm(
      epsilon=self.layer_norm_epsilon, dtype=jnp.float32, param_dtype=jnp.float32
    )
    self.head = nn.Dense(
      self.vocab_size,
      dtype=jnp.float32,
      param_dtype=jnp.float32,
      kernel_init=nn.initializers.zeros,
    )

  @nn.nowrap
  def mark_padding(self, tokens_BxM: jax.Array, input_mask_BxM) -> jax.Array:
    """With position_origin='first_byte', the window with its invalid (left padding)
    positions set to -1, which `embed_tokens` counts; otherwise the window unchanged."""
    if self.position_origin != 'first_byte' or input_mask_BxM is None:
      return tokens_BxM
    return jnp.where(input_mask_BxM, tokens_BxM, -1)

  def embed_tokens(self, tokens_BxT: jax.Array, positions_BxT: jax.Array) -> jax.Array:
    """Token embedding (plus the absolute or sinusoidal table when selected) in the compute
    dtype. With position_origin='first_byte', negative tokens (`mark_padding`) are embedded
    as byte 0 and the table's positions count from each row's first valid byte (window index
    minus the padding before it), as the original numbers positions from an example's start."""
    if self.position_origin == 'first_byte':
      padding_Bx1 = (tokens_BxT < 0).sum(-1, keepdims=True)
      positions_BxT = jnp.maximum(positions_BxT - padding_Bx1, 0)
      tokens_BxT = jnp.maximum(tokens_BxT, 0)
    x = self.embed(tokens_BxT)
    if self.position_encoding in ('absolute', 'sinusoidal'):
      x = x + jnp.take(self.position_table, positions_BxT, axis=0)
    return x.astype(self.dtype)

  def head_logits(self, x_BxSxD: jax.Array) -> jax.Array:
    """Final LayerNorm and head, in float32; logits [B, S, vocab]."""
    return self.head(self.final_norm(x_BxSxD))

  def check_window(self, tokens_BxM: jax.Array, input_mask_BxM) -> jax.Array:
    """Validates the window; returns the validity mask [B, M], or [1, M] when there is none."""
    if tokens_BxM.ndim != 2:
      raise ValueError(f'tokens must be [batch, window], got shape {tokens_BxM.shape}.')
    context = tokens_BxM.shape[1]
    if context > self.max_context:
      raise ValueError(f'Window of {context} tokens exceeds max_context={self.max_context}.')
    if input_mask_BxM is None:  # the same for every example: no per-example masks downstream
      return jnp.ones((1, context), bool)
    if input_mask_BxM.shape != tokens_BxM.shape:
      raise ValueError(
        f'input_mask shape {input_mask_BxM.shape} must equal tokens shape {tokens_BxM.shape}.'
      )
    return input_mask_BxM.astype(bool)
