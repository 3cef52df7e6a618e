"""Byte-level datasets (vocabulary 256: a token is a raw byte), selected by `config.data`.

`config.data` keys (defaults in DEFAULTS):
  name          'enwik8' | 'text_file' | 'copy'.
  path          enwik8: local `enwik8` or `enwik8.zip`; '' downloads ENWIK8_URL (SHA-1 checked).
                text_file: a local file, or several separated by commas (concatenated in order).
  heldout_path  text_file only: if set, all of `path` trains and this file's first half is
                'validation', its second half 'test'.
  data_dir      where prepared array_record files go ('' = tfds default, ~/tensorflow_datasets).
  copy_mode     copy task: 'mirror' (second half = first half reversed) or 'copy' (repeated).
  copy_vocab    copy task: alphabet size k in [2, 256]; symbol i is byte (ord('a') + i) % 256,
                so k <= 26 gives the letters 'a'.. (k = 16: 'a'..'p').
  copy_length   copy task: bytes per example (0 = the window M), so the copy distance is
                about copy_length / 2.
  in_memory_bytes  enwik8 / text_file: a train split of at most this many bytes is held in
                memory as one array (batches are one gather); a larger one is read per row
                from its array_record records. 0 always reads records.

Splits: enwik8 is the standard first 90M / next 5M / last 5M bytes; text_file the same
90/5/5 fractions of its length. Both are prepared once through a tensorflow-datasets builder
(`byte_datasets.py`, array_record, no TensorFlow) and read with random access.

The copy task is synthetic: a stream of examples, each ceil(L/2) random symbols followed by
their copy or mirror (L = copy_length), so predicting a second half needs reading L/2 bytes
back. Training rows are random windows of that stream, generated on the fly (no files);
validation / test are fixed streams of COPY_EVAL_EXAMPLES examples, back to back.

Training batches are deterministic and vectorised: the global batch at `step` draws all its
randomness (row offsets, copy-task phases and symbols) in a few array-valued calls of one
generator `np.random.default_rng([seed, step, _ROW_TAG])`, so a resumed run sees the same
data, and each process slices just its own rows out of the global batch. A train split of at
most `in_memory_bytes` is read once into one uint8 array and a batch is one gather
(`offsets[:, None] + arange(W)`): well under a millisecond for 32 rows of 1025 bytes, off the
training step's critical path (grain threads prefetch batches too). A larger train split stays
on disk: each row reads the one or two array_record records it overlaps.
"""

from __future__ import annotations

import abc
import os
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from perceiver_ar_vl import errors
from perceiver_ar_vl.config_choices import COPY_MODES, SPLITS
from perceiver_ar_vl.config_choices import DATA_NAMES as NAMES

# grain, tensorflow_datasets and byte_datasets (which imports both) are imported where they
# are used: they take ~0.5 s to import, which config_lib (and so every command-line error
# about a config value) would otherwise pay.
if TYPE_CHECKING:
  import tensorflow_datasets as tfds

VOCAB_SIZE = 256
COPY_EVAL_EXAMPLES = 64  # examples in each copy-task evaluation split
DEFAULTS = {
  'name': 'enwik8',
  'path': '',
  'heldout_path': '',
  'data_dir': '',
  'copy_mode': 'copy',
  'copy_vocab': 16,
  'copy_length': 0,
  'in_memory_bytes': 1 << 30,  # 1 GiB: enwik8's 90 MB train split is held in memory
}
_ROW_TAG = 0x64617461  # 'data': training rows' streams, apart from other per-step streams
_COPY_EVAL_TAG = 0xC0B1  # keeps the copy task's eval streams apart from training rows


def _get(data_config: Any, key: str) -> Any:
  """`data_config[key]` for a ConfigDict or a dict, DEFAULTS[key] when absent."""
  return data_config.get(key, DEFAULTS[key])


