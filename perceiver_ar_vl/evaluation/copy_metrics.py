"""What evaluation reports of the copy task beside bits per byte: whether the model learned to
copy. Each target byte falls in a bin by its distance back to its copy source in its example
(`data.ByteDataset.source_distances`): bin 0 holds the random first-half bytes (no source),
bin k >= 1 the copies whose source lies [2^(k-1), 2^k) bytes back.

  copy_bits         mean bits per byte over the copies (a perfect model: 0);
  copy_accuracy     the share of copies whose greedy (argmax) prediction is right (the
                    recall task reports it as recall_accuracy);
  fresh_bits        mean over the random bytes (a perfect model: log2(data.copy_vocab));
  bits_by_distance  [{'distance': '[a,b)', 'bits', 'count'}] per non-empty copy bin: how far
                    back the model still reads.
"""

from __future__ import annotations

import math

import numpy as np


def distance_bins(distances: np.ndarray) -> np.ndarray:
  """int32 bins of source distances (same shape): 0 for 0 (no source), else
  1 + floor(log2(distance)), so bin k holds distances [2^(k-1), 2^k)."""
  distances = np.asarray(distances, np.int64)
  if distances.size and distances.min() < 0:
    raise ValueError(f'Source distances must be >= 0, got {distances.min()}.')
  bins = np.zeros(distances.shape, np.int32)
  copies = distances > 0
  bins[copies] = np.floor(np.log2(distances[copies])).astype(np.int32) + 1
  return bins


def distance_range(bin_index: int) -> tuple[int, int]:
  """The distances [a, b) that copy bin `bin_index` >= 1 holds."""
  return 2 ** (bin_index - 1), 2**bin_index


def copy_summary(
  nats_K: np.ndarray, count_K: np.ndarray, right_K: np.ndarray | None = None
) -> dict:
  """copy_bits, fresh_bits (None when a kind has no target), their target counts and
  bits_by_distance from summed nats and target counts per bin [K] (bin 0 = fresh), and with
  `right_K` (greedy predictions that are right per bin) copy_accuracy."""
  nats_K, count_K = np.asarray(nats_K, np.float64), np.asarray(count_K, np.float64)
  bits = lambda nats, count: float(nats / count / math.log(2)) if count else None
  by_distance = []
  for k in range(1, len(count_K)):
    if count_K[k]:
      a, b = distance_range(k)
      by_distance.append(
        {
          'distance': f'[{a},{b})',
          'bits': bits(nats_K[k], count_K[k]),
          'count': int(round(count_K[k])),
        }
      )
  copies = count_K[1:].sum()
  accuracy = None
  if right_K is not None and copies:
    accuracy = float(np.asarray(right_K, np.float64)[1:].sum() / copies)
  return {
    'copy_bits': bits(nats_K[1:].sum(), count_K[1:].sum()),
    'copy_accuracy': accuracy,
    'fresh_bits': bits(nats_K[0], count_K[0]),
    'copy_targets': int(round(count_K[1:].sum())),
    'fresh_targets': int(round(count_K[0])),
    'bits_by_distance': by_distance,
  }
