"""The windows that evaluation scores: which targets each window predicts, so that every
target of a split is scored exactly once (`evaluate.bits_per_byte` runs the model on them).

A split is one stream (uint8 [L]) or separate examples (uint8 [E, L], the aligned copy task):
each example is then a stream of its own, whose windows start at its first byte (left-padded
and masked before it) and never reach into another example.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


def window_ends(length: int, targets_per_window: int) -> tuple[np.ndarray, np.ndarray]:
  """(ends, first_new) int64 [windows]: window b scores the targets [first_new[b], ends[b])
  of a stream of `length` bytes, so that every target 1..length-1 is scored exactly once."""
  if length < 2:
    raise ValueError(f'Need at least 2 bytes to score, got {length}.')
  s = targets_per_window
  ends = np.arange(1 + s, length + 1, s, dtype=np.int64)
  if not len(ends) or ends[-1] < length:
    ends = np.append(ends, length)
  return ends, np.concatenate([[1], ends[:-1]])


def block_windows(
  stream: np.ndarray,
  context: int,
  targets_per_window: int,
  ends: np.ndarray | None = None,
  first_new: np.ndarray | None = None,
  origins: np.ndarray | None = None,
):
  """The windows that end at `ends` (default: all of `window_ends`), built by one gather.

  Returns (windows_BxW int32 with W = context+1, input_mask_BxM bool, weights_BxS float32)
  where S = targets_per_window: window b's last S positions predict targets whose weight is 1
  if that target is scored by this window (each target exactly once over all windows).
  `origins` [B] (default 0): the stream index where window b's example starts; positions
  before it are padding (0, masked) and its first byte is not a target.
  """
  if ends is None:
    ends, first_new = window_ends(len(stream), targets_per_window)
  origins_Bx1 = np.zeros((len(ends), 1), np.int64) if origins is None else origins[:, None]
  s = targets_per_window
  positions = np.arange(context + 1)[None, :] + ends[:, None] - 1 - context  # stream indices
  valid = positions >= origins_Bx1
  windows = np.where(valid, np.asarray(stream)[np.maximum(positions, 0)], 0)
  input_mask = valid[:, :context]
  target_index = positions[:, context + 1 - s :]  # the stream index each slot predicts
  weights = (target_index >= first_new[:, None]) & (target_index >= origins_Bx1 + 1)
  return windows.astype(np.int32), input_mask, weights.astype(np.float32)


class WindowPlan(NamedTuple):
  """Every window of a split: the split as one flat stream, each window's end, first new
  target and example start (int64 [windows]), and how many targets they score in all."""

  stream: np.ndarray
  ends: np.ndarray
  first_new: np.ndarray
  origins: np.ndarray
  num_targets: int


def plan_windows(split: np.ndarray, targets_per_window: int, max_bytes: int = 0) -> WindowPlan:
  """The windows of `split` (uint8 [L] or [E, L]; see the module docstring) that score each
  target once; `max_bytes` > 0 keeps the first `max_bytes` bytes (of the examples in order)."""
  split = np.asarray(split)
  example = split.shape[1] if split.ndim == 2 else 0
  stream = split.reshape(-1)
  stream = stream[:max_bytes] if max_bytes else stream
  if not example:
    ends, first_new = window_ends(len(stream), targets_per_window)
    return WindowPlan(stream, ends, first_new, np.zeros_like(ends), len(stream) - 1)
  parts = []
  for start in range(0, len(stream), example):
    length = min(example, len(stream) - start)
    if length >= 2:  # an example cut to one byte by max_bytes has no target
      ends, first_new = window_ends(length, targets_per_window)
      parts.append((ends + start, first_new + start, np.full_like(ends, start), length - 1))
  if not parts:
    raise ValueError(f'Need at least 2 bytes of an example to score, got {len(stream)}.')
  ends, first_new, origins, counts = zip(*parts, strict=True)
  return WindowPlan(
    stream, np.concatenate(ends), np.concatenate(first_new), np.concatenate(origins), sum(counts)
  )


def padded_batch(
  plan: WindowPlan,
  context: int,
  per_window: int,
  num_latents: int,
  start: int,
  batch: int,
  bins: np.ndarray | None = None,
) -> tuple[np.ndarray, ...]:
  """Windows [batch, W], input masks [batch, M] and per-slot weights [batch, N] of windows
  start..start+batch of `plan` (padded at the end of the split with empty windows of weight
  0); with `bins` (int32 per stream byte) also each slot's target bin [batch, N]."""
  sl = slice(start, start + batch)
  windows, input_mask, weights_s = block_windows(
    plan.stream, context, per_window, plan.ends[sl], plan.first_new[sl], plan.origins[sl]
  )
  weights = np.zeros((len(windows), num_latents), np.float32)
  weights[:, num_latents - per_window :] = weights_s
  out = [windows, input_mask, weights]
  if bins is not None:
    target_index = plan.ends[sl, None] - num_latents + np.arange(num_latents)[None, :]
    out.append(bins[np.clip(target_index, 0, len(bins) - 1)].astype(np.int32))
  pad = batch - len(windows)
  if pad:  # empty windows: zeros, all inputs valid, no weight
    fills = (0, True, 0.0, 0)[: len(out)]
    out = [
      np.concatenate([a, np.full((pad, *a.shape[1:]), fill, a.dtype)])
      for a, fill in zip(out, fills, strict=True)
    ]
  return tuple(out)
