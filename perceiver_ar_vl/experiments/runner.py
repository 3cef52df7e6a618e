"""The comparison of runs (`config_lib.RUNS`: fixed_256, fixed_512, uniform, curriculum linear
and stepwise, the Transformer baseline and ECP), trained at an equal budget over several seeds,
each evaluated at several latent counts, with stability and compiled-memory figures; writes a
markdown report with mean +- std over seeds and PNG plots (`experiments.report`). The command
line is `python -m perceiver_ar_vl.experiments` (`experiments/__main__.py`):

  python -m perceiver_ar_vl.experiments --preset=smoke --seeds=0,1 --budget=flops --out=/tmp/e
  python -m perceiver_ar_vl.experiments --preset=cpu --out=results/cpu --seeds=0,1,2 \
    --budget=steps,flops --data_path=A.txt,B.txt,C.txt --heldout_path=D.txt
  python -m perceiver_ar_vl.experiments --preset=gpu --out=results/gpu --data_path=enwik8.zip

Budgets (`budgets.py`): `steps` gives every run the preset's steps; `flops` and `seconds` give
every run the training FLOPs (analytic model) or measured wall-clock of the reference run
(fixed_512 at the preset's steps; `--budget_preset` takes it from another preset), so a run of
cheaper steps gets more of them. A run name may carry variants after '+': `fixed_512+truncation`
(train.random_truncation), `curriculum+latent_dropout` (model.latent_dropout).

Every run lives in `<out>/runs/<name>/seed<k>-<T>steps` and resumes if interrupted; a finished
run is not retrained (a run that two budgets give the same steps is trained once), so
re-running the command only rebuilds the report. A user error (unknown run, bad data path,
...) raises errors.UserError; a run stopped by a signal raises RunStopped.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from perceiver_ar_vl import config_lib, errors, spec, step_plan, training
from perceiver_ar_vl.evaluation import evaluate
from perceiver_ar_vl.experiments import budgets, report, step_cost
from perceiver_ar_vl.runs import run_files

# Training knobs a run name may add after '+', and the settings they apply.
VARIANTS = {
  'latent_dropout': {'model.latent_dropout': 0.1},
  'truncation': {'train.random_truncation': 0.25},
}
REFERENCE = 'fixed_512'  # the run whose cost sets the flops and seconds budgets
# Per experiment preset: the config preset it starts from and its equal training budget.
EXPERIMENT_PRESETS = {
  'smoke': dict(config_preset='smoke', steps=300, eval_every=60),
  'cpu': dict(config_preset='cpu', steps=600, eval_every=100),
  'cpu_long': dict(config_preset='cpu_long', steps=600, eval_every=100),
  'gpu': dict(config_preset='gpu', steps=20_000, eval_every=2_000),
}
RESULT_VERSION = 2  # run.json layout; older files are rebuilt (without retraining)


class RunStopped(Exception):
  """A run was stopped by a signal before its last step; it is saved and resumes when the
  same command runs again."""


def experiment_config(
  name: str,
  preset: str,
  *,
  steps: int = 0,
  data_path: str = '',
  heldout_path: str = '',
  eval_max_bytes: int = 0,
) -> ml_collections.ConfigDict:
  """Run `name` (one of config_lib.RUNS) at the experiment preset, with the shared budget and
  data applied."""
  spec = EXPERIMENT_PRESETS[preset]
  c = config_lib.strategy_config(name, spec['config_preset'])
  c.train.steps = steps or spec['steps']
  c.train.eval_every = spec['eval_every']
  c.train.checkpoint_every = max(c.train.steps // 4, 1)
  if data_path:
    c.data.path = data_path
  if heldout_path:
    c.data.heldout_path = heldout_path
  if eval_max_bytes:
    c.eval.max_bytes = eval_max_bytes
  c.eval.splits = ('validation', 'test')
  if config_lib.scores_every_position(c):
    # Scored at N = M only: a full-window model evaluated with N targets per window reruns
    # the whole window for every N bytes, which costs M/N times the N = M pass.
    c.eval.latents_sweep = ()
  return config_lib.validate(c)


def run_config(
  name: str,
  preset: str,
  *,
  seed: int = 0,
  budget: str = 'steps',
  budget_preset: str = '',
  steps: int = 0,
  data_path: str = '',
  heldout_path: str = '',
  eval_max_bytes: int = 0,
) -> spec.RunSpec:
  """Run `name` (a named run, optionally '+variant'...) at `preset` and `seed`, with the step
  count that `budget` gives it (see the module docstring), read once into its spec."""
  base, *variants = name.split('+')
  shared = dict(
    steps=steps, data_path=data_path, heldout_path=heldout_path, eval_max_bytes=eval_max_bytes
  )
  c = experiment_config(base, preset, **shared)
  for variant in variants:
    for key, value in VARIANTS[variant].items():
      section, field = key.split('.')
      c[section][field] = value
  c.name, c.seed = name, seed
  if budget != 'steps':
    reference = experiment_config(REFERENCE, budget_preset or preset, **shared)
    reference.seed = seed
    total = budgets.run_cost(reference, _cost(budget, reference))
    c.train.steps = budgets.steps_for_budget(c, _cost(budget, c), total)
    c.train.checkpoint_every = max(c.train.steps // 4, 1)
  return config_lib.read_spec(c)


_COSTS: dict[tuple[str, str], budgets.BucketCost] = {}


def _cost(budget: str, config: ml_collections.ConfigDict | spec.RunSpec) -> budgets.BucketCost:
  """budgets.bucket_cost, kept per (budget, model and batch) so each bucket is timed once."""
  key = (budget, repr(spec.from_config(config).model) + repr(config.train.batch_size))
  if key not in _COSTS:
    _COSTS[key] = budgets.bucket_cost(budget, config)
  return _COSTS[key]


def run_dir(out: str, config: ml_collections.ConfigDict | spec.RunSpec) -> str:
  """`<out>/runs/<name>/seed<k>-<T>steps`: what identifies a trained run."""
  return os.path.join(out, 'runs', config.name, f'seed{config.seed}-{config.train.steps}steps')


def target_tokens_seen(config: ml_collections.ConfigDict | spec.RunSpec) -> int:
  """Scored targets over the whole run: batch * sum over steps of N (before truncation)."""
  return step_plan.plan(config).tokens(config.train.batch_size)


def finished_result(
  workdir: str, config: ml_collections.ConfigDict | spec.RunSpec
) -> dict[str, Any] | None:
  """The cached `run.json` of a finished run of `config` in `workdir`, or None."""
  try:
    with open(os.path.join(workdir, 'run.json')) as f:
      result = json.load(f)
  except (OSError, ValueError):
    return None
  if result.get('steps') == config.train.steps and result.get('version') == RESULT_VERSION:
    return result
  return None


def run_one(config: spec.RunSpec, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) and evaluates one run; caches the result in `run.json`. Raises
  RunStopped when a signal stopped the training before its last step."""
  result = finished_result(workdir, config)
  if result is not None:
    return result
  summary = training.train(config, workdir)
  if summary['final_step'] < config.train.steps:  # a stop signal: saved, not finished
    raise RunStopped(
      f'Run {workdir} stopped at step {summary["final_step"]} of {config.train.steps} (saved); '
      'rerun the same command to resume.'
    )
  evaluation = evaluate.evaluate(config, workdir)
  schedule = budgets.bucket_schedule(config)
  memory = {b: step_cost.cached_train_step_memory(config, b) for b in sorted(set(schedule))}
  records = run_files.read_jsonl(os.path.join(workdir, run_files.METRICS_FILE))
  result = {
    'version': RESULT_VERSION,
    'name': config.name,
    'seed': config.seed,
    'model_type': config.model.type,
    'steps': config.train.steps,
    'batch_size': config.train.batch_size,
    'window': config.model.max_context,
    'train_seconds': summary['train_seconds'],
    'resumed_from': summary['start_step'],
    'target_tokens': target_tokens_seen(config),
    'train_flops': budgets.run_cost(config, budgets.bucket_cost('flops', config)),
    'buckets_used': sorted(memory),
    'train_latents': sorted(
      {config.latents.max} | ({config.latents.min} if config.latents.strategy != 'fixed' else set())
    ),
    'memory_by_bucket': {str(b): m for b, m in memory.items()},
    'peak_memory_bytes': max(memory.values()),
    'mean_memory_bytes': float(np.mean([memory[b] for b in schedule])),
    **report.stability(records, warmup_steps=config.train.warmup_steps),
    'validation_curve': [
      (r['step'], r['validation_bits_per_byte']) for r in records if 'validation_bits_per_byte' in r
    ],
    'eval': evaluation['results'],
  }
  run_files.write_atomically(os.path.join(workdir, 'run.json'), json.dumps(result, indent=2))
  return result


