"""GFLOP/s of the seed train step's single ops at its shapes, each jitted alone: which matmuls
run at the plain matmul's rate and which do not.

  python benchmarks/op_rates.py                  # float32
  python benchmarks/op_rates.py --dtype=bfloat16  # bf16 inputs, float32 results
  python benchmarks/op_rates.py --split=8         # attention dots as 8 products, one per example
  taskset -c 0 python benchmarks/op_rates.py      # on one core: which dots use both

Shapes as `vs_lucidrains.py` (the seed model, M = 1024, N = 256, batch 8, 8 heads of 64):
the weight matmuls of the latent and cross-attend layers, and the attention's batched dots in
the layouts the kernels use (`bqhd` sequence-major as the model holds q, k, v; `bhqd`
heads-major). Each op is timed `--repeats` times after a warm-up and the median reported; FLOPs
are 2 per multiply-add.
"""

from __future__ import annotations

import functools
import os

import common
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from perceiver_ar_vl.experiments import step_cost

flags.DEFINE_string('dtype', 'float32', 'Input dtype (results float32).')
flags.DEFINE_integer('repeats', 15, 'Timed calls per op.')
flags.DEFINE_integer('split', 1, 'Attention dots as this many separate products over the batch.')
FLAGS = flags.FLAGS

B, M, N, H, K, D, F = 8, 1024, 256, 8, 64, 512, 2048
# (what it is, einsum spec, operand shapes); FLOPs follow from the spec's index sizes.
OPS = (
  ('latent MLP in', 'nd,df->nf', ((B * N, D), (D, F))),
  ('latent MLP out', 'nf,fd->nd', ((B * N, F), (F, D))),
  ('latent projection', 'nd,de->ne', ((B * N, D), (D, D))),
  ('cross-attend key or value projection', 'nd,de->ne', ((B * M, D), (D, D))),
  ('cross-attend keys and values in one', 'nd,de->ne', ((B * M, D), (D, 2 * D))),
  ('cross-attend scores, sequence-major', 'bqhd,bkhd->bhqk', ((B, N, H, K), (B, M, H, K))),
  ('cross-attend scores, heads-major', 'bhqd,bhkd->bhqk', ((B, H, N, K), (B, H, M, K))),
  ('cross-attend probs @ v, sequence-major v', 'bhqk,bkhd->bhqd', ((B, H, N, M), (B, M, H, K))),
  ('cross-attend probs @ v, heads-major v', 'bhqk,bhkd->bhqd', ((B, H, N, M), (B, H, M, K))),
  ('latent scores, sequence-major', 'bqhd,bkhd->bhqk', ((B, N, H, K), (B, N, H, K))),
  ('latent probs @ v, sequence-major v', 'bhqk,bkhd->bhqd', ((B, H, N, N), (B, N, H, K))),
)


def flops(spec: str, shapes) -> int:
  """2 x the product of every index size of `spec` (each multiply-add once)."""
  inputs = spec.split('->')[0].split(',')
  sizes = {}
  for name, shape in zip(inputs, shapes, strict=True):
    sizes.update(zip(name, shape, strict=True))
  return 2 * int(np.prod(list(sizes.values())))


def jitted(spec: str, split: int):
  """einsum(spec) with float32 results; a batched (`b...`) spec as `split` separate products
  over its leading axis (outputs left apart: only the products are timed)."""
  einsum = functools.partial(jnp.einsum, spec, preferred_element_type=jnp.float32)
  if split == 1 or not spec.startswith('b'):
    return jax.jit(einsum)
  size = B // split
  return jax.jit(
    lambda a, b: [
      einsum(a[i * size : (i + 1) * size], b[i * size : (i + 1) * size]) for i in range(split)
    ]
  )


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  plain = common.matmul_gflops(dtype=FLAGS.dtype, result_dtype='float32')
  print(
    f'{FLAGS.dtype} inputs, float32 results, attention dots as {FLAGS.split} product(s); '
    f'{len(os.sched_getaffinity(0))} core(s); plain 2048^2 matmul {plain:.0f} GFLOP/s\n'
  )
  print('| op | einsum | shapes | ms | GFLOP/s | of the plain matmul |')
  print('|---|---|---|---:|---:|---:|')
  for what, spec, shapes in OPS:
    args = [jnp.asarray(rng.normal(size=s), FLAGS.dtype) for s in shapes]
    f = jitted(spec, FLAGS.split)
    call = lambda f=f, args=args: jax.block_until_ready(f(*args))  # noqa: E731
    s = step_cost.median_step_seconds(call, FLAGS.repeats)
    rate = flops(spec, shapes) / s / 1e9
    dims = ' x '.join(str(list(x)) for x in shapes)
    print(f'| {what} | `{spec}` | {dims} | {s * 1e3:.2f} | {rate:.0f} | {rate / plain:.0%} |')


if __name__ == '__main__':
  app.run(main)
