"""The base experiment config, its presets, and validation with errors that say what to change.

Every file in `configs/` is `strategy_config(name, arg)`: the base config, its latent
strategy in seed units (window 1024), then the preset named by the config argument
(`configs/curriculum.py:smoke`):
  * ''/'gpu' — the seed experiment: enwik8, window 1024, 6 layers, d_model 512, batch 32;
  * 'cpu'    — a 0.86M-parameter model, window 256, that learns real text on 2 CPU cores;
  * 'cpu_long' — the 'cpu' model and latent counts with a 4096-byte window (16x the context
               for the cost of a longer cross-attend; full-window models scale to 4096);
  * 'smoke'  — a tiny model on the synthetic copy task, under 2 minutes on a 2-core CPU.
A preset with a shorter window scales the strategy's latent counts and the buckets by
window / 1024, so `fixed_512` always means "half the window" and the comparison keeps its shape.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import ml_collections

from perceiver_ar_vl import data, errors, latents
from perceiver_ar_vl.choices import ATTENTION_IMPLS, POSITION_ENCODINGS, REMAT_NAMES

if TYPE_CHECKING:  # imported where a model is built: validating a config needs no JAX
  from perceiver_ar_vl import models

MODEL_TYPES = ('perceiver_ar', 'transformer', 'ecp')
# Model types that score every window position (latents.max must equal the window).
FULL_WINDOW_TYPES = ('transformer', 'ecp')
DTYPES = ('float32', 'bfloat16')
LR_SCHEDULES = ('cosine', 'constant')
PRESETS = ('', 'gpu', 'cpu', 'cpu_long', 'smoke')
LONG_WINDOW = 4096  # the 'cpu_long' window


def base_config() -> ml_collections.ConfigDict:
  """The seed experiment's settings (DESIGN.md "Defaults for the seed experiment")."""
  c = ml_collections.ConfigDict()
  c.name = 'base'
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.type = 'perceiver_ar'  # or 'transformer' (the decoder-only baseline), 'ecp'
  c.model.vocab_size = 256
  c.model.num_layers = 6  # the cross-attend counts as layer 1
  c.model.num_heads = 8
  c.model.d_model = 512
  c.model.mlp_dim = 2048
  c.model.max_context = 1024  # M, the window
  c.model.dropout_rate = 0.1
  c.model.cross_attend_dropout = 0.0  # prefix keys dropped from the cross-attend (training)
  c.model.latent_dropout = 0.0  # active latents dropped as latent-layer keys (training)
  c.model.activation = 'gelu'  # gelu | relu | sq_relu
  c.model.position_encoding = 'rotary'  # rotary | absolute
  c.model.rotary_fraction = 0.5
  c.model.max_wavelength = 10_000.0
  c.model.attention_impl = 'auto'  # auto | einsum | xla | cudnn | chunked
  c.model.dtype = 'float32'  # compute dtype; parameters stay float32
  c.model.remat = 'none'  # none | block | dots: recompute activations in the backward pass
  # ECP (model.type='ecp'; README "ECP"): segment length m (window / 8, as the authors' 8
  # segments), and the authors' three choices, off by default (our standard attention).
  c.model.ecp_segment_length = 128
  c.model.ecp_shared_kv = False  # one projection as keys and values (K = V)
  c.model.ecp_rotary_first_layer_only = False  # rotary on the full head dim, layer 0 only
  c.model.ecp_segment0_out = False  # segment 0 gets its own attention output projection

  c.latents = ml_collections.ConfigDict()
  c.latents.strategy = 'fixed'  # fixed | uniform | curriculum
  c.latents.min = 64
  c.latents.max = 512
  c.latents.buckets = (32, 64, 128, 256, 512, 1024)
  c.latents.schedule = 'linear'  # curriculum: linear | stepwise
  c.latents.warmup_fraction = 0.5  # curriculum: fraction of training spent growing N

  c.data = ml_collections.ConfigDict(dict(data.DEFAULTS))

  c.train = ml_collections.ConfigDict()
  c.train.steps = 100_000
  c.train.batch_size = 32  # global, split over every device of every process
  c.train.grad_accum_steps = 1  # microbatches per step (same global batch, less memory)
  # FSDP: shard parameters and optimizer state over the devices (each holds ~1/devices of
  # them; XLA all-gathers them per step) instead of replicating them. Same results.
  c.train.fsdp = False
  c.train.learning_rate = 3e-4
  c.train.lr_schedule = 'cosine'  # cosine | constant (both after linear warmup)
  c.train.warmup_steps = 1_000
  c.train.b1 = 0.9
  c.train.b2 = 0.999
  c.train.weight_decay = 0.0
  c.train.grad_clip = 1.0
  c.train.z_loss = 1e-4
  # Short-context training: this fraction of training windows (drawn per window and step)
  # keeps only a random-length suffix of L ~ U[1, M] bytes; the rest is left padding that is
  # neither attended nor scored, so latents also learn to predict from a short context.
  c.train.random_truncation = 0.0
  c.train.log_every = 100
  c.train.checkpoint_every = 2_000
  c.train.keep_checkpoints = 3
  c.train.eval_every = 5_000  # validation bits per byte during training; 0 = only at the end
  c.train.eval_max_bytes = 200_000  # bytes of validation scored during training
  c.train.wandb = False  # Weights & Biases logging; imported only when True
  c.train.wandb_project = 'perceiver_ar_vl'

  c.eval = ml_collections.ConfigDict()
  c.eval.num_latents = 0  # 0 = the training maximum latents.max
  c.eval.latents_sweep = ()  # extra latent counts to score, e.g. (32, 64, 128, 256, 512, 1024)
  c.eval.splits = ('validation', 'test')
  c.eval.max_bytes = 0  # 0 = the whole split
  c.eval.batch_size = 64  # windows per evaluation step
  c.eval.mode = 'blocks'  # blocks (every target once) | stride1 (exact, slow)
  c.eval.checkpoint_step = -1  # -1 = the latest checkpoint

  c.sample = ml_collections.ConfigDict()
  c.sample.prompt = 'The '
  c.sample.length = 256
  c.sample.num_latents = 0  # 0 = the training maximum latents.max
  c.sample.temperature = 0.8
  c.sample.top_k = 0
  c.sample.top_p = 0.95
  c.sample.seed = 0
  c.sample.cached = True
  return c


