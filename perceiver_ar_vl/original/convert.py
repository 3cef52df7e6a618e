"""The original's `PerceiverAR(**kwargs)` and its Haiku parameters as our model and variables.

The correspondence (perceiver_ar/perceiver_ar_model.py at cc756f5): `num_z_channels` is
d_model, `num_transformers_per_block` + 1 is num_layers (the cross-attend is layer 1), the
widening factors times d are the MLP widths, `z_linear` is `latent_query_projection`,
rotary pairs are interleaved with the original's frequencies, and every LayerNorm has Haiku's
epsilon 1e-5. `from_haiku`'s model called as `model.apply(variables, tokens_BxM,
num_latents=N)` equals the original's `input_events_logits` with `use_positions_from_data`,
positions 0..M-1, `is_training=False` and `z_index_dim=N`, for windows without PAD (0)
tokens: the original treats 0 as padding, so pass `input_mask=tokens > 0` for left-padded
windows (the original pads on the right; its positions then start at the first byte).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ml_collections
import numpy as np

from perceiver_ar_vl import config_defaults, config_lib, errors, spec

if TYPE_CHECKING:  # imported where a model is built: reading options and checkpoints needs no JAX
  from perceiver_ar_vl.models.base import LanguageModel

# The original's constructor options with their defaults.
ORIGINAL_DEFAULTS: dict[str, Any] = dict(
  input_embed_dim=1024,
  position_encoding='sinusoidal',
  learnable_position_embeddings=False,
  num_transformers_per_block=12,
  z_index_dim=1024,
  num_z_channels=1024,
  num_cross_attend_heads=1,
  num_transformer_heads=8,
  cross_attend_widening_factor=1,
  transformer_widening_factor=1,
  initial_query_offsetting=False,
  initial_query_embed_style='none',
  share_learned_initial_query=False,
  initial_query_embed_activation_name='sq_relu',
  initial_query_embed_num_layers=2,
  include_initial_cross_attention=True,
  additional_cross_attend_after_layers=None,
  dropout_prob=0.0,
  z_pos_enc_init_scale=0.02,
  concat_pos=True,
  cross_attention_shape_for_attn='kv',
  encoder_use_query_residual=True,
  mask_style='final_block',
  latent_dropout_prob=0.0,
  encoder_dropout_prob=0.0,
  num_latents_per_position=1,
  activation_name='sq_relu',
  fraction_to_rotate=0.25,
  fraction_heads_to_rotate=1.0,
  max_wavelength=8192,
  cross_attention_head_group_size=0,
  chunked_cross_attention=False,
  chunked_cross_query_size=1024,
  chunked_cross_key_size=4096,
  use_positions_from_data=False,
  train_input_positions=0,
  final_layer_init_zeros=True,
  use_negative_rotary_positions=False,
  name='perceiver_ar',
)
REQUIRED = ('num_classes', 'input_idx_size', 'max_context_length', 'position_encoding_type')

# Options whose non-default values change the function in ways our model cannot express:
# option -> (the values we support, why).
_SUPPORTED_ONLY = {
  'initial_query_offsetting': ((False,), 'query positions shifted by one'),
  'initial_query_embed_style': (('none',), 'learned or MLP latent queries'),
  'include_initial_cross_attention': ((True,), 'a model without the cross-attend'),
  'additional_cross_attend_after_layers': ((None, [], ()), 'extra cross-attends'),
  'encoder_use_query_residual': ((True,), 'a cross-attend without the query residual'),
  'mask_style': (('final_block',), 'other latent placements'),
  'num_latents_per_position': ((1,), 'several latents per position'),
  'fraction_heads_to_rotate': ((1.0, 1), 'rotary on a subset of the heads'),
  'train_input_positions': ((0,), 'random input subsets in training'),
  'use_positions_from_data': ((True,), 'terminal-relative positions (pass positions from data)'),
  'activation_name': (('sq_relu', 'gelu', 'relu'), 'other activations'),
  'position_encoding_type': (('rotary', 'absolute'), 'other position encodings'),
}


def _unsupported(option: str, value: Any, why: str) -> errors.UserError:
  return errors.UserError(
    f'from_haiku cannot express the original option {option}={value!r} ({why}); '
    'convert a model built without it.'
  )


def _options(kwargs: dict[str, Any]) -> dict[str, Any]:
  """The constructor kwargs completed with the original's defaults, checked."""
  unknown = sorted(set(kwargs) - set(ORIGINAL_DEFAULTS) - set(REQUIRED))
  if unknown:
    raise errors.UserError(
      f'Unknown PerceiverAR constructor option(s) {unknown}; the original (cc756f5) takes '
      f'{sorted(set(ORIGINAL_DEFAULTS) | set(REQUIRED))}.'
    )
  missing = [key for key in REQUIRED if key not in kwargs]
  if missing:
    raise errors.UserError(f'Pass the original PerceiverAR constructor option(s) {missing}.')
  o = {**ORIGINAL_DEFAULTS, **kwargs}
  for option, (values, why) in _SUPPORTED_ONLY.items():
    if o[option] not in values:
      raise _unsupported(option, o[option], why)
  if o['input_embed_dim'] != o['num_z_channels']:
    raise _unsupported(
      'input_embed_dim',
      o['input_embed_dim'],
      f'input embeddings narrower or wider than num_z_channels={o["num_z_channels"]}',
    )
  if o['cross_attention_shape_for_attn'] not in ('q', 'kv'):  # equal widths: both the same
    raise _unsupported('cross_attention_shape_for_attn', o['cross_attention_shape_for_attn'], '')
  if o['position_encoding_type'] == 'absolute':
    sizes = list(o['input_idx_size'])
    if len(sizes) != 1:
      raise _unsupported('input_idx_size', sizes, 'positions of several dimensions')
    if sizes[0] < o['max_context_length']:
      raise _unsupported('input_idx_size', sizes, 'fewer positions than max_context_length')
    if o['position_encoding'] not in ('sinusoidal', 'random'):
      raise _unsupported('position_encoding', o['position_encoding'], 'not a table we build')
  elif o['max_wavelength'] < o['max_context_length']:
    raise errors.UserError(
      f'max_wavelength={o["max_wavelength"]} < max_context_length={o["max_context_length"]}: '
      'the original refuses this model too.'
    )
  return o


