"""The comparison's report: statistics over seeds, stability figures, markdown and plots.

Significance rule (`paired_difference`): for a run and the reference run (fixed_512) at the same
budget, take the per-seed difference of test bits per byte (same seed: same data order and
initialisation draws). The difference is called significant when the 95% confidence interval
of its mean, mean +- t(0.975, n-1) * sd / sqrt(n), excludes 0 (a paired t-test); with one seed
nothing is called.

Stability (`stability`): a loss spike is a step whose training loss exceeds SPIKE_FACTOR times
the median of the SPIKE_WINDOW steps before it; the gradient-norm coefficient of variation is
std / mean of the gradient norm over the steps after the learning-rate warmup.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from perceiver_ar_vl import config_choices

SPIKE_FACTOR = 1.2
SPIKE_WINDOW = 50
# Two-sided 95% Student t quantiles t(0.975, df) for df = 1..10 (larger df: 1.96 is close).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
# The models that score every position: each is one point (its window) in the memory plot.
FULL_WINDOW_NAMES = {
  name: entry.label
  for name, entry in config_choices.MODEL_TYPES.items()
  if entry.scores_every_position
}


def stability(records: list[dict], warmup_steps: int) -> dict[str, Any]:
  """Loss spikes and gradient-norm variation of one run from its per-step metric records."""
  steps = sorted((r['step'], r['loss'], r['grad_norm']) for r in records if 'loss' in r)
  loss = np.array([s[1] for s in steps])
  spikes = [
    steps[i][0]
    for i in range(SPIKE_WINDOW, len(loss))
    if loss[i] > SPIKE_FACTOR * np.median(loss[i - SPIKE_WINDOW : i])
  ]
  grad = np.array([g for step, _, g in steps if step > warmup_steps])
  cv = float(grad.std() / grad.mean()) if len(grad) > 1 and grad.mean() > 0 else float('nan')
  return {'loss_spikes': len(spikes), 'loss_spike_steps': spikes, 'grad_norm_cv': cv}


def bits_at(result: dict, split: str, n: int) -> float | None:
  """Bits per byte of `result` on `split` evaluated with `n` latents (None if not scored)."""
  for r in result['eval']:
    if r['split'] == split and r['num_latents'] == n:
      return r['bits']
  return None


def _test_bits(result: dict) -> float:
  return bits_at(result, 'test', result['train_latents'][-1])


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof=1; nan for a single value)."""
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else float('nan')


def format_mean_std(values: Sequence[float], digits: int = 4) -> str:
  mean, std = mean_std(values)
  return f'{mean:.{digits}f}' if math.isnan(std) else f'{mean:.{digits}f} ± {std:.{digits}f}'


def paired_difference(runs: list[dict], reference: list[dict]) -> dict[str, Any] | None:
  """Per-seed test bits of `runs` minus `reference` over their common seeds: mean, sd, the
  95% half-width and the verdict of the module docstring's rule (None: no common seed)."""
  ref = {r['seed']: _test_bits(r) for r in reference}
  diffs = [_test_bits(r) - ref[r['seed']] for r in runs if r['seed'] in ref]
  if not diffs:
    return None
  n = len(diffs)
  mean, sd = mean_std(diffs)
  if n < 2:
    return {'n': n, 'mean': mean, 'sd': sd, 'half_width': float('nan'), 'verdict': 'one seed'}
  half = (_T975[n - 2] if n - 1 <= len(_T975) else 1.96) * sd / math.sqrt(n)
  verdict = 'better' if mean + half < 0 else 'worse' if mean - half > 0 else 'not significant'
  return {'n': n, 'mean': mean, 'sd': sd, 'half_width': half, 'verdict': verdict}


def group_runs(results: list[dict]) -> dict[tuple[str, str], list[dict]]:
  """Results grouped by (budget, run name), in the order they first appear."""
  groups: dict[tuple[str, str], list[dict]] = {}
  for r in results:
    groups.setdefault((r['budget'], r['name']), []).append(r)
  return groups