SEED_WINDOW = 1024


def _scale_latents(c: ml_collections.ConfigDict, window: int | None = None) -> None:
  """Rescales latent counts, buckets and the ECP segment length written for the seed window
  to `window` (default `model.max_context`)."""
  factor = (window or c.model.max_context) / SEED_WINDOW
  scale = lambda n: max(1, int(round(n * factor)))
  c.latents.min, c.latents.max = scale(c.latents.min), scale(c.latents.max)
  c.latents.buckets = tuple(sorted({scale(b) for b in c.latents.buckets}))
  c.model.ecp_segment_length = scale(c.model.ecp_segment_length)


def apply_preset(c: ml_collections.ConfigDict, preset: str | None) -> ml_collections.ConfigDict:
  """Shrinks the config to a named scale; '' and 'gpu' keep the seed experiment."""
  preset = preset or ''
  if preset not in PRESETS:
    raise errors.UserError(
      f'Unknown preset {preset!r}; choose one of {PRESETS[1:]} (or none), e.g. '
      'configs/curriculum.py:smoke.'
    )
  if preset in ('', 'gpu'):
    c.model.dtype = 'bfloat16'  # the GPU preset computes in bf16 (float32 parameters, loss)
  if preset in ('cpu', 'cpu_long'):
    c.data.name = 'text_file'
    window = LONG_WINDOW if preset == 'cpu_long' else 256
    c.model.update(
      num_layers=4, num_heads=4, d_model=128, mlp_dim=512, max_context=window, dropout_rate=0.0
    )
    # Perceiver AR keeps the 'cpu' latent counts (those of a 256-byte window) at any window;
    # the full-window models score every position, so they scale with the window.
    _scale_latents(c, window if c.model.type in FULL_WINDOW_TYPES else 256)
    c.train.update(
      steps=2_000,
      batch_size=16,
      learning_rate=2e-3,
      warmup_steps=100,
      log_every=50,
      checkpoint_every=500,
      eval_every=250,
      eval_max_bytes=16_384,
    )
    c.eval.update(latents_sweep=(8, 16, 32, 64, 128, 256), max_bytes=65_536)
    if preset == 'cpu_long':  # each window costs its whole 4096-byte cross-attend: few N
      c.eval.latents_sweep = (32, 128, 256)
  elif preset == 'smoke':
    c.data.name = 'copy'
    c.model.update(
      num_layers=2, num_heads=4, d_model=64, mlp_dim=128, max_context=128, dropout_rate=0.0
    )
    _scale_latents(c)
    c.train.update(
      steps=800,
      batch_size=16,
      learning_rate=3e-3,
      warmup_steps=50,
      log_every=50,
      checkpoint_every=200,
      eval_every=0,
      eval_max_bytes=8_192,
      z_loss=0.0,
    )
    c.eval.update(latents_sweep=(8, 16, 32, 64, 128), max_bytes=8_192, batch_size=8)
    c.sample.update(length=64, prompt='abcdefgh', temperature=0.0)
  return c


# The strategies of the comparison, in seed units (window 1024); configs/<name>.py use these.
STRATEGY_SPECS = {
  'fixed_256': dict(strategy='fixed', min_latents=256, max_latents=256),
  'fixed_512': dict(strategy='fixed', min_latents=512, max_latents=512),
  'uniform': dict(strategy='uniform', min_latents=64, max_latents=512),
  'curriculum': dict(strategy='curriculum', min_latents=64, max_latents=512),
  'curriculum_stepwise': dict(
    strategy='curriculum', min_latents=64, max_latents=512, schedule='stepwise'
  ),
  'transformer': dict(
    strategy='fixed', min_latents=1024, max_latents=1024, model_type='transformer'
  ),
  'ecp': dict(strategy='fixed', min_latents=1024, max_latents=1024, model_type='ecp'),
}