def _check_request(preset: str, runs, steps: int, seeds, budgets_) -> None:
  """Raises UserError for an unknown preset, run, variant or budget, or bad counts."""
  if preset not in EXPERIMENT_PRESETS:
    raise errors.UserError(f'Unknown preset {preset!r}; choose one of {tuple(EXPERIMENT_PRESETS)}.')
  if not runs:
    raise errors.UserError(f'--runs is empty; choose from {",".join(config_lib.RUNS)}.')
  for name in runs:
    base, *variants = name.split('+')
    if base not in config_lib.RUNS:
      raise errors.UserError(
        f'--runs={",".join(runs)}: unknown run {base!r}; choose from {",".join(config_lib.RUNS)}.'
      )
    for variant in variants:
      if variant not in VARIANTS:
        raise errors.UserError(
          f'--runs: unknown variant {variant!r} in {name!r}; choose from '
          f'{",".join(VARIANTS)} (e.g. fixed_512+truncation).'
        )
  if steps < 0:
    raise errors.UserError(f'--steps={steps} must be >= 0 (0 = the preset budget).')
  if not seeds or any(s < 0 for s in seeds):
    raise errors.UserError(f'--seeds={seeds}: give one or more seeds >= 0, e.g. --seeds=0,1,2.')
  for budget in budgets_:
    if budget not in budgets.BUDGETS:
      raise errors.UserError(
        f'--budget={budget!r}: unknown budget; choose from {",".join(budgets.BUDGETS)}.'
      )
  if not budgets_:
    raise errors.UserError('--budget is empty; choose from steps,flops,seconds.')


