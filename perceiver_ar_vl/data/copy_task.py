"""The synthetic copy task: examples of L = data.copy_length bytes, each ceil(L/2) random
symbols followed by their copy or mirror (truncated to L), so predicting a second half needs
reading up to L/2 (copy) or L - 1 (mirror) bytes back. Generated on the fly (no files), in two
forms:
  * streamed (data.copy_min_crop = 0, the default): training rows are random windows of a
    stream of examples back to back; validation / test are fixed streams of
    COPY_EVAL_EXAMPLES examples, [COPY_EVAL_EXAMPLES * L] bytes.
  * aligned (data.copy_min_crop > 0), google-research/perceiver-ar's `random_mirrored_L`: each
    training row is ONE example cropped to its first c ~ U[copy_min_crop, L] bytes, placed at
    the end of the row after W - c positions of left padding (PAD, neither attended nor
    scored), so the window starts at the example's first byte; validation / test are
    [COPY_EVAL_EXAMPLES, L] arrays whose examples evaluation scores each in its own windows.
A curriculum (`copy_settings`) may grow L over training; `copy_length_at` says L at a step.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from perceiver_ar_vl.config_choices import SPLITS
from perceiver_ar_vl.data.base import PAD, ByteDataset
from perceiver_ar_vl.data.copy_settings import CopySettings, copy_settings, scheduled_length

COPY_EVAL_EXAMPLES = 64  # examples in each copy-task evaluation split
COPY_EVAL_TAG = 0xC0B1  # keeps the copy task's eval streams apart from training rows


def copy_length_at(config: Any, step: int) -> int:
  """The copy task's example length L at training step `step` of the run `config` describes
  (its data.copy_* curriculum over train.steps; data.copy_length, or the window M, without
  one). A pure function of (config, step): a resumed run sees the same L."""
  settings = copy_settings(config.data, config.model.max_context + 1, config.train.steps)
  return scheduled_length(settings, step)


def source_distances_of(length: int, mode: str) -> np.ndarray:
  """int32 [length]: for byte k of one example, how far back its source lies (0 = one of
  the ceil(length/2) random bytes; copy: ceil(length/2); mirror: 2 (k - ceil(length/2)) + 1)."""
  half = (length + 1) // 2
  k_L = np.arange(length)
  distance_L = np.full(length, half) if mode == 'copy' else 2 * (k_L - half) + 1
  return np.where(k_L >= half, distance_L, 0).astype(np.int32)


class CopyDataset(ByteDataset):
  """Synthetic long-range task (see the module docstring) for one `CopySettings`.

  Every byte is either unpredictable (first halves: log2(vocab) bits) or determined by a byte
  further back (second halves: 0 bits). In the streamed form a perfect model scores about
  log2(vocab)/2 bits per byte; reaching it needs reading back L/2 positions, past the latents
  and into the cross-attend prefix when L/2 > N.
  """

  def __init__(self, settings: CopySettings, window: int, seed: int = 0):
    super().__init__(window)
    self.settings = settings
    self.mode = settings.mode
    self.length = settings.length  # L of the evaluation splits (the curriculum's end)
    self.aligned = settings.min_crop > 0
    self.symbols = ((ord('a') + np.arange(settings.vocab)) % 256).astype(np.uint8)  # [vocab]
    self.seed = seed
    self._cache: dict[str, np.ndarray] = {}

  def _examples(self, rng: np.random.Generator, count: int, length: int) -> np.ndarray:
    """`count` examples of `length` bytes, uint8 [count, length]."""
    half = (length + 1) // 2
    first_CxH = self.symbols[rng.integers(0, len(self.symbols), (count, half))]
    second_CxH = first_CxH if self.mode == 'copy' else first_CxH[:, ::-1]
    return np.concatenate([first_CxH, second_CxH], axis=1)[:, :length]

  def _train_rows(
    self, rng: np.random.Generator, batch_size: int, rows: range, step: int
  ) -> np.ndarray:
    length = scheduled_length(self.settings, step)
    sl = slice(rows.start, rows.stop)
    if self.aligned:  # one example per row, cropped, after left padding
      examples_BxL = self._examples(rng, batch_size, length)
      crops_B = rng.integers(self.settings.min_crop, length + 1, size=batch_size)
      index_RxW = np.arange(self.window)[None, :] - (self.window - crops_B[sl, None])
      taken_RxW = np.take_along_axis(examples_BxL[sl], np.maximum(index_RxW, 0), axis=1)
      return np.where(index_RxW >= 0, taken_RxW.astype(np.int32), PAD)
    if self.settings.train_lengths:
      return np.stack([self._mixed_row(rng) for _ in range(batch_size)])[sl]
    # Each global row: a phase in [0, L), then enough fresh examples to cover phase + W bytes.
    per_row = -(-(length - 1 + self.window) // length)  # examples per row
    phases_B = rng.integers(0, length, size=batch_size)
    stream_BxS = self._examples(rng, batch_size * per_row, length).reshape(batch_size, -1)
    return np.take_along_axis(stream_BxS[sl], phases_B[sl, None] + np.arange(self.window), axis=1)

  def _mixed_row(self, rng: np.random.Generator) -> np.ndarray:
    """One streamed training row of examples whose lengths are drawn log-uniformly in
    `train_lengths` (int32 [W]), starting at a random phase of its first example."""
    low, high = self.settings.train_lengths
    count = -(-(2 * self.window + high) // low)  # more than enough examples
    lengths_E = np.exp(rng.uniform(np.log(low), np.log(high + 1), count)).astype(np.int64)
    lengths_E = np.clip(lengths_E, low, high)
    starts_E = np.cumsum(lengths_E) - lengths_E
    halves_E = (lengths_E + 1) // 2
    example_S = np.repeat(np.arange(count), lengths_E)  # each stream byte's example
    offset_S = np.arange(len(example_S)) - starts_E[example_S]
    half_S = halves_E[example_S]
    if self.mode == 'copy':
      source_S = np.where(offset_S < half_S, offset_S, offset_S - half_S)
    else:
      source_S = np.where(offset_S < half_S, offset_S, 2 * half_S - 1 - offset_S)
    fresh_S = self.symbols[rng.integers(0, len(self.symbols), len(example_S))]
    stream_S = fresh_S[starts_E[example_S] + source_S]
    phase = rng.integers(0, lengths_E[0])
    return stream_S[phase : phase + self.window].astype(np.int32)

  def split_bytes(self, split: str) -> np.ndarray:
    self._check_split(split)
    if split not in self._cache:
      tag = SPLITS.index(split)
      rng = np.random.default_rng([self.seed, COPY_EVAL_TAG, tag])
      array = self._examples(rng, COPY_EVAL_EXAMPLES, self.length)
      array = array if self.aligned else array.reshape(-1)
      array.flags.writeable = False
      self._cache[split] = array
    return self._cache[split]

  def num_bytes(self, split: str) -> int:
    self._check_split(split)
    return COPY_EVAL_EXAMPLES * self.length

  def source_distances(self, split: str) -> np.ndarray:
    """int32 shaped as `split_bytes(split)`: each byte's distance back to its source in its
    example (0 = a random first-half byte); the same for every split."""
    self._check_split(split)
    distances_ExL = np.tile(source_distances_of(self.length, self.mode), (COPY_EVAL_EXAMPLES, 1))
    return distances_ExL if self.aligned else distances_ExL.reshape(-1)