def _summary_table(groups, reference: str) -> list[str]:
  lines = [
    '| budget | run | train N | seeds | steps | target tokens (M) | train TFLOP | train s | '
    'valid bits/byte @ train max N | test bits/byte @ train max N | test Δ vs '
    f'{reference} (paired, 95% CI) | loss spikes | grad-norm CV | peak / mean train-step '
    'memory (MiB) |',
    '|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|',
  ]
  for (budget, name), runs in groups.items():
    n_max = runs[0]['train_latents'][-1]
    label = '..'.join(str(n) for n in runs[0]['train_latents'])
    diff = paired_difference(runs, groups.get((budget, reference), []))
    if name == reference or diff is None:
      delta = '—'
    elif diff['verdict'] == 'one seed':
      delta = f'{diff["mean"]:+.4f} (one seed)'
    else:
      delta = f'{diff["mean"]:+.4f} ± {diff["half_width"]:.4f}: {diff["verdict"]}'

    def col(key, scale=1.0, runs=runs):
      return [r[key] * scale for r in runs]

    lines.append(
      f'| {budget} | {name} | {label} | {len(runs)} | {format_mean_std(col("steps"), 0)} | '
      f'{format_mean_std(col("target_tokens", 1e-6), 2)} | '
      f'{format_mean_std(col("train_flops", 1e-12), 2)} | '
      f'{format_mean_std(col("train_seconds"), 0)} | '
      f'{format_mean_std([bits_at(r, "validation", n_max) for r in runs])} | '
      f'{format_mean_std([_test_bits(r) for r in runs])} | {delta} | '
      f'{format_mean_std(col("loss_spikes"), 1)} | {format_mean_std(col("grad_norm_cv"), 3)} | '
      f'{runs[0]["peak_memory_bytes"] / 2**20:.1f} / '
      f'{np.mean(col("mean_memory_bytes")) / 2**20:.1f} |'
    )
  return lines


def _latents_table(groups, counts: list[int]) -> list[str]:
  lines = [
    '| budget | run | ' + ' | '.join(f'N={n}' for n in counts) + ' |',
    '|---|---|' + '---:|' * len(counts),
  ]
  for (budget, name), runs in groups.items():
    cells = []
    for n in counts:
      values = [bits_at(r, 'validation', n) for r in runs]
      cells.append('' if None in values else format_mean_std(values, 3))
    lines.append(f'| {budget} | {name} | ' + ' | '.join(cells) + ' |')
  return lines


def _per_seed_table(groups) -> list[str]:
  lines = [
    '| budget | run | seed | steps | train s | valid bits/byte | test bits/byte | loss spikes | '
    'grad-norm CV |',
    '|---|---|---:|---:|---:|---:|---:|---:|---:|',
  ]
  for (budget, name), runs in groups.items():
    for r in sorted(runs, key=lambda r: r['seed']):
      n_max = r['train_latents'][-1]
      lines.append(
        f'| {budget} | {name} | {r["seed"]} | {r["steps"]} | {r["train_seconds"]:.0f} | '
        f'{bits_at(r, "validation", n_max):.4f} | {_test_bits(r):.4f} | {r["loss_spikes"]} | '
        f'{r["grad_norm_cv"]:.3f} |'
      )
  return lines


def _memory_line(memory: dict[str, list[tuple[int, int]]]) -> str:
  parts = [', '.join(f'{b}: {m / 2**20:.1f}' for b, m in memory.get('perceiver_ar', []))]
  parts += [
    f'{FULL_WINDOW_NAMES[kind]} (window {memory[kind][0][0]}): {memory[kind][0][1] / 2**20:.1f}'
    for kind in FULL_WINDOW_NAMES
    if memory.get(kind)
  ]
  return 'Compiled train-step memory by bucket (MiB): ' + '; '.join(filter(None, parts))


