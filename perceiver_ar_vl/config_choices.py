"""Every enumerated config value, declared once and importable without JAX.

`config_lib.validate` checks a config against these before anything imports JAX, so a bad
setting stops `launch.py` in a fraction of a second with one `error:` line; the modules that
implement a setting (the kernels, the models, the latent strategies, the datasets, the
evaluation) take its names from here and map them to code, so a name exists in one place.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ModelType:
  """A model registry entry: where its linen module lives and what a config needs to know
  about it before JAX is imported.

  module, name: `importlib.import_module(module).<name>` is the class (a `models.LanguageModel`).
  scores_every_position: the model predicts every window position (no latents), so a run
    trains with latents.max = model.max_context; its class says the same
    (`LanguageModel.scores_every_position`, tested).
  label: how reports name its runs.
  """

  module: str
  name: str
  scores_every_position: bool
  label: str


# model.type -> the registry entry. A new model is its module in models/ and one entry here.
MODEL_TYPES = {
  'perceiver_ar': ModelType(
    'perceiver_ar_vl.models.perceiver_ar', 'PerceiverAR', False, 'Perceiver AR'
  ),
  'transformer': ModelType(
    'perceiver_ar_vl.models.transformer', 'Transformer', True, 'Transformer'
  ),
  'ecp': ModelType('perceiver_ar_vl.models.ecp', 'ECP', True, 'ECP'),
}

# model.*
ACTIVATIONS = ('gelu', 'relu', 'sq_relu')  # layers.blocks maps them to functions
ATTENTION_IMPLS = ('auto', 'einsum', 'xla', 'cudnn', 'chunked')  # layers.kernels
POSITION_ENCODINGS = ('rotary', 'absolute', 'sinusoidal')  # absolute: a learned table
ROTARY_CONVENTIONS = ('half', 'interleaved')  # layers.rotary: ours, the original's
# Where absolute / sinusoidal table positions count from (models.base.embed_tokens): the
# window's first position, or each example's first valid byte (after left padding).
POSITION_ORIGINS = ('window', 'first_byte')
REMAT_NAMES = ('none', 'block', 'dots')  # models.base.REMAT_POLICIES
DTYPES = ('float32', 'bfloat16')

# latents.*
STRATEGIES = ('fixed', 'uniform', 'curriculum')  # latents.num_latents_at
SCHEDULES = ('linear', 'stepwise', 'staircase')  # curriculum shapes

# window.*
WINDOW_SCHEDULES = ('none', 'linear', 'stepwise', 'fixed')  # windows.window_at

# data.*
DATA_NAMES = ('enwik8', 'text_file', 'copy', 'recall')
SPLITS = ('train', 'validation', 'test')
COPY_MODES = ('copy', 'mirror')
COPY_LENGTH_SCHEDULES = ('none', 'linear', 'stepwise', 'staircase')  # data.copy_settings

# train.*, eval.*
LR_SCHEDULES = ('cosine', 'constant')
EVAL_MODES = ('blocks', 'stride1')  # evaluate.bits_per_byte
# eval.checkpoint_step's one word (else a step number): checkpoint_keeping.best_step
BEST_CHECKPOINT = 'best'

# cpu_execution: a CPU step runs on the calling thread with malloc keeping its freed temporaries
# (runtime.configure_cpu_execution), or JAX's default asynchronous dispatch.
CPU_EXECUTIONS = ('inline', 'async')

# The config argument of configs/*.py ('' = the seed experiment, the same as 'gpu').
PRESETS = ('', 'gpu', 'cpu', 'cpu_long', 'smoke')

# Every enumerated key: config path -> its allowed values (what validate checks).
CHOICES = {
  'model.type': tuple(MODEL_TYPES),
  'model.activation': ACTIVATIONS,
  'model.attention_impl': ATTENTION_IMPLS,
  'model.position_encoding': POSITION_ENCODINGS,
  'model.rotary_convention': ROTARY_CONVENTIONS,
  'model.position_origin': POSITION_ORIGINS,
  'model.remat': REMAT_NAMES,
  'model.dtype': DTYPES,
  'latents.strategy': STRATEGIES,
  'latents.schedule': SCHEDULES,
  'window.schedule': WINDOW_SCHEDULES,
  'data.name': DATA_NAMES,
  'data.copy_mode': COPY_MODES,
  'data.copy_length_schedule': COPY_LENGTH_SCHEDULES,
  'train.lr_schedule': LR_SCHEDULES,
  'eval.mode': EVAL_MODES,
  'cpu_execution': CPU_EXECUTIONS,
}


def unknown_choice(key: str, value) -> str | None:
  """The one-line message for `value` outside `CHOICES[key]`; None when it is allowed."""
  allowed = CHOICES[key]
  if value in allowed:
    return None
  return f'Unknown {key}={value!r}; choose one of {allowed} (--config.{key}=...).'
