"""The datasets behind `config.data` (vocabulary 256: a token is a raw byte) and
`make_dataset`, which validates the config and builds one.

The `config.data` keys, with their types, defaults and meaning, are declared in
`spec.DataSpec`.

Splits: enwik8 is the standard first 90M / next 5M / last 5M bytes; text_file the same
90/5/5 fractions of its length. Both are prepared once through a tensorflow-datasets builder
(`builders.py`, array_record, no TensorFlow) and read with random access. The copy task
(`copy_task.py`) is generated on the fly.

Training batches are deterministic and vectorised: the global batch at `step` draws all its
randomness (row offsets, copy-task phases and symbols) in a few array-valued calls of one
generator `np.random.default_rng([seed, step, ROW_TAG])`, so a resumed run sees the same
data, and each process slices just its own rows out of the global batch. A train split of at
most `in_memory_bytes` is read once into one uint8 array and a batch is one gather
(`offsets[:, None] + arange(W)`): well under a millisecond for 32 rows of 1025 bytes, off the
training step's critical path (grain threads prefetch batches too). A larger train split stays
on disk: each row reads the one or two array_record records it overlaps.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from perceiver_ar_vl import errors
from perceiver_ar_vl.config_choices import DATA_NAMES, SPLITS
from perceiver_ar_vl.data import sources
from perceiver_ar_vl.data.base import DEFAULTS, ByteDataset, config_value
from perceiver_ar_vl.data.copy_settings import copy_settings
from perceiver_ar_vl.data.copy_task import CopyDataset
from perceiver_ar_vl.data.recall_task import RecallDataset, recall_settings

# grain and tensorflow_datasets (builders imports it) are imported where they are used: they
# take ~0.5 s to import, which config_lib (and so every command-line error about a config
# value) would otherwise pay.
if TYPE_CHECKING:
  import tensorflow_datasets as tfds


class PreparedByteDataset(ByteDataset):
  """enwik8 / text_file: splits stored as fixed-size byte records, read with random access.

  A train split of at most `in_memory_bytes` is read whole on first use and kept as one
  array (`train_in_memory`); training rows are then one gather from it.
  """

  def __init__(
    self,
    builder: tfds.core.DatasetBuilder,
    window: int,
    description: str,
    in_memory_bytes: int = DEFAULTS['in_memory_bytes'],
  ):
    import grain

    from perceiver_ar_vl.data import builders

    super().__init__(window)
    self.builder = builder
    self._chunk = builder.builder_config.chunk_bytes
    sources = builders.prepare(builder)
    # grain views over the tfds array_record sources: record index -> bytes.
    self._records = {s: grain.MapDataset.source(sources[s]) for s in SPLITS}
    self._num_bytes = {}
    for split in SPLITS:
      n = len(self._records[split])
      last = len(self._record(split, n - 1)) if n else 0
      self._num_bytes[split] = (n - 1) * self._chunk + last if n else 0
    self._cache: dict[str, np.ndarray] = {}
    self._lock = threading.Lock()  # grain's prefetch threads may load a split concurrently
    for split in SPLITS:
      if self._num_bytes[split] < window:
        raise errors.UserError(
          f'{description}: the {split} split has {self._num_bytes[split]:,} bytes, fewer than '
          f'the window of {window} bytes (model context + 1): the file is too short for the '
          'window; use a longer file or a smaller window.'
        )
    # True: training rows are sliced from the whole train split held in memory.
    self.train_in_memory = self._num_bytes['train'] <= in_memory_bytes

  def _record(self, split: str, i: int) -> bytes:
    record = self._records[split][i]
    if int(record['index']) != i:
      raise RuntimeError(
        f'{self.builder.data_path}: record {i} of {split} holds chunk '
        f'{record["index"]}; delete the prepared directory and re-run.'
      )
    return record['bytes']

  def _read(self, split: str, start: int, length: int) -> np.ndarray:
    """uint8 [length] bytes [start, start + length) of `split`, reading only the records needed."""
    first, last = start // self._chunk, (start + length - 1) // self._chunk
    data = b''.join(self._record(split, i) for i in range(first, last + 1))
    offset = start - first * self._chunk
    return np.frombuffer(data, np.uint8, count=length, offset=offset)

  def _train_rows(
    self, rng: np.random.Generator, batch_size: int, rows: range, step: int
  ) -> np.ndarray:
    del step  # no curriculum: every step draws from the whole train split
    starts_B = rng.integers(0, self._num_bytes['train'] - self.window + 1, size=batch_size)
    starts_R = starts_B[rows.start : rows.stop]
    if self.train_in_memory:  # one gather from the split held in memory
      return self.split_bytes('train')[starts_R[:, None] + np.arange(self.window)]
    return np.stack([self._read('train', int(start), self.window) for start in starts_R])

  def split_bytes(self, split: str) -> np.ndarray:
    self._check_split(split)
    with self._lock:
      if split not in self._cache:
        array = self._read(split, 0, self._num_bytes[split]).copy()
        array.flags.writeable = False
        self._cache[split] = array
    return self._cache[split]

  def num_bytes(self, split: str) -> int:
    self._check_split(split)
    return self._num_bytes[split]


def make_dataset(
  data_config: Mapping[str, Any] | Any,
  window: int,
  seed: int = 0,
  *,
  total_steps: int = 0,
  enwik8: sources.Enwik8Spec = sources.STANDARD_ENWIK8,
) -> ByteDataset:
  """Validates `data_config` and returns its dataset; prepares tfds files once.

  Args:
    data_config: `config.data` (a `spec.DataSpec`, ConfigDict or dict).
    window: W = M + 1 bytes per training example.
    seed: seeds the copy task's fixed validation / test streams (file datasets ignore it).
    total_steps: the training run's train.steps, which the copy task's length curriculum
      counts fractions of (0: not for training; evaluation reads only the final length).
    enwik8: what data.name='enwik8' reads (URL, SHA-1, split sizes, fetch); the standard file
      unless given (e.g. a small stand-in archive).

  Raises:
    errors.UserError: unknown name / copy_mode, bad copy_vocab, in_memory_bytes or window, an
      empty file, a split shorter than W.
    errors.MissingFileError: a file in data.path / data.heldout_path does not exist (also a
      FileNotFoundError).
    sources.SourceError: an enwik8 path that is not the expected file or archive.
    sources.DownloadError: enwik8 with no data.path and the download fails.
  """
  name = config_value(data_config, 'name')
  if name not in DATA_NAMES:
    raise errors.UserError(f'Unknown data.name {name!r}; choose one of {DATA_NAMES}.')
  if not isinstance(window, int | np.integer) or window < 2:
    raise errors.UserError(f'window must be an integer >= 2, got {window!r}.')
  window = int(window)
  path = str(config_value(data_config, 'path') or '').strip()
  heldout = str(config_value(data_config, 'heldout_path') or '').strip()
  if heldout and name != 'text_file':
    raise errors.UserError(
      f'data.heldout_path is only used by data.name=text_file, not {name!r}; leave it empty.'
    )

  if name == 'copy':
    return CopyDataset(copy_settings(data_config, window, total_steps), window, seed)
  if name == 'recall':
    return RecallDataset(recall_settings(data_config, window), window, seed)

  in_memory_bytes = config_value(data_config, 'in_memory_bytes')
  if not isinstance(in_memory_bytes, int | np.integer) or in_memory_bytes < 0:
    raise errors.UserError(
      f'data.in_memory_bytes must be an integer >= 0 (0 = always read records), '
      f'got {in_memory_bytes!r}.'
    )
  record_bytes = config_value(data_config, 'record_bytes')
  if not isinstance(record_bytes, int | np.integer) or record_bytes < 1:
    raise errors.UserError(f'data.record_bytes must be an integer >= 1, got {record_bytes!r}.')
  import tensorflow_datasets as tfds

  from perceiver_ar_vl.data import builders

  data_dir = os.path.expanduser(
    str(config_value(data_config, 'data_dir') or '') or tfds.core.constants.DATA_DIR
  )
  if name == 'enwik8':
    builder = builders.enwik8_builder(data_dir, spec=enwik8, chunk_bytes=int(record_bytes))
    if not builder.is_prepared():
      downloads = os.path.join(data_dir, 'downloads')
      # Called by the one process that prepares (builders.prepare), so it downloads once.
      builder.source = lambda: sources.enwik8_source(
        path or sources.download_enwik8(downloads, enwik8), enwik8.size
      )
    return PreparedByteDataset(builder, window, f'enwik8 ({path or "downloaded"})', in_memory_bytes)

  paths = [p.strip() for p in path.split(',')]
  if not path or not all(paths):
    raise errors.UserError(
      f'data.path={path!r}: text_file needs --config.data.path=/path/to/file '
      '(several files separated by commas, no empty entries).'
    )
  _check_text_sizes(paths, heldout, window)
  builder = builders.byte_file_builder(data_dir, paths, heldout, int(record_bytes))
  return PreparedByteDataset(builder, window, f'data.path={path!r}', in_memory_bytes)


def rows_have_padding(data_config: Mapping[str, Any] | Any) -> bool:
  """Whether `config.data`'s training rows can hold left padding (PAD): the aligned copy task.
  The train step derives input masks and loss weights from the rows only then, so every other
  run compiles the step it always did."""
  return (
    config_value(data_config, 'name') == 'copy' and config_value(data_config, 'copy_min_crop') > 0
  )


def _check_text_sizes(paths: list[str], heldout: str, window: int) -> None:
  """Checks that the text files exist and every split holds a window, before any preparing.

  Raises:
    errors.MissingFileError: a path is missing or a directory.
    errors.UserError: a file is empty, or a split would be shorter than `window` bytes.
  """
  total = sum(sources.check_file(p, 'data.path') for p in paths)
  if heldout:
    held = sources.check_file(heldout, 'data.heldout_path')
    sizes = dict(zip(SPLITS, (total, held // 2, held - held // 2), strict=True))
    for split, size in sizes.items():
      if size < window:
        key = 'data.path' if split == 'train' else 'data.heldout_path'
        need = window if split == 'train' else 2 * window
        raise errors.UserError(
          f'{key}: the {split} split has {size:,} bytes, fewer than the window of {window} '
          f'bytes (model context + 1): the file is too short for the window; give {key} at '
          f'least {need:,} bytes or lower model.max_context.'
        )
    return
  sizes = dict(zip(SPLITS, sources.text_split_sizes(total), strict=True))
  short = [split for split, size in sizes.items() if size < window]
  if short:
    need = 20 * window - 20  # validation and test get 5% each
    while min(sources.text_split_sizes(need)) < window:
      need += 1
    raise errors.UserError(
      f'data.path={",".join(paths)!r} has {total:,} bytes, so its {short[0]} split (5%) '
      f'has {sizes[short[0]]:,}, fewer than the window of {window} bytes (model context + 1): '
      f'the file is too short for the window; give at least {need:,} bytes, or lower '
      'model.max_context, or pass a separate data.heldout_path.'
    )
