"""The model keyword arguments of the original's public sweeps (its perceiver_ar/experiment.py
at commit cc756f5: `get_config`'s perceiver_ar_kwargs, then `get_sweep(name)`'s model
overrides, plus what the experiment passes itself: num_classes and input_idx_size from the
dataset, max_context_length from the config)."""

from __future__ import annotations

import copy
from typing import Any

from perceiver_ar_vl import errors
from perceiver_ar_vl.original.convert import ORIGINAL_DEFAULTS

# experiment.get_config: the model kwargs every sweep starts from (where they differ from the
# constructor's defaults).
_BASE = dict(
  ORIGINAL_DEFAULTS,
  position_encoding_type='rotary',
  fraction_to_rotate=0.5,
  use_positions_from_data=True,
  num_cross_attend_heads=16,
  num_transformer_heads=16,
  cross_attend_widening_factor=4,
  transformer_widening_factor=4,
  additional_cross_attend_after_layers=[],
  dropout_prob=0.1,
)


def _mirrored(length: int, **overrides) -> dict[str, Any]:
  """A random_mirrored_<length> sweep: 256 bytes + PAD, EOS, SOS; positions 1..length."""
  kwargs = dict(
    _BASE,
    num_classes=259,
    input_idx_size=[length + 1],
    max_context_length=length,
    max_wavelength=length,
    position_encoding_type='absolute',
    position_encoding='sinusoidal',
    learnable_position_embeddings=False,
    use_positions_from_data=True,
  )
  kwargs.update(overrides)
  return kwargs


SWEEPS: dict[str, dict[str, Any]] = {
  'random_mirrored_32': _mirrored(32, z_index_dim=16, num_transformers_per_block=1),
  'random_mirrored_131072': _mirrored(
    131072, z_index_dim=1024, num_transformers_per_block=6, cross_attention_head_group_size=4
  ),
  'imagenet_w_positions': dict(
    _BASE,
    num_classes=259,
    input_idx_size=[66, 66, 5],  # (row, column, channel) of 64x64 RGB, + padding and SOS
    max_context_length=12416,
    max_wavelength=12416,
    num_transformers_per_block=60,
    z_index_dim=1024,
    position_encoding_type='absolute',
    position_encoding='random',
    learnable_position_embeddings=True,
    use_positions_from_data=True,
  ),
}


# The data's `minimum_crop_length` of each copy-task sweep (here: data.copy_min_crop).
MINIMUM_CROP_LENGTH = {'random_mirrored_32': 16, 'random_mirrored_131072': 65536}


def sweep_kwargs(name: str) -> dict[str, Any]:
  """The constructor kwargs of sweep `name` (a copy, safe to change)."""
  if name not in SWEEPS:
    raise errors.UserError(f'Unknown sweep {name!r}; choose one of {tuple(SWEEPS)}.')
  return copy.deepcopy(SWEEPS[name])
