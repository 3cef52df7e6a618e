"""Pins perceiver_ar_vl/config_lib.py, config_defaults.py, config_choices.py and configs/:
presets, scaling, validation errors, and every enumerated setting, checked by `validate` and
implemented by the code that reads it."""

import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

from perceiver_ar_vl import (
  cli,
  config_choices,
  config_lib,
  data,
  errors,
  latents,
  models,
  runtime,
  spec,
  step_plan,
  windows,
)
from perceiver_ar_vl.data import sources
from perceiver_ar_vl.evaluation import evaluate
from perceiver_ar_vl.layers import blocks, kernels, rotary
from perceiver_ar_vl.layers.masks import causal_mask
from perceiver_ar_vl.models import base
from perceiver_ar_vl.runs import train_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config_file(name, arg=None):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert 'python launch.py --config=configs/' in module.__doc__  # the docstring has its command
  return module.get_config(arg)


DATA_OF_PRESET = {None: 'enwik8', 'gpu': 'enwik8', 'cpu': 'text_file', 'cpu_long': 'text_file'}


@pytest.mark.parametrize('name', config_lib.RUNS)
@pytest.mark.parametrize('arg', [None, *config_choices.PRESETS[1:]])
def test_every_config_and_preset_validates(name, arg):
  config = config_lib.validate(load_config_file(name, arg))
  assert config.name == name
  assert config.latents.max <= config.model.max_context
  assert config.data.name == {**DATA_OF_PRESET, 'smoke': 'copy'}[arg]


def test_presets_scale_latents_with_the_window():
  seed, smoke = (
    config_lib.strategy_config('uniform'),
    config_lib.strategy_config('uniform', 'smoke'),
  )
  assert (seed.latents.min, seed.latents.max, seed.model.max_context) == (64, 512, 1024)
  assert smoke.latents.max / smoke.model.max_context == seed.latents.max / seed.model.max_context
  assert smoke.latents.buckets[-1] == smoke.model.max_context
  transformer = config_lib.strategy_config('transformer', 'cpu')
  assert transformer.latents.max == transformer.model.max_context
  assert isinstance(config_lib.create_model(transformer), models.Transformer)
  assert isinstance(config_lib.create_model(seed), models.PerceiverAR)


@pytest.mark.parametrize(
  'key,value,match',
  [
    ('latents.strategy', 'random', "Unknown latents.strategy='random'"),
    ('latents.schedule', 'cosine', "Unknown latents.schedule='cosine'"),
    ('latents.max', 2048, 'exceeds the window'),
    ('latents.buckets', (32, 64), 'No bucket can hold 512'),
    ('latents.buckets', (), 'empty'),
    ('latents.buckets', (128, 64, 512), 'strictly increasing'),
    ('latents.min', 0, '1 <= latents.min'),
    ('model.type', 'rnn', "Unknown model.type='rnn'"),
    ('model.dtype', 'float16', "Unknown model.dtype='float16'"),
    ('model.attention_impl', 'flash', 'Unknown model.attention_impl'),
    ('model.num_heads', 7, 'divisible by model.num_heads'),
    ('data.name', 'wiki', "Unknown data.name='wiki'"),
    ('train.batch_size', 0, 'train.batch_size must be >= 1'),
    ('train.grad_accum_steps', 3, 'divisible by train.grad_accum_steps'),
    ('eval.latents_sweep', (16, 4096), 'outside'),
    ('train.keep_every', 3, 'train.keep_every=3 must be a multiple of train.checkpoint_every'),
    ('train.keep_best', -1, 'train.keep_best must be >= 0'),
    ('eval.checkpoint_step', 'bestest', "eval.checkpoint_step='bestest': use a saved step"),
    ('eval.checkpoint_step', -2, 'eval.checkpoint_step=-2'),
    ('eval.checkpoint_step', 7.5, 'eval.checkpoint_step=7.5'),
    ('eval.checkpoint_step', True, 'eval.checkpoint_step=True'),
  ],
)
def test_bad_settings_are_clear_errors(key, value, match):
  config = config_lib.strategy_config('uniform')
  section, field = key.split('.')
  config[section][field] = value
  with pytest.raises(ValueError, match=match):
    config_lib.validate(config)


