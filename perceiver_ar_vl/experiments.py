"""The strategy comparison: fixed_256, fixed_512, uniform, curriculum and the Transformer
baseline trained at an equal budget (same steps, batch and window), each evaluated at several
latent counts, with each bucket's compiled train-step memory; writes a markdown table and PNG
plots.

  python -m perceiver_ar_vl.experiments --preset=smoke --out=/tmp/exp_smoke
  python -m perceiver_ar_vl.experiments --preset=cpu --out=results/cpu \
    --data_path=A.txt,B.txt,C.txt --heldout_path=D.txt
  python -m perceiver_ar_vl.experiments --preset=gpu --out=results/gpu --data_path=enwik8.zip

Every run lives in `<out>/<strategy>` and resumes if interrupted; a finished run is not
retrained, so re-running the command only rebuilds the report. A user error (unknown
strategy, bad data path, ...) prints one line `error: ...` and exits with status 2.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags, logging

from perceiver_ar_vl import (
  config_lib,
  errors,
  evaluate,
  latents,
  metrics,
  parallel,
  stepping,
  train,
)
from perceiver_ar_vl import state as state_lib

STRATEGIES = tuple(config_lib.STRATEGY_SPECS)
FULL_WINDOW_NAMES = {'transformer': 'Transformer', 'ecp': 'ECP'}
# Per experiment preset: the config preset it starts from and its equal training budget.
EXPERIMENT_PRESETS = {
  'smoke': dict(config_preset='smoke', steps=300, eval_every=60),
  'cpu': dict(config_preset='cpu', steps=600, eval_every=100),
  'gpu': dict(config_preset='gpu', steps=20_000, eval_every=2_000),
}


def experiment_config(
  name: str,
  preset: str,
  *,
  steps: int = 0,
  data_path: str = '',
  heldout_path: str = '',
  eval_max_bytes: int = 0,
) -> ml_collections.ConfigDict:
  """Strategy `name` at the experiment preset, with the shared budget and data applied."""
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
  return config_lib.validate(c)


def target_tokens_seen(config: ml_collections.ConfigDict) -> int:
  """Scored targets over the whole run: batch * sum over steps of N."""
  counts = [train.latent_count(config, s) for s in range(config.train.steps)]
  return int(config.train.batch_size * np.sum(counts))


def train_step_memory(config: ml_collections.ConfigDict, bucket: int) -> int:
  """Bytes of the compiled train step at `bucket`: arguments + outputs + temporaries (XLA's
  compiled memory analysis, without donation)."""
  model = config_lib.create_model(config)
  mesh = parallel.make_mesh()
  abstract_state = state_lib.abstract_train_state(config, model, mesh)
  _, schedule = state_lib.make_optimizer(config.train)
  batch = jax.ShapeDtypeStruct((config.train.batch_size, config.model.max_context + 1), jnp.int32)

  step = stepping.bucket_step(config, model, bucket, schedule)
  rng = jax.random.PRNGKey(0)

  compiled = jax.jit(step).lower(abstract_state, batch, jnp.int32(bucket), rng).compile()
  stats = compiled.memory_analysis()
  return compiled_bytes(stats)


def compiled_bytes(stats) -> int:
  """Arguments + outputs + temporaries - aliased (donated) buffers of an XLA compiled memory
  analysis: the memory figure every report and benchmark of this project uses."""
  return int(
    stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    + stats.temp_size_in_bytes
    - stats.alias_size_in_bytes
  )


def run_strategy(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) and evaluates one strategy; caches the result in `run.json`."""
  result_path = os.path.join(workdir, 'run.json')
  if os.path.exists(result_path):
    with open(result_path) as f:
      result = json.load(f)
    if result.get('steps') == config.train.steps:
      return result
  summary = train.train(config, workdir)
  report = evaluate.evaluate(config, workdir)
  buckets_used = sorted(
    {
      latents.bucket_for(train.latent_count(config, s), config.latents.buckets)
      for s in range(config.train.steps)
    }
  )
  curve = [
    (r['step'], r['validation_bits_per_byte'])
    for r in metrics.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
    if 'validation_bits_per_byte' in r
  ]
  result = {
    'name': config.name,
    'steps': config.train.steps,
    'batch_size': config.train.batch_size,
    'window': config.model.max_context,
    'train_seconds': summary['train_seconds'],
    'resumed_from': summary['start_step'],
    'target_tokens': target_tokens_seen(config),
    'buckets_used': buckets_used,
    'train_latents': sorted(
      {config.latents.max} | ({config.latents.min} if config.latents.strategy != 'fixed' else set())
    ),
    'peak_memory_bytes': max(train_step_memory(config, b) for b in buckets_used),
    'validation_curve': curve,
    'eval': report['results'],
  }
  with open(result_path, 'w') as f:
    json.dump(result, f, indent=2)
  return result


