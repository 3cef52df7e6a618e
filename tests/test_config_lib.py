"""Pins perceiver_ar_vl/config_lib.py and configs/: presets, scaling, validation errors."""

import importlib.util
import os
import subprocess
import sys

import pytest

from perceiver_ar_vl import choices, config_lib, models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = ('fixed_256', 'fixed_512', 'uniform', 'curriculum', 'transformer')


def load_config_file(name, arg=None):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert 'python launch.py --config=configs/' in module.__doc__  # the docstring has its command
  return module.get_config(arg)


@pytest.mark.parametrize('name', CONFIG_FILES)
@pytest.mark.parametrize('arg', [None, 'gpu', 'cpu', 'smoke'])
def test_every_config_and_preset_validates(name, arg):
  config = config_lib.validate(load_config_file(name, arg))
  assert config.name == name
  assert config.latents.max <= config.model.max_context
  assert (
    config.data.name == {None: 'enwik8', 'gpu': 'enwik8', 'cpu': 'text_file', 'smoke': 'copy'}[arg]
  )


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
    ('latents.strategy', 'random', "Unknown latents.strategy 'random'"),
    ('latents.schedule', 'cosine', "Unknown latents.schedule 'cosine'"),
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
  ],
)
def test_bad_settings_are_clear_errors(key, value, match):
  config = config_lib.strategy_config('uniform')
  section, field = key.split('.')
  config[section][field] = value
  with pytest.raises(ValueError, match=match):
    config_lib.validate(config)


def test_unknown_preset_and_strategy_are_clear_errors():
  with pytest.raises(ValueError, match="Unknown preset 'tpu'"):
    config_lib.strategy_config('uniform', 'tpu')
  with pytest.raises(ValueError, match="Unknown strategy config 'fixed_128'"):
    config_lib.strategy_config('fixed_128')


def test_unknown_keys_are_rejected_by_the_locked_config():
  config = config_lib.strategy_config('curriculum', 'smoke')
  config.lock()
  with pytest.raises(AttributeError, match='num_layer'):
    config.model.num_layer = 3


def test_validating_a_config_imports_no_jax():
  """launch.py rejects a bad setting before importing JAX (a fraction of a second): building
  and validating a config file's config must not import jax, and the names it checks equal
  the ones the models implement."""
  code = (
    'import sys\n'
    'from perceiver_ar_vl import config_lib\n'
    "config_lib.validate(config_lib.strategy_config('curriculum', 'cpu'))\n"
    "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax')))\n"
  )
  run = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO)
  assert run.returncode == 0, run.stderr[-2000:]
  assert run.stdout.strip() == '[]'
  assert tuple(models.REMAT_POLICIES) == choices.REMAT_NAMES
  assert models.POSITION_ENCODINGS == choices.POSITION_ENCODINGS
