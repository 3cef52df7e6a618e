"""The experiment config: validation with errors that say what to change, and building the
model a config describes. The keys, types and defaults are declared in `spec` (the frozen
`RunSpec` that `read_spec` returns), the presets in `presets` (`make_config`, `apply_preset`),
the named runs in `named_runs` (`strategy_config`); those names stay importable from here.

`validate` imports no JAX, so a bad setting stops `launch.py` before JAX starts.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import ml_collections

from perceiver_ar_vl import config_checks, config_choices, data, errors, latents, spec, windows

# The presets and the named runs, importable from here as they always were.
from perceiver_ar_vl.config_defaults import base_config as base_config
from perceiver_ar_vl.named_runs import RUNS as RUNS
from perceiver_ar_vl.named_runs import TASK_CONFIGS as TASK_CONFIGS
from perceiver_ar_vl.named_runs import strategy_config as strategy_config
from perceiver_ar_vl.presets import apply_preset as apply_preset
from perceiver_ar_vl.presets import make_config as make_config
from perceiver_ar_vl.presets import scores_every_position as scores_every_position

if TYPE_CHECKING:  # imported where a model is built: validating a config needs no JAX
  from perceiver_ar_vl.models.base import LanguageModel


def create_model(config: ml_collections.ConfigDict | spec.RunSpec) -> LanguageModel:
  """The model that `config.model` describes: `models.MODELS[model.type]` built from the model
  spec's fields that the class declares (the names are the same), the compute dtype as a
  dtype, plus what the class maps itself (`options_from_config`, e.g. ECP's segment length)."""
  import jax.numpy as jnp

  from perceiver_ar_vl import models

  m = spec.from_config(config).model
  model_cls = models.MODELS[m.type]
  declared = {field.name for field in dataclasses.fields(model_cls)}
  kwargs = {key: value for key, value in dataclasses.asdict(m).items() if key in declared}
  kwargs['dtype'] = jnp.dtype(m.dtype)
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


def read_spec(config: ml_collections.ConfigDict | spec.RunSpec) -> spec.RunSpec:
  """The run `config` describes, checked once (`validate`) and frozen into a typed
  `spec.RunSpec`; a RunSpec (already read) is returned as it is. The entry points (launch.py,
  `training.train`, `evaluation.evaluate.evaluate`, `sampling.sample_from_workdir`, the
  experiment runner) call this; what they call reads the spec."""
  if isinstance(config, spec.RunSpec):
    return config
  return spec.from_config(validate(config))


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks every setting that would otherwise fail deep inside JAX; returns the config.

  Cheap (no JAX work): callers run it first so that a bad setting stops a run before it
  compiles anything. Raises errors.UserError naming the key and what to change.
  """
  m, lat, t, e, s = config.model, config.latents, config.train, config.eval, config.sample
  for key in config_choices.CHOICES:  # every enumerated value, named by its key
    value = config
    for part in key.split('.'):
      value = value[part]
    message = config_choices.unknown_choice(key, value)
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
  latents.validate_counts(lat.min, lat.max, lat.buckets, max_context=m.max_context)
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
