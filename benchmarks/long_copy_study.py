"""How far back can the copy task be learned, and how fast? Trains configs/long_copy.py:smoke's
model at several copy distances, with and without the curricula over the copy distance and the
window, each under a wall-clock budget, and prints the table of docs/long_copy.md.

  python benchmarks/long_copy_study.py --out=/tmp/long_copy_study --distances=512,2048 \
      --budget_minutes=6
  python benchmarks/long_copy_study.py --out=/tmp/long_copy_study --report  # table only

Each run is `launch.py --config=configs/long_copy.py:smoke` with the window M = 2 x the
distance, or the distance + --window_extra bytes (copy_length = 2 x the distance, so every
second-half byte's source lies that distance back), one process, stopped with SIGTERM (it
saves and exits) when the budget is spent. In the streamed task half the targets are fresh
random symbols (log2(16) = 4 bits each, which no model can beat) and half are copies, so
training bits = (4 + copy_bits) / 2 and 2.05 is copy_bits <= 0.1: a run is "solved" at the
first log where the mean training bits of the last 4 logs (100 steps; one step's bits are
noisy) is <= 2.05. Minutes count from the first logged step (compiles excluded). The final
validation copy_bits / fresh_bits (train.eval_max_bytes of validation) are listed too. Runs
are resumable: a finished run (its train_summary.json or a budget marker) is not rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOLVED_BITS = 2.05  # training bits per byte at copy_bits 0.1 (fresh bytes: 4 bits)
SMOOTH = 4  # logged steps (of log_every = 25) averaged: one step's bits are noisy

# variant -> overrides given the distance d and window M = 2d (curricula start at 1024 bytes).
VARIANTS = {
  'plain': lambda d, m: [],
  'distance curriculum': lambda d, m: [
    '--config.data.copy_length_schedule=stepwise',
    '--config.data.copy_length_min=1024',
    '--config.data.copy_length_warmup_fraction=0.5',
  ],
  'distance + window curricula': lambda d, m: [
    '--config.data.copy_length_schedule=stepwise',
    '--config.data.copy_length_min=1024',
    '--config.data.copy_length_warmup_fraction=0.5',
    '--config.window.schedule=stepwise',
    '--config.window.min=1024',
    '--config.window.warmup_fraction=0.5',
  ],
}


def window_of(distance: int, extra: int) -> int:
  """The window M: 2 x the distance, or with `extra` > 0 the distance + extra bytes (just
  enough for the last `extra` positions, the latents, to see their copies' sources)."""
  return distance + extra if extra else 2 * distance


def run_args(
  distance: int,
  variant: str,
  steps: int,
  latents: int,
  extra: int,
  lr: float,
  wavelength: float,
  seed: int = 0,
):
  window = window_of(distance, extra)
  args = [
    f'--config.seed={seed}',
    f'--config.model.max_context={window}',
    f'--config.model.max_wavelength={wavelength or 2.0 * window}',
    f'--config.data.copy_length={2 * distance}',
    f'--config.train.learning_rate={lr}',
    f'--config.train.steps={steps}',
    f'--config.latents.min={latents}',
    f'--config.latents.max={latents}',
    f'--config.latents.buckets=({latents},)',
    f'--config.train.checkpoint_every={steps}',
    '--config.train.log_every=25',
  ]
  if variant != 'plain' and 2 * distance <= 1024:
    return []  # nothing to grow: the curricula start at 1024 bytes
  return args + VARIANTS[variant](distance, window)


def train(workdir: str, args: list[str], budget_s: float) -> None:
  """launch.py training in `workdir`, sent SIGTERM after `budget_s` seconds."""
  marker = os.path.join(workdir, 'budget_spent')
  if os.path.exists(os.path.join(workdir, 'train_summary.json')) or os.path.exists(marker):
    return
  os.makedirs(workdir, exist_ok=True)
  command = [sys.executable, 'launch.py', '--config=configs/long_copy.py:smoke']
  command += [f'--workdir={workdir}', *args]
  with open(os.path.join(workdir, 'log.txt'), 'w') as log:
    process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
      process.wait(timeout=budget_s)
    except subprocess.TimeoutExpired:
      process.terminate()  # SIGTERM: saves and exits
      process.wait()
      open(marker, 'w').close()


def outcome(workdir: str) -> dict:
  """Minutes (from the first logged step) to the first log after which the mean training bits
  of the last SMOOTH logs is <= SOLVED_BITS, the last such mean, the steps and minutes trained
  and the final validation copy_bits / fresh_bits."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return {}
  records = [json.loads(line) for line in open(path)]
  rows = [r for r in records if 'bits_per_byte' in r]
  if not rows:
    return {}
  start = rows[0]['time']
  means = [
    sum(r['bits_per_byte'] for r in rows[max(0, i - SMOOTH + 1) : i + 1]) / min(i + 1, SMOOTH)
    for i in range(len(rows))
  ]
  solved = next((r for r, m in zip(rows, means, strict=True) if m <= SOLVED_BITS), None)
  final = [r for r in records if 'validation_copy_bits' in r]
  return {
    'solved_minutes': None if solved is None else (solved['time'] - start) / 60,
    'solved_step': None if solved is None else solved['step'],
    'last_bits': means[-1],
    'steps': rows[-1]['step'],
    'minutes': (rows[-1]['time'] - start) / 60,
    'copy_bits': final[-1]['validation_copy_bits'] if final else None,
    'fresh_bits': final[-1].get('validation_fresh_bits') if final else None,
  }


def run_name(
  distance: int, variant: str, extra: int, lr: float, latents: int, wavelength: float, seed: int
) -> str:
  name = f'd{distance}_{variant.replace(" ", "_").replace("+", "and")}'
  name += (f'_M{distance + extra}' if extra else '') + f'_lr{lr:g}_N{latents}'
  return name + (f'_W{wavelength:g}' if wavelength else '') + (f'_seed{seed}' if seed else '')


def copy_fresh(r: dict) -> str:
  if r['copy_bits'] is None:
    return '-'
  return f'{r["copy_bits"]:.2f} / {r["fresh_bits"]:.2f}'


def report(out: str) -> str:
  lines = [
    '| copy distance | window M | variant | N | lr | max_wavelength | seed | solved (copy_bits '
    '<= 0.1) after | last training bits | validation copy_bits / fresh_bits | steps | minutes '
    'trained |',
    '|---:|---:|---|---:|---:|---:|---:|---|---:|---|---:|---:|',
  ]
  names = [n for n in os.listdir(out) if os.path.exists(os.path.join(out, n, 'run.json'))]
  for name in sorted(names, key=lambda n: (int(n[1:].split('_')[0]), n)):
    with open(os.path.join(out, name, 'run.json')) as f:
      meta = json.load(f)
    r = outcome(os.path.join(out, name))
    if r:
      solved = (
        f'{r["solved_minutes"]:.1f} min (step {r["solved_step"]})'
        if r['solved_minutes'] is not None
        else 'not solved'
      )
      lines.append(
        f'| {meta["distance"]} | {meta["window"]} | {meta["variant"]} | {meta["latents"]} | '
        f'{meta["lr"]:g} | {meta.get("max_wavelength", 2 * meta["window"]):g} | '
        f'{meta.get("seed", 0)} | {solved} | '
        f'{r["last_bits"]:.2f} | {copy_fresh(r)} | {r["steps"]} | {r["minutes"]:.1f} |'
      )
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True, help='one workdir per run under it')
  parser.add_argument('--distances', default='512,2048,8192')
  parser.add_argument('--variants', default=','.join(VARIANTS))
  parser.add_argument('--budget_minutes', type=float, default=6.0, help='per run')
  parser.add_argument('--steps', type=int, default=1200, help='train.steps (schedules span it)')
  parser.add_argument('--latents', type=int, default=256)
  parser.add_argument('--window_extra', type=int, default=0, help='M = distance + this (0: 2x)')
  parser.add_argument('--lr', type=float, default=3e-3)
  parser.add_argument('--max_wavelength', type=float, default=0.0, help='0 = 2 x the window')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--report', action='store_true', help='only print the table')
  args = parser.parse_args()
  distances = [int(d) for d in args.distances.split(',')]
  if not args.report:
    for d in distances:
      for variant in args.variants.split(','):
        wavelength = args.max_wavelength
        run = run_args(
          d, variant, args.steps, args.latents, args.window_extra, args.lr, wavelength, args.seed
        )
        if not run:
          continue
        name = run_name(d, variant, args.window_extra, args.lr, args.latents, wavelength, args.seed)
        workdir = os.path.join(args.out, name)
        meta = dict(distance=d, window=window_of(d, args.window_extra), variant=variant)
        meta.update(latents=args.latents, lr=args.lr, budget_minutes=args.budget_minutes)
        meta['max_wavelength'] = wavelength or 2.0 * meta['window']
        meta['seed'] = args.seed
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, 'run.json'), 'w') as f:
          json.dump(meta, f)
        started = time.time()
        train(workdir, run, args.budget_minutes * 60)
        print(f'{name}: {time.time() - started:.0f} s', flush=True)
  print(report(args.out))


if __name__ == '__main__':
  main()