class ByteDataset(abc.ABC):
  """Byte data for one (config.data, window). Rows are W = window bytes, int32 tokens."""

  vocab_size: int = VOCAB_SIZE

  def __init__(self, window: int):
    self.window = window  # W = M + 1 tokens per training example

  @abc.abstractmethod
  def _train_rows(self, rng: np.random.Generator, batch_size: int, rows: range) -> np.ndarray:
    """uint8 or int32 [len(rows), W]: rows `rows` of a global batch of `batch_size` rows.

    Draws the randomness of all `batch_size` rows (whatever `rows` is), so that every process
    sees the same global batch and keeps its own slice.
    """

  @abc.abstractmethod
  def split_bytes(self, split: str) -> np.ndarray:
    """uint8 [num_bytes] the whole split ('train', 'validation', 'test') as one read-only array.

    For sequential evaluation. For the copy task: COPY_EVAL_EXAMPLES examples of L bytes
    back to back, a fixed stream per (seed, split).
    """

  @abc.abstractmethod
  def num_bytes(self, split: str) -> int:
    """Length of `split` in bytes."""

  def train_batch(
    self, step: int, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1
  ) -> np.ndarray:
    """int32 [batch_size // process_count, W] training rows of this process.

    The global batch is drawn from `np.random.default_rng([seed, step, _ROW_TAG])` only (the
    tag keeps it apart from other per-step streams, e.g. latents.py's); this process holds
    global rows [process_index * b, (process_index + 1) * b) with b = batch_size //
    process_count, so the processes' rows together form the global batch.

    Raises:
      ValueError: negative step/seed, batch_size not divisible by process_count, bad
        process_index.
    """
    rows = _process_rows(step, batch_size, seed, process_index, process_count)
    rng = np.random.default_rng([seed, step, _ROW_TAG])
    return self._train_rows(rng, batch_size, rows).astype(np.int32)

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

    _process_rows(start_step, batch_size, seed, process_index, process_count)  # validate early
    steps = grain.MapDataset.range(start_step, end_step)
    batches = steps.map(
      lambda step: self.train_batch(step, batch_size, seed, process_index, process_count)
    )
    options = grain.ReadOptions(num_threads=max(prefetch, 1), prefetch_buffer_size=prefetch)
    return iter(batches.to_iter_dataset(options))

  def _check_split(self, split: str) -> None:
    if split not in SPLITS:
      raise ValueError(f'Unknown split {split!r}; choose one of {SPLITS}.')


