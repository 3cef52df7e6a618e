"""The presets, and a run's config at one: `make_config` starts from every key's default
(`config_defaults.base_config`), sets the run's model type and latent strategy, then applies
the preset its argument names (`configs/curriculum.py:smoke`). The presets (`PRESET_SETTINGS`):
  * ''/'gpu' — the seed experiment: enwik8, window 1024, 6 layers, d_model 512, batch 32, bf16;
  * 'cpu'    — a 0.86M-parameter model, window 256, that learns real text on 2 CPU cores;
  * 'cpu_long' — the 'cpu' model and latent counts with a 4096-byte window (16x the context
               for the cost of a longer cross-attend; full-window models scale to 4096);
  * 'smoke'  — a tiny model on the synthetic copy task, under 2 minutes on a 2-core CPU.
Runs give their latent counts in seed units (window 1024); a preset with another window
scales them and the buckets by window / 1024 (Perceiver AR under 'cpu_long': by 256 / 1024),
so `fixed_512` always means "half the window" and the comparison keeps its shape.
"""

from __future__ import annotations

import ml_collections

from perceiver_ar_vl import config_choices, errors
from perceiver_ar_vl.config_defaults import PRESET_SETTINGS, base_config

SEED_WINDOW = 1024  # the window that runs' latent counts are written for
assert set(PRESET_SETTINGS) == set(config_choices.PRESETS)


def scores_every_position(config: ml_collections.ConfigDict) -> bool:
  """Whether `config.model.type` predicts every window position (latents.max = window)."""
  return config_choices.MODEL_TYPES[config.model.type].scores_every_position


def _scale_latents(c: ml_collections.ConfigDict, window: int) -> None:
  """Rescales latent counts, buckets and the ECP segment length written for the seed window
  to `window`."""
  factor = window / SEED_WINDOW
  scale = lambda n: max(1, int(round(n * factor)))
  c.latents.min, c.latents.max = scale(c.latents.min), scale(c.latents.max)
  c.latents.stair_size = scale(c.latents.stair_size)
  c.latents.buckets = tuple(sorted({scale(b) for b in c.latents.buckets}))
  c.model.ecp_segment_length = scale(c.model.ecp_segment_length)


def apply_preset(c: ml_collections.ConfigDict, preset: str | None) -> ml_collections.ConfigDict:
  """Applies `PRESET_SETTINGS[preset]` and scales the latent counts to its window."""
  preset = preset or ''
  if preset not in PRESET_SETTINGS:
    raise errors.UserError(
      f'Unknown preset {preset!r}; choose one of {config_choices.PRESETS[1:]} (or none), e.g. '
      'configs/curriculum.py:smoke.'
    )
  for key, value in PRESET_SETTINGS[preset].items():
    if isinstance(value, dict):
      c[key].update(value)
    else:
      section, field = key.split('.')
      c[section][field] = value
  if c.model.max_context != SEED_WINDOW:
    # Perceiver AR keeps the 'cpu' latent counts (those of a 256-byte window) at any longer
    # window; models that score every position scale with the window.
    window = c.model.max_context
    if preset == 'cpu_long' and not scores_every_position(c):
      window = PRESET_SETTINGS['cpu']['model']['max_context']
    _scale_latents(c, window)
  # Rotary angles repeat after max_wavelength positions: a long window takes it along.
  c.model.max_wavelength = max(c.model.max_wavelength, float(c.model.max_context))
  return c


def make_config(
  arg: str | None,
  *,
  name: str,
  strategy: str,
  min_latents: int = 64,
  max_latents: int = 512,
  model_type: str = 'perceiver_ar',
  schedule: str = 'linear',
) -> ml_collections.ConfigDict:
  """A run's config: the base config, the run's model type and latent strategy (counts in
  seed units, window 1024), then the preset `arg`."""
  c = base_config()
  c.name = name
  c.model.type = model_type
  c.latents.update(strategy=strategy, min=min_latents, max=max_latents, schedule=schedule)
  return apply_preset(c, arg)