def write_report(
  results: list[dict],
  memory: dict[str, list[tuple[int, int]]],
  out: str,
  *,
  preset: str,
  command: str,
  reference: str,
) -> str:
  """Writes `results.md`, `results.json` and the three PNG plots into `out`; returns the
  markdown. `results` holds one run.json dict per (run, seed, budget), with 'budget' added."""
  groups = group_runs(results)
  counts = sorted({r['num_latents'] for res in results for r in res['eval']})
  seeds = sorted({r['seed'] for r in results})
  lines = [
    f'Preset `{preset}`, batch {results[0]["batch_size"]}, seeds {seeds}. Command: `{command}`',
    '',
    'Mean ± sample standard deviation over seeds. Budgets: `steps` = the same steps for every '
    f'run; `flops` = the training FLOPs of {reference} at the preset steps (analytic FLOP '
    'model, at the bucket each step runs); `seconds` = its measured train-step wall-clock. '
    f'Test Δ: per-seed test bits minus {reference} at the same budget and seed, mean ± 95% '
    'confidence half-width (paired t); "better"/"worse" only when the interval excludes 0. '
    f'Loss spikes: steps whose loss exceeds {SPIKE_FACTOR}x the median of the previous '
    f'{SPIKE_WINDOW}. Memory: compiled train-step memory, peak over the buckets used / mean '
    'over the steps.',
    '',
    *_summary_table(groups, reference),
    '',
    'Validation bits per byte by evaluation latent count (mean ± std over seeds):',
    '',
    *_latents_table(groups, counts),
    '',
    'Per seed:',
    '',
    *_per_seed_table(groups),
    '',
    _memory_line(memory),
  ]
  markdown = '\n'.join(lines) + '\n'
  with open(os.path.join(out, 'results.md'), 'w') as f:
    f.write(markdown)
  with open(os.path.join(out, 'results.json'), 'w') as f:
    json.dump({'results': results, 'memory': memory}, f, indent=1)
  _plot(groups, memory, counts, out)
  return markdown


def _plot(groups, memory, counts: list[int], out: str) -> None:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  budgets = list(dict.fromkeys(budget for budget, _ in groups))
  fig, axes = plt.subplots(1, len(budgets), figsize=(6 * len(budgets), 4), squeeze=False)
  for ax, budget in zip(axes[0], budgets, strict=True):
    for (b, name), runs in groups.items():
      if b != budget:
        continue
      curves = [dict(map(tuple, r['validation_curve'])) for r in runs]
      steps = sorted(set.intersection(*(set(c) for c in curves)))
      if not steps:
        continue
      values = np.array([[c[s] for s in steps] for c in curves])
      mean, std = values.mean(0), values.std(0, ddof=1) if len(curves) > 1 else 0 * values[0]
      (line,) = ax.plot(steps, mean, marker='o', markersize=3, label=name)
      ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set(
      xlabel='training step',
      ylabel='validation bits per byte',
      title=f'Validation during training ({budget} budget; band: ± std over seeds)',
    )
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(os.path.join(out, 'validation_vs_step.png'), dpi=120)

  fig, axes = plt.subplots(1, len(budgets), figsize=(6 * len(budgets), 4), squeeze=False)
  for ax, budget in zip(axes[0], budgets, strict=True):
    for (b, name), runs in groups.items():
      if b != budget:
        continue
      ns = [n for n in counts if all(bits_at(r, 'validation', n) is not None for r in runs)]
      values = np.array([[bits_at(r, 'validation', n) for n in ns] for r in runs])
      std = values.std(0, ddof=1) if len(runs) > 1 else None
      ax.errorbar(ns, values.mean(0), yerr=std, marker='o', capsize=3, label=name)
    ax.set(
      xscale='log',
      xlabel='latents at evaluation (N)',
      ylabel='validation bits per byte',
      title=f'Quality vs evaluation latents ({budget} budget; bars: ± std)',
    )
    ax.set_xticks(counts, [str(n) for n in counts])
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(os.path.join(out, 'bits_vs_latents.png'), dpi=120)

  fig, ax = plt.subplots(figsize=(6, 4))
  ticks = sorted({b for kind in memory for b, _ in memory[kind]})
  if memory.get('perceiver_ar'):
    buckets, mems = zip(*memory['perceiver_ar'], strict=True)
    ax.plot(buckets, [m / 2**20 for m in mems], marker='o', label='Perceiver AR train step')
  colors = iter(('red', 'green', 'purple', 'orange', 'brown'))
  for kind in FULL_WINDOW_NAMES:
    color = next(colors)
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
