"""A run's start, as a user meets it: cold against warm compilation cache, and the first
logged throughput against the steady one.

  python benchmarks/startup.py                      # configs/curriculum.py:smoke, 3 pairs
  python benchmarks/startup.py --config=configs/fixed_256.py:smoke --pairs=2

Each pair runs `launch.py --config=CONFIG` twice in fresh workdirs: first with an empty
compilation cache (cold), then with the cache the first run filled (warm: a rerun of the same
config). "To first step" is the wall clock from starting the process to the log line that
ends compiling (`Compiled N train steps`), i.e. when training starts; "wall" is the whole run.
The throughput columns read `steps_per_sec` of the run's first and later logged windows
(metrics.jsonl; the first window is what a user sees first). The table ends with the medians
and the warm / cold ratio, and the plain 2048^2 float32 matmul rate of this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPILED = re.compile(r'Compiled \d+ train steps in')


def run_once(config: str, steps: int, log_every: int, cache: str, workdir: str) -> dict:
  """Runs launch.py once; (seconds to first step, wall seconds, first / steady steps/s)."""
  env = dict(os.environ, XDG_CACHE_HOME=cache)
  for key in ('JAX_COMPILATION_CACHE_DIR', 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'):
    env.pop(key, None)  # the run's own default ('auto': under XDG_CACHE_HOME)
  command = [
    sys.executable,
    os.path.join(REPO, 'launch.py'),
    f'--config={config}',
    f'--workdir={workdir}',
    f'--config.train.steps={steps}',
    f'--config.train.log_every={log_every}',
  ]
  started = time.perf_counter()
  first_step = None
  with subprocess.Popen(
    command, cwd=REPO, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
  ) as proc:
    for line in proc.stderr:
      if first_step is None and COMPILED.search(line):
        first_step = time.perf_counter() - started
  wall = time.perf_counter() - started
  if proc.returncode:
    raise SystemExit(f'launch.py failed ({proc.returncode}): {" ".join(command)}')
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rates = [r['steps_per_sec'] for r in map(json.loads, f) if 'steps_per_sec' in r]
  windows = rates[log_every - 1 :: log_every]  # one value per logged window
  return {
    'first_step': first_step,
    'wall': wall,
    'first_rate': windows[0],
    'steady_rate': statistics.median(windows[1:]),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/curriculum.py:smoke')
  parser.add_argument('--steps', type=int, default=200)
  parser.add_argument('--log_every', type=int, default=50)
  parser.add_argument('--pairs', type=int, default=3)
  args = parser.parse_args()
  rows = []
  for pair in range(args.pairs):
    base = tempfile.mkdtemp(prefix='pvl_startup_')
    try:
      for kind in ('cold', 'warm'):
        result = run_once(
          args.config, args.steps, args.log_every, f'{base}/cache', f'{base}/{kind}'
        )
        rows.append({'pair': pair, 'cache': kind, **result})
    finally:
      shutil.rmtree(base, ignore_errors=True)

  print(f'{args.config}, {args.steps} steps, log_every {args.log_every}\n')
  print('| pair | cache | to first step (s) | wall (s) | first window steps/s | later steps/s |')
  print('|---:|---|---:|---:|---:|---:|')
  for r in rows:
    print(
      f'| {r["pair"]} | {r["cache"]} | {r["first_step"]:.1f} | {r["wall"]:.1f} | '
      f'{r["first_rate"]:.1f} | {r["steady_rate"]:.1f} |'
    )
  median = lambda kind, key: statistics.median(r[key] for r in rows if r['cache'] == kind)
  print(
    f'\nmedian to first step: cold {median("cold", "first_step"):.1f} s, warm '
    f'{median("warm", "first_step"):.1f} s (warm / cold '
    f'{median("warm", "first_step") / median("cold", "first_step"):.2f}); wall: cold '
    f'{median("cold", "wall"):.1f} s, warm {median("warm", "wall"):.1f} s'
  )
  first_vs_steady = [r['first_rate'] / r['steady_rate'] for r in rows]
  print(
    f'first window / later windows steps/s: median {statistics.median(first_vs_steady):.2f} '
    f'(range {min(first_vs_steady):.2f}-{max(first_vs_steady):.2f})'
  )
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from common import matmul_gflops  # noqa: PLC0415

  print(f'plain 2048^2 float32 matmul on this machine: {matmul_gflops():.0f} GFLOP/s')


if __name__ == '__main__':
  main()
