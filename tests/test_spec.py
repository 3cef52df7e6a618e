"""Pins perceiver_ar_vl/spec.py and config_lib.read_spec: every key declared once as a typed,
frozen field; a config read (and checked) once, then passed on as its spec."""

import dataclasses
import json

import pytest
from helpers import tiny_config

from perceiver_ar_vl import config_defaults, config_lib, errors, spec, training, workdir_config


def test_the_config_is_the_spec_and_back():
  default = spec.RunSpec()
  config = config_defaults.base_config()
  assert spec.from_config(config) == default
  assert config.train.steps == default.train.steps and config.data.name == default.data.name
  smoke = config_lib.strategy_config('curriculum', 'smoke')
  assert spec.to_config(spec.from_config(smoke)) == smoke
  # Types are the declared ones: tuples stay tuples, ints stay ints through JSON.
  read = spec.from_config(config_lib.validate(smoke))
  assert isinstance(read.latents.buckets, tuple) and read.latents.buckets == smoke.latents.buckets
  config = config_defaults.base_config()
  config.update_from_flattened_dict({'latents.buckets': [8, 16]})
  assert spec.from_config(config).latents.buckets == (8, 16)


def test_a_spec_is_frozen_and_replaced_by_section():
  run = config_lib.read_spec(config_lib.strategy_config('fixed_256', 'smoke'))
  with pytest.raises(dataclasses.FrozenInstanceError):
    run.train.steps = 3
  shorter = run.replace(train={'steps': 7}, seed=5)
  assert (shorter.train.steps, shorter.seed, run.train.steps) == (7, 5, 800)
  assert shorter.train.batch_size == run.train.batch_size and shorter.model is run.model


def test_read_spec_checks_a_config_once_and_passes_a_spec_on(monkeypatch):
  bad = tiny_config('fixed')
  bad.latents.max = 999
  with pytest.raises(errors.UserError, match='latents.max=999 exceeds the window'):
    config_lib.read_spec(bad)
  run = config_lib.read_spec(tiny_config('fixed'))
  monkeypatch.setattr(config_lib, 'validate', lambda config: pytest.fail('checked again'))
  assert config_lib.read_spec(run) is run


def test_training_checks_its_config_once(tmp_path, monkeypatch):
  """Below the entry point nothing validates again: one run of training.train reads its
  ConfigDict once (validation, evaluation, the plan and the compiled steps read the spec)."""
  calls = []
  real = config_lib.validate
  monkeypatch.setattr(config_lib, 'validate', lambda config: calls.append(1) or real(config))
  config = tiny_config('uniform', steps=3)
  config.train.update(log_every=3, checkpoint_every=3)
  training.train(config, str(tmp_path))
  assert len(calls) == 1
  with open(tmp_path / 'config.json') as f:  # what eval and sample read back
    saved = json.load(f)
  assert saved['train']['steps'] == 3 and saved['latents']['buckets'] == [4, 8, 16, 32]
  assert spec.from_config(workdir_config.get_config(str(tmp_path))) == config_lib.read_spec(config)


@pytest.mark.parametrize('section', ['model', ''])
def test_a_key_no_section_declares_is_one_error_naming_it(section):
  config = config_defaults.base_config()
  (config[section] if section else config).unheard_of = 1
  name = f'{section}.unheard_of' if section else 'unheard_of'
  with pytest.raises(errors.UserError, match=f'Unknown config key {name}: .*spec.py'):
    spec.from_config(config)


def test_a_workdir_saved_by_an_older_version_reads_without_its_retired_keys(tmp_path):
  config = config_defaults.base_config().to_dict()
  config['data']['copy_length_total_steps'] = 100  # saved before it was derived
  (tmp_path / 'config.json').write_text(json.dumps(config))
  assert spec.from_config(workdir_config.get_config(str(tmp_path))) == spec.from_config(
    config_defaults.base_config()
  )
