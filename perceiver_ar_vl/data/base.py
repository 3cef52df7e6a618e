"""What every byte dataset shares: the `ByteDataset` interface (built from the run's
`spec.DataSpec`) and the deterministic (seed, step) rows of a training batch."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

from perceiver_ar_vl.config_choices import SPLITS
from perceiver_ar_vl.spec import DataSpec

VOCAB_SIZE = 256
DEFAULTS = dataclasses.asdict(DataSpec())  # the keys of config.data, declared in spec.py
ROW_TAG = 0x64617461  # 'data': training rows' streams, apart from other per-step streams
PAD = -1  # a training row's left padding (the aligned copy task): not attended, not scored


def config_value(data_config: Any, key: str) -> Any:
  """`data_config[key]` for a ConfigDict or a dict, DEFAULTS[key] when absent."""
  return data_config.get(key, DEFAULTS[key])


class ByteDataset(abc.ABC):
  """Byte data for one (config.data, window). Rows are W = window bytes, int32 tokens."""

  vocab_size: int = VOCAB_SIZE

  def __init__(self, window: int):
    self.window = window  # W = M + 1 tokens per training example

  @abc.abstractmethod
  def _train_rows(
    self, rng: np.random.Generator, batch_size: int, rows: range, step: int
  ) -> np.ndarray:
    """uint8 or int32 [len(rows), W]: rows `rows` of a global batch of `batch_size` rows at
    training step `step` (which a curriculum reads; the randomness comes from `rng` only).

    Draws the randomness of all `batch_size` rows (whatever `rows` is), so that every process
    sees the same global batch and keeps its own slice. Negative values (PAD) are left
    padding, neither attended nor scored (`training.step`).
    """

  @abc.abstractmethod
  def split_bytes(self, split: str) -> np.ndarray:
    """uint8 [num_bytes] the whole split ('train', 'validation', 'test') as one read-only array.

    For sequential evaluation. For the copy task: COPY_EVAL_EXAMPLES examples of L bytes
    back to back, a fixed stream per (seed, split); for its aligned form (data.copy_min_crop
    > 0) shaped [COPY_EVAL_EXAMPLES, L]: a 2-D split is separate examples, each scored in its
    own windows (evaluate.bits_per_byte).
    """

  @abc.abstractmethod
  def num_bytes(self, split: str) -> int:
    """Length of `split` in bytes."""

  def source_distances(self, split: str) -> np.ndarray | None:
    """int32, shaped as `split_bytes(split)`: how far back each byte's copy source lies in
    its example (0 = a byte with no source), which evaluation aggregates bits by; None for
    data without that structure (text)."""
    del split
    return None

  def train_batch(
    self, step: int, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1
  ) -> np.ndarray:
    """int32 [batch_size // process_count, W] training rows of this process.

    The global batch is drawn from `np.random.default_rng([seed, step, ROW_TAG])` only (the
    tag keeps it apart from other per-step streams, e.g. latents.py's); this process holds
    global rows [process_index * b, (process_index + 1) * b) with b = batch_size //
    process_count, so the processes' rows together form the global batch.

    Raises:
      ValueError: negative step/seed, batch_size not divisible by process_count, bad
        process_index.
    """
    rows = process_rows(step, batch_size, seed, process_index, process_count)
    rng = np.random.default_rng([seed, step, ROW_TAG])
    return self._train_rows(rng, batch_size, rows, step).astype(np.int32)

  def train_batches(
    self,
    start_step: int,
    end_step: int,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    prefetch: int = 2,
  ) -> Iterator[np.ndarray]:
    """`train_batch(step, ...)` for step in [start_step, end_step), prefetched by grain threads.

    Yields the same arrays as calling train_batch step by step (in order), so resuming at
    `start_step` is exact.
    """
    import grain

    process_rows(start_step, batch_size, seed, process_index, process_count)  # validate early
    steps = grain.MapDataset.range(start_step, end_step)
    batches = steps.map(
      lambda step: self.train_batch(step, batch_size, seed, process_index, process_count)
    )
    options = grain.ReadOptions(num_threads=max(prefetch, 1), prefetch_buffer_size=prefetch)
    return iter(batches.to_iter_dataset(options))

  def _check_split(self, split: str) -> None:
    if split not in SPLITS:
      raise ValueError(f'Unknown split {split!r}; choose one of {SPLITS}.')


def process_rows(
  step: int, batch_size: int, seed: int, process_index: int, process_count: int
) -> range:
  """Global row indices held by this process (validates the arguments)."""
  if step < 0 or seed < 0:
    raise ValueError(f'step and seed must be >= 0, got step={step}, seed={seed}.')
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(
      f'Need 0 <= process_index < process_count, got {process_index} and {process_count}.'
    )
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(
      f'batch_size={batch_size} must be a positive multiple of process_count={process_count}.'
    )
  per_process = batch_size // process_count
  return range(process_index * per_process, (process_index + 1) * per_process)