def test_unknown_preset_and_run_are_clear_errors():
  with pytest.raises(errors.UserError, match="Unknown preset 'tpu'"):
    config_lib.strategy_config('uniform', 'tpu')
  with pytest.raises(errors.UserError, match="Unknown run config 'fixed_128'"):
    config_lib.strategy_config('fixed_128')
  configs = os.path.join(REPO, 'configs')
  files = [f.removesuffix('.py') for f in os.listdir(configs) if f.endswith('.py')]
  # every named run is its configs/ file; the other files are tasks with their own presets
  assert sorted(config_lib.RUNS + config_lib.TASK_CONFIGS) == sorted(files)
  for name in config_lib.RUNS:  # each file is the run the package declares
    spec = importlib.util.spec_from_file_location(f'config_{name}', f'{configs}/{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for preset in ('smoke', 'cpu'):
      assert module.get_config(preset) == config_lib.strategy_config(name, preset), name


def test_cpu_long_preset_keeps_the_cpu_latents_at_a_4096_window():
  cpu, long = (
    config_lib.strategy_config('curriculum', 'cpu'),
    config_lib.strategy_config('curriculum', 'cpu_long'),
  )
  assert long.model.max_context == 4096 and cpu.model.max_context == 256
  assert (long.latents.min, long.latents.max, long.latents.buckets) == (
    cpu.latents.min,
    cpu.latents.max,
    cpu.latents.buckets,
  )
  assert long.model.d_model == cpu.model.d_model and long.model.num_layers == cpu.model.num_layers
  assert config_lib.strategy_config('transformer', 'cpu_long').latents.max == 4096


def test_eval_checkpoint_step_takes_a_step_or_best(capsys):
  """In the config and on the command line (cli.check_override before absl parses it)."""
  config = config_lib.strategy_config('uniform', 'smoke')
  for value in ('best', 7, 0, -1):
    config.eval.checkpoint_step = value
    config_lib.validate(config)
    cli.check_override('config', config, f'--config.eval.checkpoint_step={value}')
  with pytest.raises(SystemExit):  # other int settings still refuse a word
    cli.check_override('config', config, '--config.train.steps=best')
  assert 'does not parse: train.steps takes an int' in capsys.readouterr().err


def test_unknown_keys_are_rejected_by_the_locked_config():
  config = config_lib.strategy_config('curriculum', 'smoke')
  config.lock()
  with pytest.raises(AttributeError, match='num_layer'):
    config.model.num_layer = 3


def test_validating_a_config_imports_no_jax():
  """launch.py rejects a bad setting before importing JAX (a fraction of a second): building
  and validating a config file's config must not import jax."""
  code = (
    'import sys\n'
    'from perceiver_ar_vl import config_lib\n'
    "config_lib.validate(config_lib.strategy_config('curriculum', 'cpu'))\n"
    "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax')))\n"
  )
  run = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO)
  assert run.returncode == 0, run.stderr[-2000:]
  assert run.stdout.strip() == '[]'


# ------------------------------------------------- enumerated settings (config_choices.CHOICES)


@pytest.mark.parametrize('key', list(config_choices.CHOICES))
def test_every_enumerated_key_is_validated(key):
  """A value outside CHOICES[key] stops validate with one line naming the key and its flag."""
  config = config_lib.strategy_config('uniform', 'smoke')
  *sections, field = key.split('.')
  section = config
  for name in sections:
    section = section[name]
  assert field in section, f'{key} is not a config key'
  assert section[field] in config_choices.CHOICES[key]  # the default is allowed
  section[field] = 'bogus'
  with pytest.raises(errors.UserError) as raised:
    config_lib.validate(config)
  message = str(raised.value)
  assert message.startswith(f"Unknown {key}='bogus'; choose one of ")
  assert f'--config.{key}=' in message and '\n' not in message


def _tiny_model(**model_settings):
  config = tiny_config('fixed', model_type=model_settings.pop('type', 'perceiver_ar'))
  config.model.update(model_settings)
  return config_lib.create_model(config_lib.validate(config))


def _model_runs(model, grad: bool = False):
  """One jitted forward (and, with `grad`, its gradient) of `model` at bucket 8: finite logits
  of the byte vocabulary."""
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, model.max_context), 0, 256)
  variables = model.init_variables(jax.random.PRNGKey(1))
  logits = jax.jit(lambda v: model.forward(v, tokens, 8, 8))(variables)
  assert logits.shape == (2, 8, 256) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()
  if grad:
    loss = lambda v: jnp.sum(model.forward(v, tokens, 8, 8, rngs={'dropout': jax.random.key(2)}))
    grads = jax.jit(jax.grad(loss))(variables)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def _check_model_type(name):
  entry, cls = config_choices.MODEL_TYPES[name], models.MODELS[name]
  assert issubclass(cls, models.LanguageModel) and cls.__name__ == entry.name
  assert cls.scores_every_position == entry.scores_every_position
  model = _tiny_model(type=name)
  assert type(model) is cls
  _model_runs(model)


