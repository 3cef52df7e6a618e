"""The named runs of the strategy comparison, declared once here (so an installed package has
them): each is a model type and a latent strategy, in seed units, at any preset. The files
`configs/<name>.py` are each `strategy_config('<name>', arg)` with the run described in their
docstring; the experiment runner compares the runs by name.
"""

from __future__ import annotations

import ml_collections

from perceiver_ar_vl import errors
from perceiver_ar_vl.presets import make_config

# name -> make_config's settings (latent counts in seed units, window 1024).
RUN_SETTINGS = {
  'fixed_512': dict(strategy='fixed', min_latents=512, max_latents=512),
  'fixed_256': dict(strategy='fixed', min_latents=256, max_latents=256),
  'uniform': dict(strategy='uniform', min_latents=64, max_latents=512),
  'curriculum': dict(strategy='curriculum', min_latents=64, max_latents=512),
  'curriculum_stepwise': dict(
    strategy='curriculum', min_latents=64, max_latents=512, schedule='stepwise'
  ),
  # Every position scored: N = the window.
  'transformer': dict(
    model_type='transformer', strategy='fixed', min_latents=1024, max_latents=1024
  ),
  'ecp': dict(model_type='ecp', strategy='fixed', min_latents=1024, max_latents=1024),
  # fixed_512's latents at its preset's window, the window made LONG_TEXT_WINDOW_FACTOR x
  # longer and read through n-gram match heads (docs/match_heads.md).
  'long_text': dict(strategy='fixed', min_latents=512, max_latents=512),
}
RUNS = tuple(RUN_SETTINGS)
# configs/ files that are not runs of the strategy comparison: tasks with presets of their own.
TASK_CONFIGS = ('long_copy', 'recall')
LONG_TEXT_WINDOW_FACTOR = 4  # the window against the preset's (cpu: 256 -> 1024)
LONG_TEXT_NGRAMS = (4, 8, 16)


def _long_text(c: ml_collections.ConfigDict) -> None:
  window = c.model.max_context * LONG_TEXT_WINDOW_FACTOR
  c.model.update(max_context=window, match_ngrams=LONG_TEXT_NGRAMS)
  c.model.max_wavelength = max(c.model.max_wavelength, float(window))
  if c.data.name == 'copy':
    c.data.copy_length = window


def strategy_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """The config of the named run `name` (one of RUNS) at preset `arg`."""
  if name not in RUN_SETTINGS:
    raise errors.UserError(f'Unknown run config {name!r}; choose one of {RUNS}.')
  c = make_config(arg, name=name, **RUN_SETTINGS[name])
  if name == 'long_text':
    _long_text(c)
  return c
