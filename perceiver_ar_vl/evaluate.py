"""Bits per byte over a split, scored in blocks; restore-and-evaluate from a workdir.

Blocks: each block of N targets is predicted by the N latents of one window whose M inputs end
right before the block's last target, so each target sees up to M-N+j bytes of prior context
(the window is left-padded and masked near the split's start). Every target (bytes 1..L-1 of
the split; byte 0 has no context) is scored exactly once. `mode='stride1'` instead scores each
target with its own window, by the last latent only: exact full-context, and L times slower.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any

import jax
import numpy as np

from perceiver_ar_vl import config_choices, config_lib, data, losses, parallel, train_state
from perceiver_ar_vl.models.base import LanguageModel


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
):
  """The windows that end at `ends` (default: all of `window_ends`), built by one gather.

  Returns (windows_BxW int32 with W = context+1, input_mask_BxM bool, weights_BxS float32)
  where S = targets_per_window: window b's last S positions predict targets whose weight is 1
  if that target is scored by this window (each target exactly once over all windows).
  """
  if ends is None:
    ends, first_new = window_ends(len(stream), targets_per_window)
  s = targets_per_window
  positions = np.arange(context + 1)[None, :] + ends[:, None] - 1 - context  # stream indices
  windows = np.where(positions >= 0, np.asarray(stream)[np.maximum(positions, 0)], 0)
  input_mask = positions[:, :context] >= 0
  target_index = positions[:, context + 1 - s :]  # the stream index each slot predicts
  weights = (target_index >= first_new[:, None]) & (target_index >= 1)
  return windows.astype(np.int32), input_mask, weights.astype(np.float32)


@functools.lru_cache(maxsize=32)
def _score_fn(model: LanguageModel, num_latents: int):
  """Jitted per-slot (summed nats [N], target count [N]) of one batch of windows; cached per
  (model, N)."""

  @jax.jit
  def score(variables, window_BxW, mask_BxM, weights_BxN):
    logits = model.forward(
      variables, window_BxW[:, :-1], num_latents, num_latents, input_mask=mask_BxM
    )
    nll_BxN, _ = losses.token_nll(logits, window_BxW)
    return (nll_BxN * weights_BxN).sum(0), weights_BxN.sum(0)

  return score


FLUSH_EVERY = 64  # evaluation batches whose sums are added on the device before one transfer


def _padded_batch(stream, context, per_window, num_latents, ends, first_new, start, batch):
  """Windows, input masks and per-slot weights [batch, ...] of windows start..start+batch
  (padded at the end of the split with empty windows of weight 0)."""
  windows, input_mask, weights_s = block_windows(
    stream, context, per_window, ends[start : start + batch], first_new[start : start + batch]
  )
  weights = np.zeros((len(windows), num_latents), np.float32)
  weights[:, num_latents - per_window :] = weights_s
  pad = batch - len(windows)
  if pad:
    windows = np.concatenate([windows, np.zeros((pad, windows.shape[1]), np.int32)])
    input_mask = np.concatenate([input_mask, np.ones((pad, context), bool)])
    weights = np.concatenate([weights, np.zeros((pad, num_latents), np.float32)])
  return windows, input_mask, weights


def position_ranges(context: int, num_latents: int, parts: int = 4) -> list[tuple[int, int]]:
  """The ranges [a, b) of window positions, in quarters of the window, that hold latents."""
  width = max(1, context // parts)
  first = context - num_latents
  return [(a, min(a + width, context)) for a in range(0, context, width) if a + width > first]


def bits_per_byte(
  model: LanguageModel,
  variables,
  stream: np.ndarray,
  *,
  num_latents: int,
  batch_size: int = 8,
  max_bytes: int = 0,
  mode: str = 'blocks',
  mesh=None,
) -> dict[str, float]:
  """Mean next-byte cross-entropy of `stream` (uint8) in bits and nats, scored exactly once.

  `max_bytes` > 0 scores only the first `max_bytes` bytes. Runs data parallel over `mesh`.
  """
  context = model.max_context
  if not 1 <= num_latents <= context:
    raise ValueError(f'num_latents={num_latents} must be in [1, max_context={context}].')
  if config_choices.unknown_choice('eval.mode', mode):
    raise ValueError(config_choices.unknown_choice('eval.mode', mode))
  stream = np.asarray(stream[:max_bytes] if max_bytes else stream)
  per_window = num_latents if mode == 'blocks' else 1
  ends, first_new = window_ends(len(stream), per_window)

  mesh = mesh or parallel.make_mesh()
  devices = mesh.devices.size
  batch = -(-max(batch_size, 1) // devices) * devices
  score = _score_fn(model, num_latents)
  rows = slice(
    jax.process_index() * batch // jax.process_count(),
    (jax.process_index() + 1) * batch // jax.process_count(),
  )
  # Windows are built one batch at a time (a stride-1 pass over a long split would not fit in
  # host memory at once); sums stay on the device and reach the host every FLUSH_EVERY batches
  # (float64 there), so the host never waits for the device batch by batch.
  nats_N, count_N = np.zeros(num_latents), np.zeros(num_latents)
  pending = []
  for start in range(0, len(ends), batch):
    chunk = _padded_batch(stream, context, per_window, num_latents, ends, first_new, start, batch)
    pending.append(score(variables, *(parallel.global_batch(a[rows], mesh) for a in chunk)))
    if len(pending) == FLUSH_EVERY or start + batch >= len(ends):
      nats, count = jax.device_get(jax.tree.map(lambda *x: sum(x), *pending))
      nats_N += np.asarray(nats, np.float64)
      count_N += np.asarray(count, np.float64)
      pending = []
  total_count = count_N.sum()
  expected = len(stream) - 1
  if int(round(total_count)) != expected:
    raise AssertionError(f'Scored {total_count} targets, expected {expected}.')
  nats = nats_N.sum() / total_count
  # Loss by the target's position in the window (how much context it had), as the original.
  positions_N = np.arange(context - num_latents, context)
  by_position = {}
  for a, b in position_ranges(context, num_latents):
    in_range = (positions_N >= a) & (positions_N < b)
    if count_N[in_range].sum():
      by_position[f'[{a},{b})'] = nats_N[in_range].sum() / count_N[in_range].sum() / math.log(2)
  return {
    'bits': nats / math.log(2),
    'nats': nats,
    'num_targets': int(round(total_count)),
    'bits_by_position': by_position,
  }


def default_num_latents(config: Any) -> int:
  """`eval.num_latents`, or the training maximum when 0."""
  return int(config.eval.num_latents or config.latents.max)


def latent_counts_to_score(config: Any) -> list[int]:
  """`eval.num_latents` (default: the training maximum) and the sweep, sorted, unique."""
  return sorted({default_num_latents(config), *(int(n) for n in config.eval.latents_sweep)})


def format_table(rows: list[dict]) -> str:
  """A markdown table of evaluation rows."""
  lines = [
    '| split | latents | bits/byte | targets | seconds (incl. compile) |',
    '|---|---:|---:|---:|---:|',
  ]
  for r in rows:
    lines.append(
      f'| {r["split"]} | {r["num_latents"]} | {r["bits"]:.4f} | '
      f'{r["num_targets"]} | {r["seconds"]:.1f} |'
    )
  return '\n'.join(lines)


def evaluate(config: Any, workdir: str) -> dict[str, Any]:
  """Restores `workdir`'s checkpoint and scores each eval split at each latent count.

  Prints a table and writes `eval.json` in the workdir: {'checkpoint_step', 'mode',
  'max_bytes', 'results': [{'split', 'num_latents', 'bits', 'nats', 'num_targets',
  'bits_by_position', 'seconds'}]}, where 'bits_by_position' maps ranges '[a,b)' of the
  target's window position (quarters of the window) to bits per byte. Returns the same dict.
  """
  config_lib.validate(config)
  e = config.eval
  train_state.checkpoint_step(workdir, e.checkpoint_step)  # no checkpoint: stop before reading data
  dataset = data.make_dataset(config.data, window=config.model.max_context + 1, seed=config.seed)
  model, variables, step = train_state.restore_params(config, workdir, e.checkpoint_step)
  mesh = parallel.make_mesh()
  rows = []
  for split in e.splits:
    stream = dataset.split_bytes(split)
    for n in latent_counts_to_score(config):
      start = time.perf_counter()
      result = bits_per_byte(
        model,
        variables,
        stream,
        num_latents=n,
        batch_size=e.batch_size,
        max_bytes=e.max_bytes,
        mode=e.mode,
        mesh=mesh,
      )
      rows.append(
        {'split': split, 'num_latents': n, **result, 'seconds': time.perf_counter() - start}
      )
  report = {'checkpoint_step': step, 'mode': e.mode, 'max_bytes': int(e.max_bytes), 'results': rows}
  if jax.process_index() == 0:
    print(f'Checkpoint step {step}, {e.mode} evaluation:\n{format_table(rows)}')
    with open(os.path.join(workdir, 'eval.json'), 'w') as f:
      json.dump(report, f, indent=2)
  return report
