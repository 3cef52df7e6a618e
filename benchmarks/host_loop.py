"""Time per step of the training loop (training.train) against the bare compiled train step.

  python benchmarks/host_loop.py                  # tiny model, CPU, 300 steps
  python benchmarks/host_loop.py --steps=600 --d_model=128
  python benchmarks/host_loop.py --cpu_execution=async    # JAX's asynchronous dispatch

The loop row runs `training.train` on a fixed-N tiny config (copy task, one bucket, no
evaluation, one checkpoint at the end) and reads the steps/s it logs every --log_every steps;
the first window (which holds start-up) is left out and the median of the others is taken. The
bare row runs the same compiled step (training.compiled_steps.CompiledSteps, the same bucket and
shardings) in a plain Python loop on one batch already on the device, waiting only at the end.
Their ratio is the host loop's overhead: the issue's goal is <= 1.1x.
"""

import datetime
import os
import platform
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from perceiver_ar_vl import config_lib, data, latents, parallel, runtime, training
from perceiver_ar_vl.runs import run_files, train_state
from perceiver_ar_vl.training import compiled_steps

flags.DEFINE_integer('steps', 300, 'Training steps of the loop row (and of each bare timing).')
flags.DEFINE_integer('log_every', 50, 'Steps per logged window of the loop row.')
flags.DEFINE_integer('batch', 8, 'Windows per step.')
flags.DEFINE_integer('window', 128, 'model.max_context (M).')
flags.DEFINE_integer('latents', 64, 'N, fixed.')
flags.DEFINE_integer('d_model', 64, 'Model width (2 layers, 4 heads, MLP 2x).')
flags.DEFINE_integer('repeats', 3, 'Bare-step timings (the median is printed).')
flags.DEFINE_enum('cpu_execution', 'inline', ['inline', 'async'], 'The config key of that name.')
FLAGS = flags.FLAGS


def tiny_config():
  """A fixed-N 2-layer model on the copy task, run as training.train would run it."""
  c = config_lib.make_config(
    'smoke', name='host_loop', strategy='fixed', min_latents=512, max_latents=512
  )
  d = FLAGS.d_model
  c.model.update(
    num_layers=2, num_heads=4, d_model=d, mlp_dim=2 * d, max_context=FLAGS.window, dropout_rate=0
  )
  n = FLAGS.latents
  c.latents.update(min=n, max=n, buckets=(n,))
  c.data.copy_length = FLAGS.window // 2
  c.train.update(
    steps=FLAGS.steps,
    batch_size=FLAGS.batch,
    log_every=FLAGS.log_every,
    checkpoint_every=FLAGS.steps,
    eval_every=0,
    eval_max_bytes=FLAGS.window + 1,
    wandb=False,
  )
  c.eval.update(max_bytes=FLAGS.window + 1, latents_sweep=())
  c.cpu_execution = FLAGS.cpu_execution
  return c


def bare_seconds_per_step(config) -> float:
  """Median over --repeats of the seconds per step of the loop-free compiled step."""
  steps = compiled_steps.CompiledSteps(config)
  mesh = steps.mesh
  state = train_state.create_train_state(config, steps.model, mesh)
  rng = jax.device_put(jax.random.PRNGKey(1), parallel.replicated(mesh))
  bucket = latents.bucket_for(FLAGS.latents, config.latents.buckets)
  steps.compile_ahead([bucket], state)
  step = steps(bucket)
  dataset = data.make_dataset(config.data, window=FLAGS.window + 1, seed=config.seed)
  batch = parallel.global_batch(dataset.train_batch(0, FLAGS.batch, config.seed), mesh)
  n = jax.device_put(np.int32(FLAGS.latents), parallel.replicated(mesh))
  state, out = step(state, batch, n, rng)  # warm-up
  jax.block_until_ready(out)
  times = []
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
      state, out = step(state, batch, n, rng)
    jax.block_until_ready((state, out))
    times.append((time.perf_counter() - start) / FLAGS.steps)
  return statistics.median(times)


def loop_seconds_per_step(config) -> float:
  """Median over the logged windows after the first of 1 / steps_per_sec of training.train."""
  with tempfile.TemporaryDirectory() as workdir:
    training.train(config, workdir)
    records = run_files.read_jsonl(os.path.join(workdir, run_files.METRICS_FILE))
  rates = [
    r['steps_per_sec']
    for r in records
    if 'steps_per_sec' in r and r['step'] % FLAGS.log_every == 0 and r['step'] > FLAGS.log_every
  ]
  return statistics.median(1 / r for r in rates)


def main(argv):
  del argv
  config = tiny_config()
  runtime.configure_cpu_execution(config.cpu_execution)  # before the first JAX work
  bare = bare_seconds_per_step(config)
  loop = loop_seconds_per_step(config)
  print(f'Command: `python {" ".join(sys.argv)}`  ')
  print(f'Date: {datetime.date.today()}; machine: {platform.processor() or platform.machine()}, ')
  print(
    f'{os.cpu_count()} CPUs, jax {jax.__version__}, {jax.device_count()} device(s), '
    f'cpu_execution={config.cpu_execution}'
  )
  print(
    f'Model: 2 layers, d_model {FLAGS.d_model}, M {FLAGS.window}, N {FLAGS.latents}, '
    f'batch {FLAGS.batch}, {FLAGS.steps} steps\n'
  )
  print('| path | ms / step | vs bare |')
  print('|---|---|---|')
  print(f'| bare compiled step (one device batch, Python loop) | {1e3 * bare:.3f} | 1.00x |')
  print(f'| training.train loop (median logged window) | {1e3 * loop:.3f} | {loop / bare:.2f}x |')


if __name__ == '__main__':
  app.run(main)
