"""The synthetic copy task: a stream of examples, each ceil(L/2) random symbols followed by
their copy or mirror (L = data.copy_length), so predicting a second half needs reading L/2
bytes back. Training rows are random windows of that stream, generated on the fly (no
files); validation / test are fixed streams of COPY_EVAL_EXAMPLES examples, back to back."""

from __future__ import annotations

import numpy as np

from perceiver_ar_vl.config_choices import SPLITS
from perceiver_ar_vl.data.base import ByteDataset

COPY_EVAL_EXAMPLES = 64  # examples in each copy-task evaluation split
COPY_EVAL_TAG = 0xC0B1  # keeps the copy task's eval streams apart from training rows


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
      rng = np.random.default_rng([self.seed, COPY_EVAL_TAG, tag])
      array = self._examples(rng, COPY_EVAL_EXAMPLES)
      array.flags.writeable = False
      self._cache[split] = array
    return self._cache[split]

  def num_bytes(self, split: str) -> int:
    self._check_split(split)
    return COPY_EVAL_EXAMPLES * self.length
