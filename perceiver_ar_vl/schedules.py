"""One ramp for the three curricula (latent count, training window, copy length): a value that
grows from `low` to `high` over training, a pure function of the step.

  * linear     every integer: round(low + min(1, step / round(warmup_fraction * total_steps))
               * (high - low));
  * stepwise   the same ramp in equal-time stages at `stages` (low, then the given values
               strictly between low and high, then high);
  * staircase  `stairs` equal stages of the whole run (no warm-up fraction): stage k =
               min(stairs - 1, floor(step / (total_steps / stairs))) holds low + k * stair,
               with `stair` = `stair_size` (capped at high) or, without one, the equal
               increments (high - low) / (stairs - 1) that end at high (rounded).

The adapters (`latents.num_latents_at`, `windows.window_at`, `data.copy_settings
.scheduled_length`) choose low, high and the stages of their quantity.
"""

from __future__ import annotations

from collections.abc import Sequence

from perceiver_ar_vl import errors

SHAPES = ('linear', 'stepwise', 'staircase')


def ramp(
  step: int,
  *,
  low: int,
  high: int,
  total_steps: int,
  shape: str = 'linear',
  warmup_fraction: float = 0.5,
  stages: Sequence[int] = (),
  stairs: int = 4,
  stair_size: int | None = None,
) -> int:
  """The ramp's value at training step `step` (see the module docstring)."""
  if shape == 'staircase':
    stair = min(stairs - 1, int(step // (total_steps / stairs)))
    if stair_size is not None:
      return int(min(high, low + stair_size * stair))
    return low + int(round(stair * (high - low) / (stairs - 1)))
  ramp_steps = max(1, int(round(warmup_fraction * total_steps)))
  progress = min(1.0, step / ramp_steps)
  if shape == 'linear':
    return int(round(low + progress * (high - low)))
  if shape == 'stepwise':
    levels = [low, *(s for s in stages if low < s < high), high]
    return int(levels[min(len(levels) - 1, int(progress * len(levels)))])
  raise errors.UserError(f'Unknown schedule shape {shape!r}; choose one of {SHAPES}.')