def _position_encoding(o: dict[str, Any]) -> str:
  if o['position_encoding_type'] == 'rotary':
    return 'rotary'
  fixed = o['position_encoding'] == 'sinusoidal' and not o['learnable_position_embeddings']
  return 'sinusoidal' if fixed else 'absolute'


def config_from_kwargs(**constructor_kwargs) -> ml_collections.ConfigDict:
  """A config of this library whose model computes the original's
  `PerceiverAR(**constructor_kwargs)` (fixed latents at its z_index_dim). Unsupported
  options stop with a one-line error naming them."""
  o = _options(constructor_kwargs)
  d = o['num_z_channels']
  c = config_defaults.base_config()
  c.name = 'from_original'
  m = c.model
  m.type = 'perceiver_ar'
  m.vocab_size = int(o['num_classes'])
  m.num_layers = 1 + int(o['num_transformers_per_block'])
  m.d_model = d
  m.num_heads = int(o['num_transformer_heads'])
  m.num_cross_attend_heads = int(o['num_cross_attend_heads'])
  m.mlp_dim = int(o['transformer_widening_factor'] * d)
  m.cross_attend_mlp_dim = int(o['cross_attend_widening_factor'] * d)
  m.max_context = int(o['max_context_length'])
  m.activation = o['activation_name']
  m.position_encoding = _position_encoding(o)
  m.rotary_fraction = float(o['fraction_to_rotate'])
  m.max_wavelength = float(max(o['max_wavelength'], o['max_context_length']))
  m.rotary_convention = 'interleaved'
  m.layer_norm_epsilon = 1e-5  # hk.LayerNorm's default
  m.latent_query_projection = True
  m.dropout_rate = float(o['dropout_prob'])
  m.latent_dropout = float(o['latent_dropout_prob'])
  m.cross_attend_dropout = float(o['encoder_dropout_prob'])  # ours spares the latents
  n = min(int(o['z_index_dim']), m.max_context)
  c.latents.strategy = 'fixed'
  c.latents.min = c.latents.max = n
  c.latents.buckets = (n,)
  return c


def _linear(params: dict, path: str) -> dict[str, np.ndarray]:
  return {'kernel': params[path]['w'], 'bias': params[path]['b']}


def _layer_norm(params: dict, path: str) -> dict[str, np.ndarray]:
  return {'scale': params[path]['scale'], 'bias': params[path]['offset']}


