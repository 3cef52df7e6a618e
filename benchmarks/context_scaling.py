"""Context scaling at fixed latents: the Perceiver AR paper's claim that a much longer window
costs little when N is fixed (16x the context at ~20% lower steps/s on TPU).

  python benchmarks/context_scaling.py                        # M = 1024 .. 131072, N = 1024
  python benchmarks/context_scaling.py --max_context=16384 --transformer_max=2048
  python benchmarks/context_scaling.py --kernels              # dense vs chunked, per M

The seed model (6 layers, d_model 512, 8 heads, MLP 2048, dropout 0.1, float32 on the CPU),
batch 1, default settings (`model.attention_impl='auto'`). For each window M: median step
time (fwd + bwd + Adam), steps/s relative to M = 1024, the analytic FLOPs of
`perceiver_ar_vl.experiments.flops.train_step_flops`, the time ratio over the FLOP ratio
(1.00 = the step grows exactly as its arithmetic), and XLA's compiled temporaries of the
train step.
On a shared CPU read the ratios, not the times.
"""

from __future__ import annotations

import datetime

import common
import jax
from absl import app, flags

from perceiver_ar_vl import config_lib
from perceiver_ar_vl.experiments import flops
from perceiver_ar_vl.layers import kernels

flags.DEFINE_integer('min_context', 1024, 'Smallest window M (doubled up to max_context).')
flags.DEFINE_integer('max_context', 131072, 'Largest window M.')
flags.DEFINE_integer('latents', 1024, 'Latents N (the bucket) at every M.')
flags.DEFINE_integer('batch', 1, 'Windows per step.')
flags.DEFINE_integer('repeats', 3, 'Timed steps per row, after one warm-up step.')
flags.DEFINE_integer('transformer_max', 4096, 'Largest M for the Transformer baseline (0: none).')
flags.DEFINE_string('dtype', 'float32', 'Compute dtype.')
flags.DEFINE_bool('kernels', False, 'Instead: Perceiver AR step time per attention kernel.')
FLAGS = flags.FLAGS


def seed_config(model_type: str, context: int) -> config_lib.ml_collections.ConfigDict:
  """The seed model at window `context`, batch FLAGS.batch, default settings otherwise."""
  name = 'transformer' if model_type == 'transformer' else 'fixed_512'
  c = config_lib.strategy_config(name, 'gpu')
  c.model.max_context = context
  c.model.max_wavelength = max(c.model.max_wavelength, float(context))
  c.model.dtype = FLAGS.dtype
  c.train.batch_size = FLAGS.batch
  return c


def contexts() -> list[int]:
  out, m = [], FLAGS.min_context
  while m <= FLAGS.max_context:
    out.append(m)
    m *= 2
  return out


def scaling_table() -> None:
  print(
    '| model | M | GFLOP / step | s / step | steps/s vs M=1024 | time ratio | FLOP ratio '
    '| time / FLOP ratio | temporaries (GiB) | GFLOP/s |'
  )
  print('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
  for model_type in ('perceiver_ar', 'transformer'):
    base = None
    for context in contexts():
      if model_type == 'transformer' and context > FLAGS.transformer_max:
        break
      config = seed_config(model_type, context)
      bucket = FLAGS.latents if model_type == 'perceiver_ar' else context
      stats = common.time_train_step(config, bucket, FLAGS.repeats)
      step_flops = flops.train_step_flops(config, bucket)
      base = base or (stats.seconds, step_flops)
      time_ratio, flop_ratio = stats.seconds / base[0], step_flops / base[1]
      name = 'Perceiver AR' if model_type == 'perceiver_ar' else 'Transformer'
      print(
        f'| {name} | {context} | {step_flops / 1e9:.0f} | {stats.seconds:.2f} | '
        f'{1 / time_ratio:.2f} | {time_ratio:.2f} | {flop_ratio:.2f} | '
        f'{time_ratio / flop_ratio:.2f} | {stats.temp_bytes / 2**30:.2f} | '
        f'{step_flops / stats.seconds / 1e9:.0f} |',
        flush=True,
      )


def kernel_table() -> None:
  impls = ['xla', 'einsum', 'chunked'] + (['cudnn'] if jax.default_backend() == 'gpu' else [])
  print('| M | ' + ' | '.join(f'{i} s / step' for i in impls) + ' | auto picks |')
  print('|---:|' + '---:|' * (len(impls) + 1))
  for context in contexts():
    config = seed_config('perceiver_ar', context)
    row = [
      common.time_train_step(config, FLAGS.latents, FLAGS.repeats, impl).seconds for impl in impls
    ]
    m = config.model
    picks = kernels.select_impl(
      jax.default_backend(),
      m.dtype,
      FLAGS.batch,
      m.num_heads,
      FLAGS.latents,
      context,
      m.d_model // m.num_heads,
    )
    print(f'| {context} | ' + ' | '.join(f'{s:.2f}' for s in row) + f' | {picks} |', flush=True)


def main(argv):
  del argv
  print(
    f'{datetime.date.today()}, jax {jax.__version__}, {jax.devices()[0].device_kind} '
    f'({jax.device_count()} device), seed model, N = {FLAGS.latents}, batch {FLAGS.batch}, '
    f'{FLAGS.dtype}, plain matmul {common.matmul_gflops():.0f} GFLOP/s\n'
  )
  kernel_table() if FLAGS.kernels else scaling_table()


if __name__ == '__main__':
  app.run(main)