def _check_activation(name):
  x = jnp.linspace(-2.0, 2.0, 9)
  assert np.isfinite(np.asarray(blocks.ACTIVATION_FNS[name](x))).all()
  _model_runs(_tiny_model(activation=name))


def _check_attention_impl(name):
  q, k, v = jax.random.normal(jax.random.PRNGKey(3), (3, 2, 8, 2, 4))
  positions = jnp.arange(8)[None]
  mask = causal_mask(positions, positions, jnp.ones((1, 8), bool), aligned=True)
  assert kernels.resolve_impl(name, q, k) in config_choices.ATTENTION_IMPLS
  if name == 'cudnn':  # cuDNN flash attention: GPU and bf16 only; 'auto' picks it there
    assert kernels.select_impl('gpu', jnp.bfloat16, 2, 2, 8, 8, 64) == 'cudnn'
    if jax.default_backend() != 'gpu':
      return
    q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
  want = kernels.einsum_attention(q, k, v, mask.dense())
  got = kernels.dot_product_attention(q, k, v, mask, impl=name)
  atol = 2e-2 if name == 'cudnn' else 1e-5
  np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=atol)
  if name != 'cudnn':
    _model_runs(_tiny_model(attention_impl=name))


def _check_rotary_convention(name):
  """Rotated queries and keys score by their offset alone, in either convention."""
  q, k = jax.random.normal(jax.random.PRNGKey(5), (2, 1, 1, 1, 8))
  rotate = lambda x, p: rotary.apply_rotary(x, jnp.array([[p]]), 1.0, 64.0, name)
  scores = [float(jnp.sum(rotate(q, p + 3) * rotate(k, p))) for p in (0, 5, 11)]
  np.testing.assert_allclose(scores, scores[0], rtol=1e-5)
  other = 'half' if name != 'half' else 'interleaved'
  assert not np.allclose(rotate(q, 3), rotary.apply_rotary(q, jnp.array([[3]]), 1.0, 64.0, other))
  _model_runs(_tiny_model(rotary_convention=name))


def _check_position_origin(name):
  """Both origins build and run a model; only 'first_byte' marks left padding for the tables
  (tests/test_models.py checks the positions it gives)."""
  model = _tiny_model(position_encoding='absolute', position_origin=name)
  _model_runs(model)
  marked = model.mark_padding(jnp.array([[5, 6, 7]]), jnp.array([[False, True, True]]))
  assert marked.tolist() == ([[5, 6, 7]] if name == 'window' else [[-1, 6, 7]])


def _check_remat(name):
  assert name in base.REMAT_POLICIES
  _model_runs(_tiny_model(remat=name), grad=True)  # remat acts in the backward pass


def _check_dtype(name):
  model = _tiny_model(dtype=name)
  assert model.dtype == jnp.dtype(name)
  _model_runs(model)


def _latent_counts(strategy, schedule='linear'):
  config = tiny_config(strategy, steps=20)
  config.latents.schedule = schedule
  config_lib.validate(config)
  return [latents.latent_count(config, step) for step in range(20)]


def _check_strategy(name):
  counts = _latent_counts(name)
  assert all(4 <= n <= 16 for n in counts)
  assert {
    'fixed': lambda: set(counts) == {16},
    'uniform': lambda: len(set(counts)) > 3 and counts != sorted(counts),
    'curriculum': lambda: counts == sorted(counts) and counts[0] == 4 and counts[-1] == 16,
  }[name]()


def _check_schedule(name):
  """Every curriculum shape grows N from latents.min without passing latents.max."""
  counts = _latent_counts('curriculum', name)
  assert counts == sorted(counts) and counts[0] == 4 < counts[-1] <= 16
  if name == 'linear':  # every integer, reaching the maximum after warmup_fraction (half)
    assert counts[10:] == [16] * 10 and len(set(counts)) > 3
  if name == 'stepwise':  # bucket-sized stages only
    assert set(counts) == {4, 8, 16}


def _check_window_schedule(name):
  """Every window schedule keeps W in [window.min, M]; the curricula grow it to M, 'fixed'
  stays at window.min."""
  config = tiny_config('fixed', steps=20)
  config.latents.update(min=8, max=8, buckets=(8,))
  config.window.update(schedule=name, min=8)
  config_lib.validate(config)
  sizes = [windows.window_at(config, step) for step in range(20)]
  assert sizes == sorted(sizes) and set(sizes) <= {8, 16, 32}
  assert sizes[-1] == (8 if name == 'fixed' else 32)
  assert (sizes[0] == 32) == (name == 'none')
  assert step_plan.plan(config).windows_ahead(0) == sorted(set(sizes))


