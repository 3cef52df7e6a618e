"""Multi-query associative recall (MQAR; Arora et al. 2023, arXiv 2312.04927) in bytes.

Each example fills one training row: `data.recall_pairs` key-value pairs, then queries until
the row is full. A key is `data.recall_key_bytes` symbols of an upper-case alphabet
('A', 'B', ...), a value one symbol of a lower-case one ('a', 'b', ...), each of
`data.recall_vocab` symbols, so a key never occurs inside a value. The keys of one example are
distinct; a query repeats a random one of them, and the byte after it is that key's value:

    AC f  BD a  CA k ... | BD a  AC f  BD a ...
    '------ pairs -----'   '---- queries ----'

Only the values of queries are predictable (from their pair, further back the later the query
comes); every other byte is random. Evaluation marks each query's value with its distance back
to the pair's value (`source_distances`), so `copy_metrics` reports their bits and
`recall_accuracy` (greedy predictions that are right) beside the bits of everything else.
Validation / test: RECALL_EVAL_EXAMPLES fixed examples [E, W], each scored in its own windows.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from perceiver_ar_vl import errors
from perceiver_ar_vl.config_choices import SPLITS
from perceiver_ar_vl.data.base import ByteDataset, config_value

RECALL_EVAL_EXAMPLES = 32
RECALL_EVAL_TAG = 0x4D514152  # 'MQAR': keeps the eval examples apart from training rows
MAX_SYMBOLS = 26  # the letters of each alphabet


@dataclasses.dataclass(frozen=True)
class RecallSettings:
  """vocab symbols per alphabet, key_bytes symbols per key, pairs per example."""

  vocab: int = 16
  key_bytes: int = 2
  pairs: int = 32


def recall_settings(data_config: Any, window: int) -> RecallSettings:
  """The recall task's settings from `config.data` for rows of `window` bytes; one-line
  errors for settings that cannot make an example."""
  vocab = config_value(data_config, 'recall_vocab')
  key_bytes = config_value(data_config, 'recall_key_bytes')
  pairs = config_value(data_config, 'recall_pairs')
  for key, value, low, high in (
    ('recall_vocab', vocab, 2, MAX_SYMBOLS),
    ('recall_key_bytes', key_bytes, 1, 8),
    ('recall_pairs', pairs, 1, None),
  ):
    if not isinstance(value, int | np.integer) or value < low or (high and value > high):
      bound = f'in [{low}, {high}]' if high else f'>= {low}'
      raise errors.UserError(f'data.{key} must be an integer {bound}, got {value!r}.')
  if pairs > vocab**key_bytes:
    raise errors.UserError(
      f'data.recall_pairs={pairs} exceeds the {vocab**key_bytes} distinct keys of '
      f'data.recall_key_bytes={key_bytes} symbols of data.recall_vocab={vocab}; lower the pairs '
      'or raise the key bytes.'
    )
  if 2 * pairs * (key_bytes + 1) > window:
    raise errors.UserError(
      f'{pairs} pairs of {key_bytes + 1} bytes leave no room for as many queries in a row of '
      f'{window} bytes (model.max_context + 1); lower data.recall_pairs to at most '
      f'{window // (2 * (key_bytes + 1))} or raise the window.'
    )
  return RecallSettings(int(vocab), int(key_bytes), int(pairs))


class RecallDataset(ByteDataset):
  """The MQAR task of the module docstring for one `RecallSettings`; one example per row."""

  def __init__(self, settings: RecallSettings, window: int, seed: int = 0):
    super().__init__(window)
    self.settings = settings
    self.seed = seed
    self.keys = np.arange(ord('A'), ord('A') + settings.vocab, dtype=np.int32)
    self.values = np.arange(ord('a'), ord('a') + settings.vocab, dtype=np.int32)
    self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

  def _examples(self, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(bytes int32 [count, W], source distances int32 [count, W]) of `count` examples."""
    s, width = self.settings, self.window
    item = s.key_bytes + 1  # one key and its value
    queries = -(-(width - s.pairs * item) // item)
    # Distinct keys: indices into vocab^key_bytes, written in base vocab.
    key_ids_CxP = np.argsort(rng.random((count, s.vocab**s.key_bytes)), axis=1)[:, : s.pairs]
    digits = s.vocab ** np.arange(s.key_bytes - 1, -1, -1)
    key_syms_CxPxK = self.keys[(key_ids_CxP[..., None] // digits) % s.vocab]
    value_syms_CxP = self.values[rng.integers(0, s.vocab, (count, s.pairs))]
    asked_CxQ = rng.integers(0, s.pairs, (count, queries))
    order_CxI = np.concatenate(
      [np.broadcast_to(np.arange(s.pairs), (count, s.pairs)), asked_CxQ], 1
    )
    keys_CxIxK = np.take_along_axis(key_syms_CxPxK, order_CxI[..., None], axis=1)
    values_CxI = np.take_along_axis(value_syms_CxP, order_CxI, axis=1)
    tokens = np.concatenate([keys_CxIxK, values_CxI[..., None]], axis=2).reshape(count, -1)
    # A query's value: its source is the value of its pair, order_CxI[i] items earlier.
    item_I = np.arange(order_CxI.shape[1])
    distance_CxI = np.where(item_I >= s.pairs, (item_I - order_CxI) * item, 0)
    distances = np.zeros_like(tokens)
    distances[:, item - 1 :: item] = distance_CxI
    return tokens[:, :width], distances[:, :width].astype(np.int32)

  def _train_rows(
    self, rng: np.random.Generator, batch_size: int, rows: range, step: int
  ) -> np.ndarray:
    del step
    return self._examples(rng, batch_size)[0][rows.start : rows.stop]

  def _split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    self._check_split(split)
    if split not in self._cache:
      rng = np.random.default_rng([self.seed, RECALL_EVAL_TAG, SPLITS.index(split)])
      tokens, distances = self._examples(rng, RECALL_EVAL_EXAMPLES)
      tokens = tokens.astype(np.uint8)
      tokens.flags.writeable = distances.flags.writeable = False
      self._cache[split] = tokens, distances
    return self._cache[split]

  def split_bytes(self, split: str) -> np.ndarray:
    return self._split(split)[0]

  def num_bytes(self, split: str) -> int:
    self._check_split(split)
    return RECALL_EVAL_EXAMPLES * self.window

  def source_distances(self, split: str) -> np.ndarray:
    """int32 [E, W]: each query value's distance back to its pair's value; 0 elsewhere."""
    return self._split(split)[1]