def _bits(result: dict, split: str, n: int) -> float | None:
  for r in result['eval']:
    if r['split'] == split and r['num_latents'] == n:
      return r['bits']
  return None


def write_report(
  results: list[dict], memory: dict[str, list[tuple[int, int]]], out: str, preset: str, command: str
) -> str:
  """Writes `results.md` and the three PNG plots into `out`; returns the markdown."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  counts = sorted({r['num_latents'] for res in results for r in res['eval']})
  lines = [
    f'Preset `{preset}`: {results[0]["steps"]} steps, batch {results[0]["batch_size"]}, '
    f'window {results[0]["window"]} for every run. Command: `{command}`',
    '',
    '| run | train N | wall-clock (s) | target tokens | peak train-step memory (MiB) | '
    'valid bits/byte @ train max N | test bits/byte @ train max N |',
    '|---|---|---:|---:|---:|---:|---:|',
  ]
  for res in results:
    n_max = res['train_latents'][-1]
    label = '..'.join(str(n) for n in res['train_latents'])
    lines.append(
      f'| {res["name"]} | {label} | {res["train_seconds"]:.0f} | '
      f'{res["target_tokens"]:,} | {res["peak_memory_bytes"] / 2**20:.1f} | '
      f'{_bits(res, "validation", n_max):.4f} | {_bits(res, "test", n_max):.4f} |'
    )
  lines += [
    '',
    'Validation bits per byte by evaluation latent count:',
    '',
    '| run | ' + ' | '.join(f'N={n}' for n in counts) + ' |',
    '|---|' + '---:|' * len(counts),
  ]
  for res in results:
    cells = [_bits(res, 'validation', n) for n in counts]
    lines.append(
      f'| {res["name"]} | ' + ' | '.join('' if c is None else f'{c:.4f}' for c in cells) + ' |'
    )
  parts = [', '.join(f'{b}: {m / 2**20:.1f}' for b, m in memory.get('perceiver_ar', []))]
  parts += [
    f'{FULL_WINDOW_NAMES[kind]} (window {memory[kind][0][0]}): {memory[kind][0][1] / 2**20:.1f}'
    for kind in config_lib.FULL_WINDOW_TYPES
    if memory.get(kind)
  ]
  lines += ['', 'Compiled train-step memory by bucket (MiB): ' + '; '.join(filter(None, parts))]
  markdown = '\n'.join(lines) + '\n'
  with open(os.path.join(out, 'results.md'), 'w') as f:
    f.write(markdown)

  fig, ax = plt.subplots(figsize=(6, 4))
  for res in results:
    if res['validation_curve']:
      steps, bits = zip(*res['validation_curve'], strict=True)
      ax.plot(steps, bits, marker='o', label=res['name'])
  ax.set(
    xlabel='training step',
    ylabel='validation bits per byte',
    title='Validation bits per byte during training',
  )
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(os.path.join(out, 'validation_vs_step.png'), dpi=120)

  fig, ax = plt.subplots(figsize=(6, 4))
  for res in results:
    pts = sorted((r['num_latents'], r['bits']) for r in res['eval'] if r['split'] == 'validation')
    ax.plot(*zip(*pts, strict=True), marker='o', label=res['name'])
  ax.set(
    xscale='log',
    xlabel='latents at evaluation (N)',
    ylabel='validation bits per byte',
    title='Quality vs evaluation compute',
  )
  ax.set_xticks(counts, [str(n) for n in counts])
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(os.path.join(out, 'bits_vs_latents.png'), dpi=120)

  fig, ax = plt.subplots(figsize=(6, 4))
  ticks = sorted({b for kind in memory for b, _ in memory[kind]})
  if memory.get('perceiver_ar'):
    buckets, mems = zip(*memory['perceiver_ar'], strict=True)
    ax.plot(buckets, [m / 2**20 for m in mems], marker='o', label='Perceiver AR train step')
  for kind, color in zip(config_lib.FULL_WINDOW_TYPES, ('red', 'green'), strict=True):
    if memory.get(kind):
      ((window, mem),) = memory[kind]
      label = f'{FULL_WINDOW_NAMES[kind]} train step'
      ax.scatter([window], [mem / 2**20], color=color, zorder=3, label=label)
  ax.set(
    xscale='log',
    xlabel='latent bucket (B)',
    ylabel='compiled peak memory (MiB)',
    title='Train-step memory vs latents',
  )
  ax.set_xticks(ticks, [str(b) for b in ticks])
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(os.path.join(out, 'memory_vs_latents.png'), dpi=120)
  plt.close('all')
  return markdown


def run_experiment(
  preset: str,
  out: str,
  *,
  strategies=STRATEGIES,
  steps: int = 0,
  data_path: str = '',
  heldout_path: str = '',
  eval_max_bytes: int = 0,
  command: str = '',
) -> str:
  """Runs every strategy at the preset's equal budget and writes the report into `out`."""
  if preset not in EXPERIMENT_PRESETS:
    raise errors.UserError(f'Unknown preset {preset!r}; choose one of {tuple(EXPERIMENT_PRESETS)}.')
  unknown = [name for name in strategies if name not in STRATEGIES]
  if unknown or not strategies:
    raise errors.UserError(
      f'--strategies={",".join(strategies)}: unknown strategy {unknown[0]!r}; '
      f'choose from {",".join(STRATEGIES)}.'
      if unknown
      else f'--strategies is empty; choose from {",".join(STRATEGIES)}.'
    )
  if steps < 0:
    raise errors.UserError(f'--steps={steps} must be >= 0 (0 = the preset budget).')
  # Every run's config first, so a bad strategy name or setting stops before any training.
  configs = [
    experiment_config(
      name,
      preset,
      steps=steps,
      data_path=data_path,
      heldout_path=heldout_path,
      eval_max_bytes=eval_max_bytes,
    )
    for name in strategies
  ]
  os.makedirs(out, exist_ok=True)
  results, memory = [], {}
  for name, config in zip(strategies, configs, strict=True):
    logging.info('=== %s: %d steps ===', name, config.train.steps)
    result = run_strategy(config, os.path.join(out, name))
    results.append(result)
    if config.model.type in config_lib.FULL_WINDOW_TYPES:
      memory[config.model.type] = [
        (config.model.max_context, train_step_memory(config, config.model.max_context))
      ]
    elif 'perceiver_ar' not in memory:
      memory['perceiver_ar'] = [(b, train_step_memory(config, b)) for b in config.latents.buckets]
  markdown = write_report(results, memory, out, preset, command)
  print(markdown)
  return markdown


