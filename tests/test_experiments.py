"""Pins perceiver_ar_vl/experiments.py: an equal-budget comparison end to end, tiny."""

import json
import os

import pytest
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
  assert '| steps | curriculum | 4..16 | 1 | 4 |' in markdown
  for name in (
    'results.md',
    'validation_vs_step.png',
    'bits_vs_latents.png',
    'memory_vs_latents.png',
  ):
    assert os.path.getsize(tmp_path / name) > 0
  assert '| steps | transformer | 32 | 1 | 4 |' in markdown
  with open(tmp_path / 'runs' / 'curriculum' / 'seed0-4steps' / 'run.json') as f:
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
  assert '| steps | ecp | 32 |' in markdown
  assert 'ECP (window 32): ' in markdown
  assert os.path.getsize(tmp_path / 'memory_vs_latents.png') > 0


def test_seeds_and_flops_budget_report_mean_and_spread(tmp_path, monkeypatch):
  """Two seeds at the flops budget: runs per seed, a run of costlier steps gets fewer of them
  with nothing left unspent, and the table gives mean ± std with the paired comparison
  against fixed_512."""
  monkeypatch.setattr(experiments, 'experiment_config', tiny_experiment_config)
  markdown = experiments.run_experiment(
    'smoke',
    str(tmp_path),
    steps=4,
    seeds=(0, 1),
    budget=('flops',),
    strategies=('fixed_512', 'transformer'),
  )
  runs = {
    name: sorted(os.listdir(tmp_path / 'runs' / name)) for name in ('fixed_512', 'transformer')
  }
  assert runs['fixed_512'] == ['seed0-4steps', 'seed1-4steps']
  (steps,) = {int(d.split('-')[1][: -len('steps')]) for d in runs['transformer']}
  assert steps < 4  # the same FLOPs in steps that score the whole window
  summary = [
    line for line in markdown.splitlines() if line.startswith('| flops | transformer | 32 | 2 |')
  ]
  assert len(summary) == 1 and ' ± ' in summary[0]
  assert any(v in summary[0] for v in ('better', 'worse', 'not significant'))
  with open(tmp_path / 'runs' / 'transformer' / runs['transformer'][1] / 'run.json') as f:
    run = json.load(f)
  assert run['seed'] == 1 and run['peak_memory_bytes'] >= run['mean_memory_bytes'] > 0
  reference = tiny_experiment_config('fixed_512', '', steps=4)
  budget = experiments.budgets.run_cost(
    reference, experiments.budgets.bucket_cost('flops', reference)
  )
  assert budget - run['train_flops'] < run['train_flops'] / run['steps'] <= budget


def test_a_stopped_run_is_not_evaluated_or_cached(tmp_path, monkeypatch):
  """A run that a signal stopped before its last step ends the comparison (exit 0, resumable)
  instead of being scored and cached as finished."""
  monkeypatch.setattr(experiments, 'experiment_config', tiny_experiment_config)
  monkeypatch.setattr(
    experiments.train, 'train', lambda config, workdir: {'final_step': 1, 'start_step': 0}
  )
  with pytest.raises(SystemExit) as stop:
    experiments.run_experiment('smoke', str(tmp_path), steps=4, strategies=('fixed_512',))
  assert stop.value.code == 0
  assert not os.path.exists(tmp_path / 'runs' / 'fixed_512' / 'seed0-4steps' / 'run.json')


def test_report_only_covers_the_finished_runs(tmp_path, monkeypatch):
  monkeypatch.setattr(experiments, 'experiment_config', tiny_experiment_config)
  with pytest.raises(experiments.errors.UserError, match='No finished run'):
    experiments.run_experiment('smoke', str(tmp_path), steps=2, report_only=True)
  experiments.run_experiment('smoke', str(tmp_path), steps=2, strategies=('fixed_512',))
  markdown = experiments.run_experiment(
    'smoke', str(tmp_path), steps=2, seeds=(0, 1), strategies=('fixed_512',), report_only=True
  )
  assert '| steps | fixed_512 | 16 | 1 | 2 |' in markdown  # seed 1 was never trained
  assert not os.path.exists(tmp_path / 'runs' / 'fixed_512' / 'seed1-2steps')