def run_experiment(
  preset: str,
  out: str,
  *,
  runs=config_lib.RUNS,
  seeds=(0,),
  budget=('steps',),
  budget_preset: str = '',
  steps: int = 0,
  data_path: str = '',
  heldout_path: str = '',
  eval_max_bytes: int = 0,
  command: str = '',
  report_only: bool = False,
  report_dir: str = '',
) -> str:
  """Trains every run once per seed at each budget and writes the report into `out`.

  Runs go budget by budget, then seed by seed, so an interrupted study has whole seeds first.
  `report_only` trains nothing: the report covers the runs already finished. The report goes
  to `report_dir` (default `out`), so several reports can share one set of runs.
  """
  budget = (budget,) if isinstance(budget, str) else tuple(budget)
  runs, seeds = tuple(runs), tuple(int(s) for s in seeds)
  _check_request(preset, runs, steps, seeds, budget)
  if budget_preset and budget_preset not in EXPERIMENT_PRESETS:
    raise errors.UserError(
      f'Unknown --budget_preset {budget_preset!r}; choose one of {tuple(EXPERIMENT_PRESETS)}.'
    )
  shared = dict(
    steps=steps, data_path=data_path, heldout_path=heldout_path, eval_max_bytes=eval_max_bytes
  )
  # Every run's config first (cheap for steps and flops), so a bad setting stops before any
  # training; seconds budgets time each bucket once here.
  plan = [
    (b, run_config(name, preset, seed=seed, budget=b, budget_preset=budget_preset, **shared))
    for b in budget
    for seed in seeds
    for name in runs
  ]
  os.makedirs(out, exist_ok=True)
  results = []
  for b, config in plan:
    if report_only:
      finished = finished_result(run_dir(out, config), config)
      if finished is None:
        logging.warning('Not finished, left out of the report: %s', run_dir(out, config))
      else:
        results.append({**finished, 'budget': b})
      continue
    logging.info(
      '=== %s seed %d (%s budget): %d steps ===', config.name, config.seed, b, config.train.steps
    )
    results.append({**run_one(config, run_dir(out, config)), 'budget': b})
  if not results:
    raise errors.UserError(f'No finished run in {out} to report; run without --report_only.')
  memory = _memory_by_bucket(preset, runs, shared)
  os.makedirs(report_dir or out, exist_ok=True)
  markdown = report.write_report(
    results, memory, report_dir or out, preset=preset, command=command, reference=REFERENCE
  )
  print(markdown)
  return markdown


def _memory_by_bucket(preset: str, runs, shared: dict) -> dict[str, list[tuple[int, int]]]:
  """Compiled train-step memory of every bucket of the Perceiver AR config, and of each
  full-window model at its window: the memory plot and line of the report."""
  memory = {}
  for name in runs:
    config = experiment_config(name.split('+')[0], preset, **shared)
    kind = config.model.type
    if kind in memory:
      continue
    buckets = config.latents.buckets
    if config_lib.scores_every_position(config):
      buckets = (config.model.max_context,)
    memory[kind] = [(b, step_cost.cached_train_step_memory(config, b)) for b in buckets]
  return memory
