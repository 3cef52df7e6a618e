"""Where a train step's time goes: one step traced with `jax.profiler`, each XLA thunk event
joined to the JAX source op (`op_name`) of the compiled HLO instruction it ran.

  python benchmarks/profile_step.py                     # vs_lucidrains' shapes, float32
  python benchmarks/profile_step.py --context=256 --latents=64 --batch=2 --top=20

Prints the step's median wall-clock, the events' summed thread time split into matmuls
(dot_general) and everything else, per model part, and the costliest ops. Thread times of
events that run side by side on different cores add up, so they can exceed the wall-clock.
"""

from __future__ import annotations

import collections
import glob
import re
import tempfile

import common
import jax
from absl import app, flags

from perceiver_ar_vl.experiments import step_cost

flags.DEFINE_integer('context', 1024, 'Window M.')
flags.DEFINE_integer('latents', 256, 'Latents N (and the bucket).')
flags.DEFINE_integer('batch', 8, 'Windows per step.')
flags.DEFINE_string('impl', 'auto', 'model.attention_impl.')
flags.DEFINE_integer('top', 30, 'How many of the costliest ops to list.')
FLAGS = flags.FLAGS


def thunk_times(step, op_names: dict[str, str]) -> dict[str, float]:
  """Milliseconds of thread time per JAX op name over one traced call of `step`."""
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      step()
    (path,) = glob.glob(f'{trace_dir}/**/*.xplane.pb', recursive=True)
    profile = jax.profiler.ProfileData.from_file(path)
  times = collections.defaultdict(float)
  for plane in profile.planes:
    for line in plane.lines:
      for event in line.events:
        if event.name in op_names:  # an HLO instruction (not an executor or Python event)
          times[op_names[event.name]] += event.duration_ns / 1e6
  return times


def main(argv):
  del argv
  config = common.seed_model_config(FLAGS.context, FLAGS.batch)
  step, _ = step_cost.compiled_train_step(config, FLAGS.latents, FLAGS.impl)
  pattern = r'%([\w.\-]+) = .*?metadata=\{op_name="([^"]*)"'
  op_names = {m[1]: m[2] for m in re.finditer(pattern, step.compiled.as_text())}
  seconds = step_cost.median_step_seconds(step, 3)
  times = thunk_times(step, op_names)

  def short(op: str) -> str:
    op = re.sub(r'^jit\(\w+\)/', '', op)
    return re.sub(r'/while/body/closed_call(/cond/branch_\d_fun)?', '/loop', op)

  parts = collections.defaultdict(float)
  for op, ms in times.items():
    part = next((p for p in ('cross_attend', 'latent_') if p in op), 'other')
    parts[('matmul' if 'dot_general' in op else 'other ops', part.rstrip('_'))] += ms
  print(
    f'{FLAGS.batch} x {FLAGS.context} bytes, N = {FLAGS.latents}, attention {FLAGS.impl}: '
    f'{seconds:.3f} s / step (median of 3); summed thread time {sum(times.values()):.0f} ms\n'
  )
  print('| kind | part | thread ms |\n|---|---|---:|')
  for (kind, part), ms in sorted(parts.items(), key=lambda kv: -kv[1]):
    print(f'| {kind} | {part} | {ms:.0f} |')
  print(f'\n| thread ms | op (costliest {FLAGS.top}) |\n|---:|---|')
  for op, ms in sorted(times.items(), key=lambda kv: -kv[1])[: FLAGS.top]:
    print(f'| {ms:.1f} | {short(op)[:140]} |')


if __name__ == '__main__':
  app.run(main)