def strategy_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """The config of strategy `name` (a key of STRATEGY_SPECS) at preset `arg`."""
  if name not in STRATEGY_SPECS:
    raise errors.UserError(
      f'Unknown strategy config {name!r}; choose one of {tuple(STRATEGY_SPECS)}.'
    )
  return make_config(arg, name=name, **STRATEGY_SPECS[name])


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
  """A strategy's config: base, latents in seed units (window 1024), then the preset `arg`."""
  c = base_config()
  c.name = name
  c.model.type = model_type
  c.latents.update(strategy=strategy, min=min_latents, max=max_latents, schedule=schedule)
  return apply_preset(c, arg)


def create_model(
  config: ml_collections.ConfigDict,
) -> models.PerceiverAR | models.Transformer | models.ECP:
  """The linen module that `config.model` describes."""
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
    attention_impl=m.attention_impl,
    dtype=jnp.dtype(m.dtype),
    remat=m.remat,
  )
  if m.type == 'transformer':
    return models.Transformer(**kwargs)
  if m.type == 'ecp':
    return models.ECP(
      **kwargs,
      segment_length=m.ecp_segment_length,
      ecp_shared_kv=m.ecp_shared_kv,
      ecp_rotary_first_layer_only=m.ecp_rotary_first_layer_only,
      ecp_segment0_out=m.ecp_segment0_out,
    )
  return models.PerceiverAR(
    **kwargs, cross_attend_dropout=m.cross_attend_dropout, latent_dropout=m.latent_dropout
  )


def _choice(value, choices, key: str) -> None:
  if value not in choices:
    raise errors.UserError(
      f'Unknown {key}={value!r}; choose one of {tuple(choices)} (--config.{key}=...).'
    )


def _at_least(section: ml_collections.ConfigDict, name: str, keys: tuple[str, ...], low) -> None:
  """Each `section[key]` must be >= low (e.g. a step count, a size)."""
  for key in keys:
    if section[key] < low:
      raise errors.UserError(
        f'{name}.{key} must be >= {low}, got {section[key]}; set --config.{name}.{key}.'
      )


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
  _choice(m.type, MODEL_TYPES, 'model.type')
  _choice(m.dtype, DTYPES, 'model.dtype')
  _choice(m.attention_impl, ATTENTION_IMPLS, 'model.attention_impl')
  _choice(m.remat, REMAT_NAMES, 'model.remat')
  if m.type == 'ecp' and m.remat != 'none':
    raise errors.UserError("model.remat is not supported for ECP yet; set model.remat='none'.")
  if m.attention_impl == 'cudnn' and m.dtype == 'float32':
    raise errors.UserError(
      "model.attention_impl='cudnn' needs bf16 inputs (cuDNN flash attention has no float32 "
      "kernel): set --config.model.dtype=bfloat16, or use attention_impl='auto'."
    )
  _choice(m.position_encoding, POSITION_ENCODINGS, 'model.position_encoding')
  _choice(config.data.name, data.NAMES, 'data.name')
  _choice(t.lr_schedule, LR_SCHEDULES, 'train.lr_schedule')
  _choice(e.mode, ('blocks', 'stride1'), 'eval.mode')
  for split in e.splits:
    if split not in data.SPLITS:
      raise errors.UserError(f'eval.splits holds {split!r}; choose from {data.SPLITS}.')
  _at_least(m, 'model', ('num_layers', 'num_heads', 'd_model', 'mlp_dim'), 1)
  _at_least(m, 'model', ('max_context',), 2)
  if m.d_model % m.num_heads:
    raise errors.UserError(
      f'model.d_model={m.d_model} must be divisible by model.num_heads={m.num_heads}.'
    )
  if m.vocab_size < data.VOCAB_SIZE:
    raise errors.UserError(
      f'model.vocab_size={m.vocab_size} cannot hold byte tokens; use >= {data.VOCAB_SIZE}.'
    )
  latents.validate_strategy(
    lat.strategy, lat.min, lat.max, lat.buckets, lat.schedule, max_context=m.max_context
  )
  if m.type in FULL_WINDOW_TYPES and lat.max != m.max_context:
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
  _at_least(
    t,
    'train',
    ('steps', 'batch_size', 'grad_accum_steps', 'log_every', 'checkpoint_every'),
    1,
  )
  _at_least(t, 'train', ('keep_checkpoints',), 1)
  if not isinstance(t.fsdp, bool):
    raise errors.UserError(
      f'train.fsdp={t.fsdp!r} must be True or False (--config.train.fsdp=True shards '
      'parameters and optimizer state over the devices).'
    )
  _at_least(t, 'train', ('warmup_steps', 'eval_every', 'eval_max_bytes'), 0)
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
  _at_least(e, 'eval', ('batch_size',), 1)
  _at_least(e, 'eval', ('max_bytes',), 0)
  if e.checkpoint_step < -1:
    raise errors.UserError(
      f'eval.checkpoint_step={e.checkpoint_step}: use a saved step, or -1 for the latest.'
    )
  _check_latent_count(s.num_latents, 'sample.num_latents', m.max_context, zero_ok=True)
  _at_least(s, 'sample', ('length',), 1)
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