def _check_data_name(name, tmp_path):
  config = {**data.DEFAULTS, 'name': name, 'data_dir': str(tmp_path / 'tfds')}
  if name == 'enwik8':  # routed to the enwik8 reader, which checks the archive first
    (tmp_path / 'enwik8.zip').write_bytes(b'not a zip archive')
    with pytest.raises(sources.SourceError, match='not a valid zip archive'):
      data.make_dataset({**config, 'path': str(tmp_path / 'enwik8.zip')}, 33)
    return
  if name == 'text_file':
    (tmp_path / 'text.txt').write_bytes(np.random.default_rng(0).bytes(2_000))
    config['path'] = str(tmp_path / 'text.txt')
  if name == 'recall':  # 33-byte rows hold 2 pairs of 3 bytes and their queries
    config['recall_pairs'] = 2
  dataset = data.make_dataset(config, 33)
  assert isinstance(dataset, data.ByteDataset)
  assert dataset.train_batch(0, 2, seed=0).shape == (2, 33)
  for split in config_choices.SPLITS:
    assert dataset.num_bytes(split) >= 33


def _check_copy_mode(name):
  dataset = data.make_dataset({'name': 'copy', 'copy_mode': name, 'copy_length': 8}, 33)
  first, second = dataset.split_bytes('validation')[:8].reshape(2, 4)
  np.testing.assert_array_equal(second, first if name == 'copy' else first[::-1])


def _check_copy_length_schedule(name):
  """Every copy curriculum grows L from data.copy_length_min to data.copy_length; 'none'
  keeps copy_length; the dataset draws rows at each step's L."""
  config = tiny_config('fixed', steps=20)
  config.data.update(copy_length_schedule=name, copy_length_min=0 if name == 'none' else 4)
  config_lib.validate(config)
  lengths = [data.copy_length_at(config, step) for step in range(20)]
  assert lengths == sorted(lengths) and lengths[-1] == 16
  assert lengths[0] == (16 if name == 'none' else 4) and (name == 'none') == (
    len(set(lengths)) == 1
  )
  dataset = data.make_dataset(config.data, 33)
  assert dataset.train_batch(0, 2, seed=0).shape == (2, 33)


def _check_lr_schedule(name):
  config = tiny_config('fixed', steps=100)
  config.train.update(lr_schedule=name, warmup_steps=10, learning_rate=1e-2)
  _, schedule = train_state.make_optimizer(config_lib.validate(config).train)
  assert float(schedule(0)) == 0.0 and float(schedule(10)) == pytest.approx(1e-2)
  end = float(schedule(99))
  assert end == pytest.approx(1e-2) if name == 'constant' else end < 0.2e-2


def _check_cpu_execution(name):
  try:
    assert runtime.configure_cpu_execution(name) is (name == 'inline')
    assert jax.config.values['jax_cpu_enable_async_dispatch'] is (name == 'async')
  finally:
    runtime.configure_cpu_execution(spec.RunSpec.cpu_execution)


def _check_eval_mode(name):
  model = _tiny_model()
  variables = model.init_variables(jax.random.PRNGKey(0))
  stream = np.random.default_rng(1).integers(0, 256, 80).astype(np.uint8)
  out = evaluate.bits_per_byte(model, variables, stream, num_latents=8, batch_size=4, mode=name)
  assert out['num_targets'] == 79 and out['bits'] == pytest.approx(8.0, abs=1e-4)  # head at 0


CHECKS = {
  'model.type': _check_model_type,
  'model.activation': _check_activation,
  'model.attention_impl': _check_attention_impl,
  'model.position_encoding': lambda name: _model_runs(_tiny_model(position_encoding=name)),
  'model.rotary_convention': _check_rotary_convention,
  'model.position_origin': _check_position_origin,
  'model.remat': _check_remat,
  'model.dtype': _check_dtype,
  'latents.strategy': _check_strategy,
  'latents.schedule': _check_schedule,
  'window.schedule': _check_window_schedule,
  'data.name': _check_data_name,
  'data.copy_mode': _check_copy_mode,
  'data.copy_length_schedule': _check_copy_length_schedule,
  'train.lr_schedule': _check_lr_schedule,
  'eval.mode': _check_eval_mode,
  'cpu_execution': _check_cpu_execution,
}


def test_every_enumerated_key_has_an_implementation_check():
  assert set(CHECKS) == set(config_choices.CHOICES)


@pytest.mark.parametrize(
  'key,value', [(key, value) for key, values in config_choices.CHOICES.items() for value in values]
)
def test_every_listed_value_is_accepted_by_the_code_that_implements_it(key, value, tmp_path):
  check = CHECKS[key]
  check(value, tmp_path) if key == 'data.name' else check(value)
