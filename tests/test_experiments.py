"""Pins perceiver_ar_vl/experiments.py: an equal-budget comparison end to end, tiny."""

import json
import os

from helpers import tiny_config

from perceiver_ar_vl import config_lib, experiments


def tiny_experiment_config(name, preset, *, steps=0, **unused):
  del preset, unused
  spec = config_lib.STRATEGY_SPECS[name]
  config = tiny_config(
    spec['strategy'], steps=steps, model_type=spec.get('model_type', 'perceiver_ar')
  )
  config.name = name
  config.latents.buckets = (8, 16, 32)
  config.train.eval_every = 2
  config.eval.update(latents_sweep=(8, 32), max_bytes=128)
  return config_lib.validate(config)


def test_experiment_writes_table_and_plots(tmp_path, monkeypatch):
  monkeypatch.setattr(experiments, 'experiment_config', tiny_experiment_config)
  markdown = experiments.run_experiment(
    'smoke', str(tmp_path), steps=4, strategies=('curriculum', 'transformer')
  )
  for name in (
    'results.md',
    'validation_vs_step.png',
    'bits_vs_latents.png',
    'memory_vs_latents.png',
  ):
    assert os.path.getsize(tmp_path / name) > 0
  assert '| curriculum | 4..16 |' in markdown and '| transformer | 32 |' in markdown
  with open(tmp_path / 'curriculum' / 'run.json') as f:
    run = json.load(f)
  assert run['steps'] == 4 and len(run['validation_curve']) == 2  # steps 2 and 4
  assert run['target_tokens'] == 4 * sum(
    experiments.train.latent_count(tiny_experiment_config('curriculum', '', steps=4), s)
    for s in range(4)
  )
  assert {r['num_latents'] for r in run['eval']} == {8, 16, 32}
  memory = [line for line in markdown.splitlines() if line.startswith('Compiled train-step')][0]
  per_bucket = [
    float(part.split(': ')[1]) for part in memory.split('(MiB): ')[1].split('; ')[0].split(', ')
  ]
  assert per_bucket == sorted(per_bucket) and per_bucket[0] < per_bucket[-1]
  # A second invocation reuses the finished runs and only rebuilds the report.
  assert (
    experiments.run_experiment(
      'smoke', str(tmp_path), steps=4, strategies=('curriculum', 'transformer')
    )
    == markdown
  )


def test_experiment_of_ecp_alone_reports_its_memory(tmp_path, monkeypatch):
  """`--strategies=ecp`: a comparison without any Perceiver AR run still writes its report."""
  monkeypatch.setattr(experiments, 'experiment_config', tiny_experiment_config)
  markdown = experiments.run_experiment('smoke', str(tmp_path), steps=2, strategies=('ecp',))
  assert '| ecp | 32 |' in markdown
  assert 'ECP (window 32): ' in markdown
  assert os.path.getsize(tmp_path / 'memory_vs_latents.png') > 0