FLAGS = flags.FLAGS


# Config keys that this command sets from its own flags: user errors name the flag instead.
_FLAG_FOR_KEY = {
  '--config.data.path': '--data_path',
  '--config.data.heldout_path': '--heldout_path',
  '--config.eval.max_bytes': '--eval_max_bytes',
}


def main(argv):
  del argv
  metrics.quiet_orbax_logs()
  try:
    _run_from_flags()
  except errors.UserError as e:
    message = str(e)
    for key, flag in _FLAG_FOR_KEY.items():
      message = message.replace(key, flag)
    raise errors.UserError(message) from e


def _run_from_flags() -> None:
  run_experiment(
    FLAGS.preset,
    FLAGS.out,
    strategies=tuple(FLAGS.strategies),
    steps=FLAGS.steps,
    data_path=FLAGS.data_path,
    heldout_path=FLAGS.heldout_path,
    eval_max_bytes=FLAGS.eval_max_bytes,
    command='python -m perceiver_ar_vl.experiments '
    + ' '.join(
      f'--{k}={v}'
      for k, v in [
        ('preset', FLAGS.preset),
        ('out', FLAGS.out),
        ('data_path', FLAGS.data_path),
        ('heldout_path', FLAGS.heldout_path),
        ('steps', FLAGS.steps),
      ]
      if v
    ),
  )


if __name__ == '__main__':
  flags.DEFINE_enum('preset', 'smoke', list(EXPERIMENT_PRESETS), 'Scale of the comparison.')
  flags.DEFINE_string('out', None, 'Output directory (runs, results.md, plots).')
  flags.DEFINE_list('strategies', list(STRATEGIES), 'Which runs to include.')
  flags.DEFINE_integer('steps', 0, 'Training steps per run (0 = the preset budget).')
  flags.DEFINE_string('data_path', '', 'config.data.path for every run (text files, enwik8).')
  flags.DEFINE_string('heldout_path', '', 'config.data.heldout_path (text_file validation/test).')
  flags.DEFINE_integer('eval_max_bytes', 0, 'Bytes scored per split (0 = the preset default).')
  flags.mark_flag_as_required('out')
  errors.run(main)
