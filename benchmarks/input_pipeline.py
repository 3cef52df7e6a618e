"""Milliseconds per training batch of the input pipeline (data/), before and after.

  python benchmarks/input_pipeline.py                          # a synthetic 100 MB file
  python benchmarks/input_pipeline.py --data_path=/path/to/enwik8.zip

Rows of the table, all in one run over the same prepared split:
  * per-row (before): the pipeline as it was until 2026-11 (reimplemented here): every row
    makes its own numpy generator from (seed, step, row) and reads the one or two
    array_record records its window overlaps;
  * records: vectorised offsets (one generator per step), rows still read from the records,
    what `data/datasets.py` does for a train split larger than `data.in_memory_bytes`;
  * in memory: vectorised offsets and one gather from the train split held as one array;
  * prefetched: the in-memory batches as the training loop receives them from
    `train_batches` (grain threads), i.e. what a step waits for.

Without --data_path the benchmark writes a file of random bytes (90/5/5 split: a 90 MB train
split, as enwik8's) and prepares it under a temporary directory. On a shared CPU, read the
ratios; each figure is the median of --repeats timings of --batches batches.
"""

import os
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np
from absl import app, flags, logging

from perceiver_ar_vl import data
from perceiver_ar_vl.data import base
from perceiver_ar_vl.data.datasets import PreparedByteDataset

flags.DEFINE_string('data_path', '', 'enwik8(.zip) or any file; empty: a synthetic file.')
flags.DEFINE_integer('synthetic_mb', 100, 'Size of the synthetic file in MB (10^6 bytes).')
flags.DEFINE_integer('batch', 32, 'Rows per batch (global batch, one process).')
flags.DEFINE_integer('window', 1025, 'Bytes per row (M + 1).')
flags.DEFINE_integer('batches', 100, 'Batches per timing.')
flags.DEFINE_integer('repeats', 5, 'Timings per row of the table (the median is printed).')
FLAGS = flags.FLAGS


def per_row_batch(ds: PreparedByteDataset, step: int, batch_size: int, seed: int):
  """The pipeline before vectorisation: one generator and one or two record reads per row."""
  batch_BxW = np.empty((batch_size, ds.window), np.int32)
  high = ds.num_bytes('train') - ds.window + 1
  for r in range(batch_size):
    rng = np.random.default_rng([seed, step, r, base.ROW_TAG])
    batch_BxW[r] = ds._read('train', int(rng.integers(0, high)), ds.window)
  return batch_BxW


def ms_per_batch(make_batches: Callable[[int, int], object]) -> float:
  """Median over repeats of the milliseconds per batch of `make_batches(start, end)`."""
  times = []
  for repeat in range(FLAGS.repeats):
    start = 1000 * (repeat + 1)  # fresh steps each time: no warm caches of the same rows
    began = time.perf_counter()
    make_batches(start, start + FLAGS.batches)
    times.append((time.perf_counter() - began) / FLAGS.batches)
  return 1e3 * statistics.median(times)


def make(config: dict, in_memory_bytes: int) -> PreparedByteDataset:
  return data.make_dataset(config | {'in_memory_bytes': in_memory_bytes}, FLAGS.window)


def main(argv):
  del argv
  import tensorflow_datasets as tfds

  logging.set_verbosity(logging.ERROR)  # tfds logs every prepared file
  tfds.disable_progress_bar()
  tmp = tempfile.TemporaryDirectory()
  path = FLAGS.data_path
  if not path:
    path = os.path.join(tmp.name, 'random.bin')
    rng = np.random.default_rng(0)
    with open(path, 'wb') as f:
      for _ in range(FLAGS.synthetic_mb):
        f.write(rng.integers(0, 256, 1_000_000, dtype=np.uint8).tobytes())
  name = 'enwik8' if os.path.basename(path) in ('enwik8', 'enwik8.zip') else 'text_file'
  config = {'name': name, 'path': path, 'data_dir': os.path.join(tmp.name, 'tfds')}
  began = time.perf_counter()
  records = make(config, 0)
  prepared = time.perf_counter() - began
  in_memory = make(config, 1 << 40)
  began = time.perf_counter()
  in_memory.split_bytes('train')
  loaded = time.perf_counter() - began
  b, seed = FLAGS.batch, 0
  print(
    f'{path}: train split {records.num_bytes("train"):,} bytes; prepared in {prepared:.1f} s, '
    f'read into memory in {loaded:.2f} s. Batches of {b} x {FLAGS.window} bytes, '
    f'median of {FLAGS.repeats} x {FLAGS.batches} batches.'
  )

  def loop(batch_fn):
    return lambda start, end: [batch_fn(step) for step in range(start, end)]

  def prefetched(start, end):
    return list(in_memory.train_batches(start, end, b, seed))

  rows = [
    ('per-row generator + record reads (before)', loop(lambda s: per_row_batch(records, s, b, 0))),
    (
      'vectorised offsets + record reads (> in_memory_bytes)',
      loop(lambda s: records.train_batch(s, b, seed)),
    ),
    (
      'vectorised offsets + one gather (in memory)',
      loop(lambda s: in_memory.train_batch(s, b, seed)),
    ),
    ('in memory, through train_batches (grain prefetch threads)', prefetched),
  ]
  print('\n| input pipeline | ms / batch | speed-up vs before |')
  print('|---|---:|---:|')
  before = None
  for label, fn in rows:
    ms = ms_per_batch(fn)
    before = before or ms
    print(f'| {label} | {ms:.3f} | {before / ms:.1f}x |')
  tmp.cleanup()


if __name__ == '__main__':
  app.run(main)
