"""One-command accelerator benchmark: throughput, memory and MFU of the train step.

  python benchmarks/gpu.py                 # on a GPU: the seed model, see ROWS
  python benchmarks/gpu.py --small         # anywhere (CPU, a minute or two): a tiny model
  python benchmarks/gpu.py --out=gpu.json  # also write the rows as JSON

For Perceiver AR at (M, N) = (1024, 512), (4096, 1024), (16384, 1024) and the Transformer
baseline at M = 1024 and 4096: float32 vs bfloat16, every attention kernel that runs on this
backend (cuDNN only on a GPU, in bf16), and remat off/on. The batch keeps about 32k tokens per
step (32 windows at M = 1024). Each row: median step time after a compiling warm-up, steps/s,
target tokens/s (the positions that carry loss), XLA's compiled memory (arguments + outputs +
temporaries), the analytic FLOPs of `perceiver_ar_vl.experiments.flops.train_step_flops` and
MFU = FLOPs / time / peak, with the peak the device's dense bf16 rate (PEAK_BF16; on the CPU
the measured rate of a plain f32 matmul, since no peak is published). A row that fails (e.g.
out of memory) prints its error and the run goes on.
"""

from __future__ import annotations

import datetime
import json
import traceback

import common
import jax
from absl import app, flags

from perceiver_ar_vl import config_lib
from perceiver_ar_vl.experiments import flops, step_cost

flags.DEFINE_bool('small', False, 'A tiny model at short windows (runs on the CPU).')
flags.DEFINE_integer('repeats', 0, 'Timed steps per row after a warm-up (0: 5, 2 with --small).')
flags.DEFINE_string('out', '', 'Also write the rows to this JSON file.')
FLAGS = flags.FLAGS

# Dense bf16 tensor-core peak (FLOP/s) by device kind substring (vendor data sheets, SXM parts).
PEAK_BF16 = {'H200': 989e12, 'H100': 989e12, 'A100': 312e12, 'L40S': 362e12, 'L4': 121e12}
ROWS_SEED = [
  ('perceiver_ar', 1024, 512),
  ('perceiver_ar', 4096, 1024),
  ('perceiver_ar', 16384, 1024),
]
ROWS_SEED += [('transformer', 1024, 1024), ('transformer', 4096, 4096)]
ROWS_SMALL = [('perceiver_ar', 256, 128), ('transformer', 256, 256)]


def peak_flops() -> tuple[float, str]:
  kind = jax.devices()[0].device_kind
  for name, peak in PEAK_BF16.items():
    if name in kind:
      return peak, f'{kind} dense bf16 peak {peak / 1e12:.0f} TFLOP/s'
  rate = common.matmul_gflops() * 1e9
  return rate, f'{kind}: no published peak; measured plain f32 matmul {rate / 1e9:.0f} GFLOP/s'


def row_config(model_type: str, context: int, dtype: str, impl: str, remat: str):
  name = 'transformer' if model_type == 'transformer' else 'fixed_512'
  c = config_lib.strategy_config(name, 'cpu' if FLAGS.small else 'gpu')
  if FLAGS.small:
    c.model.update(num_layers=2, d_model=128, num_heads=4, mlp_dim=512)
  c.model.update(max_context=context, dtype=dtype, attention_impl=impl, remat=remat)
  c.model.max_wavelength = max(c.model.max_wavelength, float(context))
  tokens_per_step = 4096 if FLAGS.small else 32 * 1024
  c.train.batch_size = max(1, tokens_per_step // context)
  return c


def variants() -> list[tuple[str, str, str]]:
  """(dtype, attention_impl, remat) per row: f32 and bf16 with 'auto', each kernel in bf16
  (cuDNN only on a GPU), and remat='block' in bf16 with 'auto'."""
  impls = ['einsum', 'xla', 'chunked'] + (['cudnn'] if jax.default_backend() == 'gpu' else [])
  out = [('float32', 'auto', 'none'), ('bfloat16', 'auto', 'none')]
  out += [('bfloat16', impl, 'none') for impl in impls]
  return out + [('bfloat16', 'auto', 'block')]


def measure(model_type, context, latents, dtype, impl, remat, peak) -> dict:
  config = row_config(model_type, context, dtype, impl, remat)
  row = dict(
    model=model_type,
    M=context,
    N=latents,
    batch=config.train.batch_size,
    dtype=dtype,
    attention_impl=impl,
    remat=remat,
  )
  try:
    step, stats = step_cost.compiled_train_step(config, latents)
    seconds = step_cost.median_step_seconds(step, FLAGS.repeats or (2 if FLAGS.small else 5))
  except Exception as error:  # noqa: BLE001 (a row may fail: report it and go on)
    traceback.print_exc()
    return {**row, 'error': f'{type(error).__name__}: {str(error).splitlines()[0][:120]}'}
  step_flops = flops.train_step_flops(config, latents)
  memory = step_cost.compiled_bytes(stats)
  return {
    **row,
    'seconds': seconds,
    'steps_per_s': 1 / seconds,
    'tokens_per_s': config.train.batch_size * latents / seconds,
    'memory_gib': memory / 2**30,
    'gflop': step_flops / 1e9,
    'mfu': step_flops / seconds / peak,
  }


def main(argv):
  del argv
  peak, peak_note = peak_flops()
  header = (
    f'{datetime.date.today()}, jax {jax.__version__}, {jax.devices()[0].device_kind} '
    f'(backend {jax.default_backend()}); MFU against {peak_note}'
  )
  print(header + '\n')
  print(
    '| model | M | N | batch | dtype | attention | remat | ms / step | steps/s | '
    'target tokens/s | memory (GiB) | GFLOP / step | MFU |'
  )
  print('|---|---:|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|')
  rows = []
  for model_type, context, latents in ROWS_SMALL if FLAGS.small else ROWS_SEED:
    for dtype, impl, remat in variants():
      row = measure(model_type, context, latents, dtype, impl, remat, peak)
      rows.append(row)
      lead = (
        f'| {model_type} | {context} | {latents} | {row["batch"]} | {dtype} | {impl} | {remat} |'
      )
      if 'error' in row:
        print(f'{lead} failed: {row["error"]} |||||||', flush=True)
        continue
      print(
        f'{lead} {1e3 * row["seconds"]:.1f} | {row["steps_per_s"]:.2f} | '
        f'{row["tokens_per_s"]:,.0f} | {row["memory_gib"]:.2f} | {row["gflop"]:.0f} | '
        f'{row["mfu"]:.1%} |',
        flush=True,
      )
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      json.dump({'header': header, 'rows': rows}, f, indent=1)


if __name__ == '__main__':
  app.run(main)
