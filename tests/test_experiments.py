"""Pins perceiver_ar_vl/experiments/runner.py and its command line
(`python -m perceiver_ar_vl.experiments`, experiments/__main__.py): an equal-budget comparison
end to end, tiny. Its pieces: tests/test_budgets.py, tests/test_report.py; the command line on
bad input: tests/test_launch.py."""

import json
import os

import pytest
from helpers import tiny_config

from perceiver_ar_vl import config_lib, errors, latents, training
from perceiver_ar_vl.experiments import budgets, runner

EXPERIMENTS = 'perceiver_ar_vl.experiments'


def tiny_experiment_config(name, preset, *, steps=0, **unused):
  """runner.experiment_config for a tiny model: run `name`'s latent strategy and model type."""
  del preset, unused
  named = config_lib.strategy_config(name, 'smoke')
  config = tiny_config(named.latents.strategy, steps=steps, model_type=named.model.type)
  config.name = name
  config.latents.buckets = (8, 16, 32)
  config.train.eval_every = 2
  config.eval.update(latents_sweep=(8, 32), max_bytes=128)
  return config_lib.validate(config)


def test_experiment_writes_table_and_plots(tmp_path, monkeypatch):
  monkeypatch.setattr(runner, 'experiment_config', tiny_experiment_config)
  markdown = runner.run_experiment(
    'smoke', str(tmp_path), steps=4, runs=('curriculum', 'transformer')
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
    latents.latent_count(tiny_experiment_config('curriculum', '', steps=4), s) for s in range(4)
  )
  assert {r['num_latents'] for r in run['eval']} == {8, 16, 32}
  memory = [line for line in markdown.splitlines() if line.startswith('Compiled train-step')][0]
  per_bucket = [
    float(part.split(': ')[1]) for part in memory.split('(MiB): ')[1].split('; ')[0].split(', ')
  ]
  assert per_bucket == sorted(per_bucket) and per_bucket[0] < per_bucket[-1]
  # A second invocation reuses the finished runs and only rebuilds the report.
  assert (
    runner.run_experiment('smoke', str(tmp_path), steps=4, runs=('curriculum', 'transformer'))
    == markdown
  )


def test_experiment_of_ecp_alone_reports_its_memory(tmp_path, monkeypatch):
  """`--runs=ecp`: a comparison without any Perceiver AR run still writes its report."""
  monkeypatch.setattr(runner, 'experiment_config', tiny_experiment_config)
  markdown = runner.run_experiment('smoke', str(tmp_path), steps=2, runs=('ecp',))
  assert '| steps | ecp | 32 |' in markdown
  assert 'ECP (window 32): ' in markdown
  assert os.path.getsize(tmp_path / 'memory_vs_latents.png') > 0


def test_seeds_and_flops_budget_report_mean_and_spread(tmp_path, monkeypatch):
  """Two seeds at the flops budget: runs per seed, a run of costlier steps gets fewer of them
  with nothing left unspent, and the table gives mean ± std with the paired comparison
  against fixed_512."""
  monkeypatch.setattr(runner, 'experiment_config', tiny_experiment_config)
  markdown = runner.run_experiment(
    'smoke',
    str(tmp_path),
    steps=4,
    seeds=(0, 1),
    budget=('flops',),
    runs=('fixed_512', 'transformer'),
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
  budget = budgets.run_cost(reference, budgets.bucket_cost('flops', reference))
  assert budget - run['train_flops'] < run['train_flops'] / run['steps'] <= budget


def test_a_stopped_run_is_not_evaluated_or_cached(tmp_path, monkeypatch):
  """A run that a signal stopped before its last step ends the comparison (RunStopped; the
  command line then exits 0, tested below) instead of being scored and cached as finished."""
  monkeypatch.setattr(runner, 'experiment_config', tiny_experiment_config)
  stopped = lambda config, workdir: {'final_step': 1, 'start_step': 0}
  monkeypatch.setattr(training, 'train', stopped)  # runner.py calls training.train
  with pytest.raises(runner.RunStopped, match='stopped at step 1 of 4'):
    runner.run_experiment('smoke', str(tmp_path), steps=4, runs=('fixed_512',))
  assert not os.path.exists(tmp_path / 'runs' / 'fixed_512' / 'seed0-4steps' / 'run.json')


def test_report_only_covers_the_finished_runs(tmp_path, monkeypatch):
  monkeypatch.setattr(runner, 'experiment_config', tiny_experiment_config)
  with pytest.raises(errors.UserError, match='No finished run'):
    runner.run_experiment('smoke', str(tmp_path), steps=2, report_only=True)
  runner.run_experiment('smoke', str(tmp_path), steps=2, runs=('fixed_512',))
  markdown = runner.run_experiment(
    'smoke', str(tmp_path), steps=2, seeds=(0, 1), runs=('fixed_512',), report_only=True
  )
  assert '| steps | fixed_512 | 16 | 1 | 2 |' in markdown  # seed 1 was never trained
  assert not os.path.exists(tmp_path / 'runs' / 'fixed_512' / 'seed1-2steps')


def test_run_config_applies_budget_seed_and_variants():
  steps = runner.run_config('curriculum+truncation', 'cpu', seed=2, budget='flops')
  assert steps.seed == 2 and steps.name == 'curriculum+truncation'
  assert steps.train.random_truncation == 0.25 and steps.train.steps > 600
  same = runner.run_config('fixed_512', 'cpu', budget='flops')
  assert same.train.steps == 600
  assert runner.run_dir('/o', same) == '/o/runs/fixed_512/seed0-600steps'
  for bad, phrase in [
    (dict(runs=('fixed_512+bogus',)), "unknown variant 'bogus'"),
    (dict(runs=('fixed_512', 'bogus')), "unknown run 'bogus'"),
    (dict(budget=('joules',)), "--budget='joules'"),
    (dict(seeds=()), 'give one or more seeds'),
  ]:
    with pytest.raises(errors.UserError, match=phrase):
      runner.run_experiment('cpu', '/nonexistent', **bad)


# `python -m perceiver_ar_vl.experiments` in a subprocess, with the runs' configs replaced by
# tiny_experiment_config (argv[2] == 'stop': training stops after step 1, as a signal would).
