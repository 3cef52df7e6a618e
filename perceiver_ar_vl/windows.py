"""A curriculum over the window: training steps that see only the last W <= M bytes.

Sequence-length warmup (Li et al. 2022) applied to Perceiver AR: early steps train on short
windows, whose cross-attend spreads each latent's attention over fewer keys (and costs less),
and W grows to the full window M = model.max_context. Like the latent count, W is a pure
function of (config, step), so a resumed run sees the same windows, and it is rounded up to one
of a few static window buckets, so a run compiles once per (latent bucket, window bucket) pair:

  * window.schedule 'none': W = M every step (the default);
  * 'linear': W grows from window.min to M over window.warmup_fraction of training, rounded up
    to the next window bucket;
  * 'stepwise': equal time on each window bucket from window.min up to M;
  * 'fixed': W = window.min every step: train short, evaluate and sample at the full M (what
    a model whose cross-attend finds the prefix by content, `layers.match`, can do).

window.buckets lists the window sizes (empty = powers of two from window.min, then M). Each
window holds the latents: window.min >= latents.max. Rotary positions count from the window's
first byte, so a short window is what the model sees at its start; evaluation and sampling use
the full window.
"""

from __future__ import annotations

from typing import Any

from perceiver_ar_vl import errors, latents, schedules


def window_buckets(config: Any) -> tuple[int, ...]:
  """The window sizes a run may train at, increasing, ending at the full window M."""
  w, full = config.window, int(config.model.max_context)
  if w.schedule == 'none':
    return (full,)
  if w.schedule == 'fixed':
    return (int(w.min),)
  if w.buckets:
    return tuple(int(b) for b in w.buckets)
  sizes, size = [], int(w.min)
  while size < full:
    sizes.append(size)
    size *= 2
  return (*sizes, full)


def validate(config: Any) -> None:
  """One-line errors for window settings that cannot run (before anything compiles)."""
  w, full = config.window, int(config.model.max_context)
  if w.schedule == 'none':
    return
  if not config.latents.max <= w.min <= full:
    raise errors.UserError(
      f'window.min={w.min} must hold the latents and fit the window: latents.max='
      f'{config.latents.max} <= window.min <= model.max_context={full}; set --config.window.min.'
    )
  if w.schedule == 'fixed':
    return
  buckets = window_buckets(config)
  if list(buckets) != sorted(set(buckets)) or buckets[0] > w.min or buckets[-1] != full:
    raise errors.UserError(
      f'window.buckets={tuple(buckets)} must increase, start at or below window.min={w.min} '
      f"and end at model.max_context={full}, e.g. --config.window.buckets='({w.min},{full})'."
    )
  if not 0 < w.warmup_fraction <= 1:
    raise errors.UserError(
      f'window.warmup_fraction={w.warmup_fraction} must be in (0, 1]: the share of training '
      'over which the window grows.'
    )


def window_at(config: Any, step: int) -> int:
  """W, the window (in bytes of input) that training step `step` sees."""
  w = config.window
  buckets = window_buckets(config)
  if w.schedule in ('none', 'fixed'):
    return buckets[-1]
  size = schedules.ramp(
    step,
    low=int(w.min),
    high=buckets[-1],
    total_steps=config.train.steps,
    shape=w.schedule,
    warmup_fraction=w.warmup_fraction,
    stages=buckets,
  )
  return latents.bucket_for(size, buckets)


def row_length(config: Any) -> int:
  """Bytes in each training row: the largest training window + 1 (its targets). M + 1 unless
  the window is 'fixed' below M, whose rows then hold only what the steps read."""
  return max(window_buckets(config)) + 1
