"""What a long copy window costs: the train step of configs/long_copy.py's Perceiver AR against
a Transformer of the same size (layers, width, heads), at windows from 1024 to 131072 bytes.

  python benchmarks/long_copy_cost.py
  python benchmarks/long_copy_cost.py --max_context=16384 --batch=4

For each window M: XLA's compiled memory of the train step (arguments + outputs +
temporaries) and its median step time after a warm-up step, for Perceiver AR at N latents
and for the Transformer (which predicts all M positions: N = M) while its compiled memory
stays under --memory_limit_gib and M <= --transformer_max (beyond: only the memory, from the
compiled program). Both use model.attention_impl
'auto' (the chunked kernel where a dense score tensor would be large). On a shared CPU read
the ratios, not the times.
"""

from __future__ import annotations

import argparse
import datetime
import os

import jax

from perceiver_ar_vl import cli
from perceiver_ar_vl.experiments import step_cost

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def long_copy_config(model_type: str, window: int, batch: int, latents: int):
  c = cli.load_config_file('config', f'{REPO}/configs/long_copy.py:smoke')
  c.model.update(type=model_type, max_context=window, max_wavelength=2.0 * window)
  n = window if model_type == 'transformer' else latents
  c.latents.update(min=n, max=n, buckets=(n,))
  c.train.batch_size = batch
  return c, n


def measure(model_type: str, window: int, batch: int, latents: int, limit: int, repeats: int):
  """(memory bytes, seconds or None) of one train step."""
  config, n = long_copy_config(model_type, window, batch, latents)
  memory = step_cost.train_step_memory(config, n)
  if memory > limit:
    return memory, None
  step, _ = step_cost.compiled_train_step(config, n)
  return memory, step_cost.median_step_seconds(step, repeats)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--min_context', type=int, default=1024)
  parser.add_argument('--max_context', type=int, default=131072)
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--latents', type=int, default=256)
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--memory_limit_gib', type=float, default=8.0)
  parser.add_argument('--transformer_max', type=int, default=16384, help='largest M timed')
  args = parser.parse_args()
  limit = int(args.memory_limit_gib * 2**30)
  print(
    f'# {datetime.date.today()}, jax {jax.__version__}, {jax.devices()[0].device_kind}, '
    f'batch {args.batch}, Perceiver AR N = {args.latents}'
  )
  print(
    '| window M | Perceiver AR step (s) | memory (MiB) | Transformer step (s) | memory (MiB) '
    '| time ratio |'
  )
  print('|---:|---:|---:|---:|---:|---:|')
  window = args.min_context
  while window <= args.max_context:
    pa_mem, pa_s = measure('perceiver_ar', window, args.batch, args.latents, limit, args.repeats)
    tr_limit = limit if window <= args.transformer_max else 0  # beyond: its memory only
    tr_mem, tr_s = measure('transformer', window, args.batch, args.latents, tr_limit, args.repeats)
    fmt = lambda s: f'{s:.3f}' if s is not None else 'not timed'
    ratio = f'{tr_s / pa_s:.1f}x' if tr_s and pa_s else '-'
    print(
      f'| {window} | {fmt(pa_s)} | {pa_mem / 2**20:.0f} | {fmt(tr_s)} | {tr_mem / 2**20:.0f} '
      f'| {ratio} |',
      flush=True,
    )
    window *= 2


if __name__ == '__main__':
  main()
