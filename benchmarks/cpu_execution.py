"""The train step under `cpu_execution='inline'` (the default: on the calling thread, malloc
keeping its freed temporaries) against 'async' (JAX's default dispatch and malloc's).

  python benchmarks/cpu_execution.py                     # float32 seed step, M 1024, N 256, batch 8
  python benchmarks/cpu_execution.py --dtype=bfloat16
  python benchmarks/cpu_execution.py --preset=cpu --latents=128 --repeats=20

JAX reads the setting when its CPU client starts, so each setting runs in its own process, the
two alternating for `--rounds` rounds; a process compiles the step, runs a warm-up step, then
times `--repeats` steps and counts their page faults and system CPU time (getrusage). Prints
the medians over every timed step of each setting. The 'async' processes keep the malloc
thresholds that importing `common` raised (the default setting). A one-off check of the seed
step, one process each, faults per step: async with glibc's own thresholds 264,656, async
raised 263,423, inline with glibc's own 263,120, inline raised 40, so it takes both parts.
"""

from __future__ import annotations

import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import common
import jax
from absl import app, flags

from perceiver_ar_vl import config_lib, runtime, spec
from perceiver_ar_vl.experiments import step_cost

flags.DEFINE_integer('context', 1024, 'Window M.')
flags.DEFINE_integer('latents', 256, 'Latents N.')
flags.DEFINE_integer('batch', 8, 'Windows per step.')
flags.DEFINE_string('dtype', 'float32', 'model.dtype.')
flags.DEFINE_integer('rounds', 3, 'Alternating rounds (one process per setting and round).')
flags.DEFINE_integer('repeats', 4, 'Timed steps per process.')
flags.DEFINE_string('preset', '', "A named run's preset instead of the seed model (e.g. cpu).")
flags.DEFINE_string('child', '', 'Internal: time the step under this setting, print JSON.')
FLAGS = flags.FLAGS

SETTINGS = {'inline (default)': 'inline', 'async': 'async'}


def time_here() -> dict:
  """Seconds, minor page faults and system CPU seconds of each of `--repeats` steps."""
  runtime.configure_cpu_execution(FLAGS.child)  # before this process's first JAX work
  if FLAGS.preset:
    config = config_lib.strategy_config('fixed_256', FLAGS.preset)
  else:
    config = common.seed_model_config(FLAGS.context, FLAGS.batch)
  config.model.dtype = FLAGS.dtype
  step, stats = step_cost.compiled_train_step(spec.from_config(config), FLAGS.latents)
  step()
  out = {'seconds': [], 'faults': [], 'system': [], 'temp_bytes': int(stats.temp_size_in_bytes)}
  for _ in range(FLAGS.repeats):
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    step()
    after = resource.getrusage(resource.RUSAGE_SELF)
    out['seconds'].append(time.perf_counter() - start)
    out['faults'].append(after.ru_minflt - before.ru_minflt)
    out['system'].append(after.ru_stime - before.ru_stime)
  return out


def run_child(setting: str) -> dict:
  args = [a for a in sys.argv[1:] if not a.startswith('--rounds')]
  done = subprocess.run(
    [sys.executable, __file__, f'--child={setting}', *args],
    capture_output=True,
    text=True,
    check=True,
  )
  return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  if FLAGS.child:
    print(json.dumps(time_here()))
    return
  runs = {name: [] for name in SETTINGS}
  for _ in range(FLAGS.rounds):
    for name, setting in SETTINGS.items():
      runs[name].append(run_child(setting))
  print(
    f'{datetime.date.today()}, {os.cpu_count()} cores, jax {jax.__version__}; {FLAGS.dtype}, '
    f'{FLAGS.preset + " preset" if FLAGS.preset else "seed model"}, '
    f'M = {FLAGS.context if not FLAGS.preset else "preset"}, N = {FLAGS.latents}, batch '
    f'{FLAGS.batch if not FLAGS.preset else "preset"}; '
    f'{FLAGS.rounds} processes per setting x {FLAGS.repeats} steps; '
    f'plain 2048^2 float32 matmul {common.matmul_gflops():.0f} GFLOP/s; '
    f'compiled temporaries {runs["inline (default)"][0]["temp_bytes"] / 2**20:.0f} MiB\n'
  )
  medians = {
    name: {
      key: statistics.median(v for r in rs for v in r[key])
      for key in ('seconds', 'faults', 'system')
    }
    for name, rs in runs.items()
  }
  base = medians['async']['seconds']
  print(
    '| cpu_execution | ms / step (median) | speed vs async | minor page faults / step '
    '| system CPU ms / step |'
  )
  print('|---|---:|---:|---:|---:|')
  for name, m in medians.items():
    print(
      f'| {name} | {1e3 * m["seconds"]:.2f} | {base / m["seconds"]:.2f} | {m["faults"]:,.0f} | '
      f'{1e3 * m["system"]:.1f} |'
    )


if __name__ == '__main__':
  app.run(main)