def _heads(linear: dict[str, np.ndarray], heads: int) -> dict[str, np.ndarray]:
  """A [D, H*K] projection as DenseGeneral's [D, H, K] (the original's reshape is head-major)."""
  d_in, width = linear['kernel'].shape
  return {
    'kernel': linear['kernel'].reshape(d_in, heads, width // heads),
    'bias': linear['bias'].reshape(heads, width // heads),
  }


def _block(params: dict, scope: str, heads: int, cross: bool) -> dict[str, Any]:
  """One of our AttentionBlocks from the original's CrossAttention / SelfAttention at `scope`.
  Haiku names by creation order: LayerNorms (q, then kv for a cross-attend, then the MLP's),
  and the attention's linear, _1, _2, _3 = query, key, value, output."""
  attention = f'{scope}/attention'
  q, k, v, out = (
    _linear(params, f'{attention}/{n}') for n in ('linear', 'linear_1', 'linear_2', 'linear_3')
  )
  d_out = out['kernel'].shape[1]
  block = {
    'ln_q': _layer_norm(params, f'{scope}/layer_norm'),
    'attention': {
      'query': _heads(q, heads),
      'key': _heads(k, heads),
      'value': _heads(v, heads),
      'out': {'kernel': out['kernel'].reshape(heads, -1, d_out), 'bias': out['bias']},
    },
    'ln_mlp': _layer_norm(params, f'{scope}/layer_norm_{2 if cross else 1}'),
    'mlp': {
      'fc_in': _linear(params, f'{scope}/dense/linear'),
      'fc_out': _linear(params, f'{scope}/dense/linear_1'),
    },
  }
  if cross:
    block['ln_kv'] = _layer_norm(params, f'{scope}/layer_norm_1')
  return block


def _variables(params: dict, o: dict[str, Any], model: LanguageModel) -> dict:
  name = o['name']
  inner = f'{name}/~'
  p = {
    'embed': {'embedding': params[f'{inner}/embed']['embeddings']},
    'z_linear': _linear(params, f'{inner}/linear'),
    'cross_attend': _block(params, f'{inner}/cross_attention', model.num_cross_attend_heads, True),
    'final_norm': _layer_norm(params, f'{name}/layer_norm'),
    'head': _linear(params, f'{inner}/logits'),
  }
  for i in range(model.num_layers - 1):
    scope = f'{inner}/self_attention' + (f'_{i}' if i else '')
    p[f'latent_{i}'] = _block(params, scope, model.num_heads, False)
  if o['position_encoding_type'] == 'absolute':
    table = params[f'{inner}/embed_1']['embeddings'][: model.max_context]
    if model.position_encoding == 'absolute':
      p['position_table'] = table
    else:  # a fixed sinusoid: ours must be the same table
      from perceiver_ar_vl.layers.sinusoid import sinusoidal_table

      ours = np.asarray(sinusoidal_table(model.max_context, model.d_model))
      if not np.allclose(table, ours, atol=1e-4):
        raise errors.UserError(
          f'{inner}/embed_1 is not the sinusoid its options describe (learnable_position_'
          'embeddings=False); pass learnable_position_embeddings=True to keep its values.'
        )
  return {'params': p}


# Options of ours the original lacks; their defaults (spec.ModelSpec) are the original's model.
LONG_CONTEXT_OPTIONS = ('match_ngrams', 'cross_attend_rotary_fraction', 'cross_attend_log_scale')


def check_original_model(config: ml_collections.ConfigDict | spec.RunSpec) -> None:
  """Refuses a config whose model the original cannot be: the cross-attend's long-context
  options (n-gram match heads, its own rotary share, Scalable-Softmax) have no weights or
  behaviour in google-research/perceiver-ar, so its parameters cannot fill such a model."""
  model, defaults = spec.from_config(config).model, spec.ModelSpec()
  on = {
    key: getattr(model, key)
    for key in LONG_CONTEXT_OPTIONS
    if getattr(model, key) != getattr(defaults, key)
  }
  if on:
    names = ', '.join(f'model.{k}={v!r}' for k, v in on.items())
    raise errors.UserError(
      f'The original Perceiver AR has no {names}; its weights convert only to a model with '
      'these options at their defaults.'
    )


def from_haiku(params: dict, **constructor_kwargs) -> tuple[LanguageModel, dict]:
  """(model, variables) computing the original `PerceiverAR(**constructor_kwargs)` with
  Haiku parameters `params` (module path -> {name: array}, as `hk.transform_with_state(...)
  .init` or `load_checkpoint` returns them); see the module docstring for the contract."""
  o = _options(constructor_kwargs)
  config = config_from_kwargs(**constructor_kwargs)
  check_original_model(config)
  model = config_lib.create_model(config)
  arrays = {
    module: {leaf: np.asarray(value, np.float32) for leaf, value in leaves.items()}
    for module, leaves in params.items()
  }
  try:
    variables = _variables(arrays, o, model)
  except KeyError as missing:
    raise errors.UserError(
      f'The Haiku parameters have no module {missing}: they do not belong to a PerceiverAR '
      f'built with these options (name={o["name"]!r}).'
    ) from None
  _check_shapes(model, variables)
  return model, variables


def _check_shapes(model: LanguageModel, variables: dict) -> None:
  """Every converted array has the shape of our model's own parameter, and none is missing."""
  import jax
  from flax import traverse_util

  expected = jax.eval_shape(model.init_variables, jax.random.PRNGKey(0))
  want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(expected).items()}
  got = {k: np.shape(v) for k, v in traverse_util.flatten_dict(variables).items()}
  for key in sorted(set(want) | set(got)):
    if want.get(key) != got.get(key):
      raise errors.UserError(
        f'Converted parameter {"/".join(key)} has shape {got.get(key)}, the model needs '
        f'{want.get(key)}: the options do not match these parameters.'
      )