def _process_rows(
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

    from perceiver_ar_vl.data import builders as byte_datasets

    super().__init__(window)
    self.builder = builder
    self._chunk = builder.builder_config.chunk_bytes
    sources = byte_datasets.prepare(builder)
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

  def _train_rows(self, rng: np.random.Generator, batch_size: int, rows: range) -> np.ndarray:
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


class CopyDataset(ByteDataset):
  """Synthetic long-range task: a stream of examples of `length` bytes, each ceil(length/2)
  random symbols followed by their copy (or mirror), truncated to `length`.

  Training rows are random W-byte windows of that stream (a random phase, then fresh examples),
  so every position of a row is either unpredictable (first halves: log2(vocab) bits) or
  determined by a byte length/2 positions back (second halves: 0 bits). A perfect model scores
  about log2(vocab)/2 bits per byte; reaching it needs reading back length/2 positions, past
  the latents and into the cross-attend prefix when length/2 > N.
  """

  def __init__(
    self, window: int, mode: str = 'copy', vocab: int = 16, seed: int = 0, length: int = 0
  ):
    super().__init__(window)
    self.mode = mode
    self.length = int(length) or window - 1
    self.symbols = ((ord('a') + np.arange(vocab)) % 256).astype(np.uint8)  # [vocab]
    self.seed = seed
    self._cache: dict[str, np.ndarray] = {}

  def _examples(self, rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` examples back to back, uint8 [count * length]."""
    half = (self.length + 1) // 2
    first_CxH = self.symbols[rng.integers(0, len(self.symbols), (count, half))]
    second_CxH = first_CxH if self.mode == 'copy' else first_CxH[:, ::-1]
    return np.concatenate([first_CxH, second_CxH], axis=1)[:, : self.length].reshape(-1)

  def _train_rows(self, rng: np.random.Generator, batch_size: int, rows: range) -> np.ndarray:
    # Each global row: a phase in [0, L), then enough fresh examples to cover phase + W bytes.
    per_row = -(-(self.length - 1 + self.window) // self.length)  # examples per row
    phases_B = rng.integers(0, self.length, size=batch_size)
    stream_BxS = self._examples(rng, batch_size * per_row).reshape(batch_size, -1)
    sl = slice(rows.start, rows.stop)
    return np.take_along_axis(stream_BxS[sl], phases_B[sl, None] + np.arange(self.window), axis=1)

  def split_bytes(self, split: str) -> np.ndarray:
    self._check_split(split)
    if split not in self._cache:
      tag = SPLITS.index(split)
      rng = np.random.default_rng([self.seed, _COPY_EVAL_TAG, tag])
      array = self._examples(rng, COPY_EVAL_EXAMPLES)
      array.flags.writeable = False
      self._cache[split] = array
    return self._cache[split]

  def num_bytes(self, split: str) -> int:
    self._check_split(split)
    return COPY_EVAL_EXAMPLES * self.length


def make_dataset(data_config: Mapping[str, Any] | Any, window: int, seed: int = 0) -> ByteDataset:
  """Validates `data_config` and returns its dataset; prepares tfds files once.

  Args:
    data_config: `config.data` (ConfigDict or dict); keys and defaults in DEFAULTS.
    window: W = M + 1 bytes per training example.
    seed: seeds the copy task's fixed validation / test streams (file datasets ignore it).

  Raises:
    errors.UserError: unknown name / copy_mode, bad copy_vocab, in_memory_bytes or window, an
      empty file, a split shorter than W.
    errors.MissingFileError: a file in data.path / data.heldout_path does not exist (also a
      FileNotFoundError).
    byte_datasets.SourceError: an enwik8 path that is not the standard file or archive.
    byte_datasets.DownloadError: enwik8 with no data.path and the download fails.
  """
  name = _get(data_config, 'name')
  if name not in NAMES:
    raise errors.UserError(f'Unknown data.name {name!r}; choose one of {NAMES}.')
  if not isinstance(window, int | np.integer) or window < 2:
    raise errors.UserError(f'window must be an integer >= 2, got {window!r}.')
  window = int(window)
  path = str(_get(data_config, 'path') or '').strip()
  heldout = str(_get(data_config, 'heldout_path') or '').strip()
  if heldout and name != 'text_file':
    raise errors.UserError(
      f'data.heldout_path is only used by data.name=text_file, not {name!r}; leave it empty.'
    )

  if name == 'copy':
    mode = _get(data_config, 'copy_mode')
    if mode not in COPY_MODES:
      raise errors.UserError(f'Unknown data.copy_mode {mode!r}; choose one of {COPY_MODES}.')
    vocab = _get(data_config, 'copy_vocab')
    if not isinstance(vocab, int | np.integer) or not 2 <= vocab <= VOCAB_SIZE:
      raise errors.UserError(
        f'data.copy_vocab must be an integer in [2, {VOCAB_SIZE}], got {vocab!r}.'
      )
    length = _get(data_config, 'copy_length')
    if not isinstance(length, int | np.integer) or length < 0:
      raise errors.UserError(
        f'data.copy_length must be an integer >= 0 (0 = the window), got {length!r}.'
      )
    return CopyDataset(window, mode=mode, vocab=int(vocab), seed=seed, length=int(length))

  in_memory_bytes = _get(data_config, 'in_memory_bytes')
  if not isinstance(in_memory_bytes, int | np.integer) or in_memory_bytes < 0:
    raise errors.UserError(
      f'data.in_memory_bytes must be an integer >= 0 (0 = always read records), '
      f'got {in_memory_bytes!r}.'
    )
  import tensorflow_datasets as tfds

  from perceiver_ar_vl.data import builders as byte_datasets

  data_dir = os.path.expanduser(
    str(_get(data_config, 'data_dir') or '') or tfds.core.constants.DATA_DIR
  )
  if name == 'enwik8':
    builder = byte_datasets.enwik8_builder(data_dir)
    if not builder.is_prepared():
      expected = sum(byte_datasets.ENWIK8_SPLIT_BYTES)
      downloads = os.path.join(data_dir, 'downloads')
      # Called by the one process that prepares (byte_datasets.prepare), so it downloads once.
      builder.source = lambda: byte_datasets.enwik8_source(
        path or byte_datasets.download_enwik8(downloads), expected
      )
    return PreparedByteDataset(builder, window, f'enwik8 ({path or "downloaded"})', in_memory_bytes)

  paths = [p.strip() for p in path.split(',')]
  if not path or not all(paths):
    raise errors.UserError(
      f'data.path={path!r}: text_file needs --config.data.path=/path/to/file '
      '(several files separated by commas, no empty entries).'
    )
  _check_text_sizes(paths, heldout, window)
  builder = byte_datasets.byte_file_builder(data_dir, paths, heldout)
  return PreparedByteDataset(builder, window, f'data.path={path!r}', in_memory_bytes)


def _check_text_sizes(paths: list[str], heldout: str, window: int) -> None:
  """Checks that the text files exist and every split holds a window, before any preparing.

  Raises:
    errors.MissingFileError: a path is missing or a directory.
    errors.UserError: a file is empty, or a split would be shorter than `window` bytes.
  """
  from perceiver_ar_vl.data import builders as byte_datasets

  total = sum(byte_datasets.check_file(p, 'data.path') for p in paths)
  if heldout:
    held = byte_datasets.check_file(heldout, 'data.heldout_path')
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
  sizes = dict(zip(SPLITS, byte_datasets.text_split_sizes(total), strict=True))
  short = [split for split, size in sizes.items() if size < window]
  if short:
    need = 20 * window - 20  # validation and test get 5% each
    while min(byte_datasets.text_split_sizes(need)) < window:
      need += 1
    raise errors.UserError(
      f'data.path={",".join(paths)!r} has {total:,} bytes, so its {short[0]} split (5%) '
      f'has {sizes[short[0]]:,}, fewer than the window of {window} bytes (model context + 1): '
      f'the file is too short for the window; give at least {need:,} bytes, or lower '
      'model.max_context, or pass a separate data.heldout_path.'
    )
