"""The experiment config: every key with its default, the presets, the named runs, building
the model, and validation with errors that say what to change.

A config file in `configs/` is one named run (`make_config` with the run's own latent
strategy and model type, written out in the file) at the preset its argument names
(`configs/curriculum.py:smoke`). The presets (`PRESET_SETTINGS`):
  * ''/'gpu' — the seed experiment: enwik8, window 1024, 6 layers, d_model 512, batch 32, bf16;
  * 'cpu'    — a 0.86M-parameter model, window 256, that learns real text on 2 CPU cores;
  * 'cpu_long' — the 'cpu' model and latent counts with a 4096-byte window (16x the context
               for the cost of a longer cross-attend; full-window models scale to 4096);
  * 'smoke'  — a tiny model on the synthetic copy task, under 2 minutes on a 2-core CPU.
Runs give their latent counts in seed units (window 1024); a preset with another window
scales them and the buckets by window / 1024 (Perceiver AR under 'cpu_long': by 256 / 1024),
so `fixed_512` always means "half the window" and the comparison keeps its shape.

`validate` imports no JAX, so a bad setting stops `launch.py` before JAX starts.
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING

import ml_collections

from perceiver_ar_vl import config_checks, config_choices, data, errors, latents, windows
from perceiver_ar_vl.config_defaults import PRESET_SETTINGS, base_config

if TYPE_CHECKING:  # imported where a model is built: validating a config needs no JAX
  from perceiver_ar_vl.models.base import LanguageModel

# The named runs: each is `configs/<name>.py` (what `strategy_config` and the experiment
# runner load); 'fixed'/'uniform'/'curriculum' is a run's latent strategy.
RUNS = (
  'fixed_512',
  'fixed_256',
  'uniform',
  'curriculum',
  'curriculum_stepwise',
  'transformer',
  'ecp',
  'long_text',  # fixed_512's latents, a 4x window and n-gram match heads
)
# configs/ files that are not runs of the strategy comparison: tasks with presets of their own.
TASK_CONFIGS = ('long_copy', 'recall')
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
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


def strategy_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """The config of the named run `name` (one of RUNS: `configs/<name>.py`) at preset `arg`."""
  if name not in RUNS:
    raise errors.UserError(f'Unknown run config {name!r}; choose one of {RUNS}.')
  path = os.path.join(CONFIGS_DIR, f'{name}.py')
  if not os.path.isfile(path):
    raise errors.MissingFileError(
      f'The run config {path} is missing: the named runs are the files in configs/ of a '
      'source checkout; install it with pip install -e . from the repository.'
    )
  spec = importlib.util.spec_from_file_location(f'perceiver_ar_vl_configs_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def create_model(config: ml_collections.ConfigDict) -> LanguageModel:
  """The model that `config.model` describes (its class from the `models.MODELS` registry)."""
  import jax.numpy as jnp

  from perceiver_ar_vl import models

  m = config.model
  kwargs = dict(
    vocab_size=m.vocab_size,
    num_layers=m.num_layers,
    num_heads=m.num_heads,
    d_model=m.d_model,
    mlp_dim=m.mlp_dim,
    max_context=m.max_context,
    dropout_rate=m.dropout_rate,
    activation=m.activation,
    position_encoding=m.position_encoding,
    rotary_fraction=m.rotary_fraction,
    max_wavelength=m.max_wavelength,
    rotary_convention=m.rotary_convention,
    position_origin=m.position_origin,
    layer_norm_epsilon=m.layer_norm_epsilon,
    attention_impl=m.attention_impl,
    dtype=jnp.dtype(m.dtype),
    remat=m.remat,
  )
  model_cls = models.MODELS[m.type]
  return model_cls(**kwargs, **model_cls.options_from_config(m))


def _check_latent_count(n: int, key: str, window: int, zero_ok: bool = False) -> None:
  """A latent count in [1, M] (0 allowed when it means 'the training maximum')."""
  if zero_ok and n == 0:
    return
  if not 1 <= n <= window:
    default = ' (0 = the training maximum latents.max)' if zero_ok else ''
    raise errors.UserError(
      f'{key}={n} must be in [1, model.max_context={window}]{default}: a window of {window} '
      'bytes holds at most that many latents.'
    )


def _probability(section: ml_collections.ConfigDict, name: str, keys: tuple[str, ...]) -> None:
  """Each `section[key]` must be a probability in [0, 1)."""
  for key in keys:
    if not 0 <= section[key] < 1:
      raise errors.UserError(
        f'{name}.{key}={section[key]} must be a probability in [0, 1); set '
        f'--config.{name}.{key} (0 turns it off).'
      )


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks every setting that would otherwise fail deep inside JAX; returns the config.

  Cheap (no JAX work): callers run it first so that a bad setting stops a run before it
  compiles anything. Raises errors.UserError naming the key and what to change.
  """
  m, lat, t, e, s = config.model, config.latents, config.train, config.eval, config.sample
  for key in config_choices.CHOICES:  # every enumerated value, named by its key
    section, field = key.split('.')
    message = config_choices.unknown_choice(key, config[section][field])
    if message:
      raise errors.UserError(message)
  if m.type == 'ecp' and m.remat != 'none':
    raise errors.UserError("model.remat is not supported for ECP yet; set model.remat='none'.")
  if m.attention_impl == 'cudnn' and m.dtype == 'float32':
    raise errors.UserError(
      "model.attention_impl='cudnn' needs bf16 inputs (cuDNN flash attention has no float32 "
      "kernel): set --config.model.dtype=bfloat16, or use attention_impl='auto'."
    )
  for split in e.splits:
    if split not in config_choices.SPLITS:
      raise errors.UserError(f'eval.splits holds {split!r}; choose from {config_choices.SPLITS}.')
  config_checks.validate_model(config)
  config_checks.validate_tooling(config)
  latents.validate_strategy(
    lat.strategy, lat.min, lat.max, lat.buckets, lat.schedule, max_context=m.max_context
  )
  windows.validate(config)
  if scores_every_position(config) and lat.max != m.max_context:
    raise errors.UserError(
      f'The {m.type} model predicts every window position: set '
      f'latents.max = model.max_context = {m.max_context} (got {lat.max}).'
    )
  if m.type == 'ecp' and (m.ecp_segment_length < 1 or m.max_context % m.ecp_segment_length):
    raise errors.UserError(
      f'model.ecp_segment_length={m.ecp_segment_length} must divide the window '
      f'model.max_context={m.max_context} into whole segments; pick a divisor (e.g. '
      f'{max(1, m.max_context // 8)} for 8 segments).'
    )
  config_checks.at_least(
    t,
    'train',
    ('steps', 'batch_size', 'grad_accum_steps', 'log_every', 'checkpoint_every'),
    1,
  )
  config_checks.validate_keeping(t)
  config_checks.at_least(config.data, 'data', ('record_bytes',), 1)
  config_checks.at_least(lat, 'latents', ('stair_size', 'stairs'), 1)
  config_checks.at_least(config.data, 'data', ('in_memory_bytes', 'copy_length'), 0)
  if any(not isinstance(w, int) or w < 2 for w in e.windows):
    raise errors.UserError(
      f'eval.windows={tuple(e.windows)} must hold window sizes >= 2, e.g. '
      '--config.eval.windows="(1024,8192,131072)", or () for model.max_context.'
    )
  data.check_copy_config(config)
  if not isinstance(t.fsdp, bool):
    raise errors.UserError(
      f'train.fsdp={t.fsdp!r} must be True or False (--config.train.fsdp=True shards '
      'parameters and optimizer state over the devices).'
    )
  config_checks.at_least(t, 'train', ('warmup_steps', 'eval_every', 'eval_max_bytes'), 0)
  _probability(m, 'model', ('dropout_rate', 'cross_attend_dropout', 'latent_dropout'))
  _probability(t, 'train', ('random_truncation',))
  if t.batch_size % t.grad_accum_steps:
    raise errors.UserError(
      f'train.batch_size={t.batch_size} must be divisible by '
      f'train.grad_accum_steps={t.grad_accum_steps} (each step splits the batch into that '
      'many equal microbatches); change one of them.'
    )
  _check_latent_count(e.num_latents, 'eval.num_latents', m.max_context, zero_ok=True)
  for n in e.latents_sweep:
    if not 1 <= n <= m.max_context:
      raise errors.UserError(
        f'eval.latents_sweep holds {n}, outside [1, model.max_context={m.max_context}]; '
        'drop it from the sweep.'
      )
  config_checks.at_least(e, 'eval', ('batch_size',), 1)
  config_checks.at_least(e, 'eval', ('max_bytes',), 0)
  config_checks.validate_checkpoint_step(e.checkpoint_step)
  _check_latent_count(s.num_latents, 'sample.num_latents', m.max_context, zero_ok=True)
  config_checks.at_least(s, 'sample', ('length',), 1)
  if s.temperature < 0:
    raise errors.UserError(
      f'sample.temperature={s.temperature} must be >= 0 (0 means greedy, 1 samples the '
      'model as is).'
    )
  if s.top_k < 0:
    raise errors.UserError(f'sample.top_k={s.top_k} must be >= 0 (0 keeps every byte).')
  if not 0 < s.top_p <= 1:
    raise errors.UserError(
      f'sample.top_p={s.top_p} must be in (0, 1] (1 keeps every byte; 0.9 keeps the most '
      'likely bytes that hold 90% of the probability).'
    )
  return config
