"""The plan of a training run: the latent count N, its bucket B and the training window W of
every step, computed once from the config (a pure function of its latents, window, train.steps
and seed, so a resumed run follows the same plan).

Everything that needs the schedule reads the plan: the host loop (which program each step
runs), compiling ahead (`buckets_ahead`, `windows_ahead`), the equal-budget search and the
study's token counts (`experiments/`). Building it costs ~20 us a step (a uniform strategy
draws each N from its own seeded stream), once per run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from perceiver_ar_vl import latents, spec, windows


@dataclasses.dataclass(frozen=True)
class StepPlan:
  """int32 [steps] arrays: `latents` (N), `buckets` (B = the smallest latent bucket >= N) and
  `windows` (W, input bytes the step sees; model.max_context without a window curriculum)."""

  latents: np.ndarray
  buckets: np.ndarray
  windows: np.ndarray

  def __len__(self) -> int:
    return len(self.latents)

  def at(self, step: int) -> tuple[int, int, int]:
    """(N, B, W) of training step `step`."""
    return int(self.latents[step]), int(self.buckets[step]), int(self.windows[step])

  def buckets_ahead(self, start_step: int) -> list[int]:
    """The latent buckets steps [start_step, steps) use, sorted: what a run compiles."""
    return sorted({int(b) for b in np.unique(self.buckets[start_step:])})

  def windows_ahead(self, start_step: int) -> list[int]:
    """The windows steps [start_step, steps) use, sorted."""
    return sorted({int(w) for w in np.unique(self.windows[start_step:])})

  def tokens(self, batch_size: int) -> int:
    """Scored targets over the plan: batch_size * the sum of N."""
    return int(batch_size * self.latents.astype(np.int64).sum())


def plan(config: Any, steps: int | None = None) -> StepPlan:
  """The plan of `config`'s run, or of the same run made `steps` steps long (the schedules
  stretch with the run: a curriculum ramps over a fraction of it)."""
  config = spec.from_config(config)
  if steps is not None and steps != config.train.steps:
    config = config.replace(train={'steps': int(steps)})
  total = int(config.train.steps)
  counts = np.fromiter(
    (latents.latent_count(config, step) for step in range(total)), np.int32, count=total
  )
  buckets = np.asarray(config.latents.buckets, np.int32)
  if total and counts.max() > buckets[-1]:
    latents.bucket_for(int(counts.max()), tuple(buckets))  # raises: no bucket holds it
  chosen = buckets[np.searchsorted(buckets, counts)] if total else counts
  if config.window.schedule in ('none', 'fixed'):
    sizes = np.full(total, windows.window_buckets(config)[-1], np.int32)
  else:
    sizes = np.fromiter((windows.window_at(config, s) for s in range(total)), np.int32, total)
  return StepPlan(counts, chosen.astype(np.int32), sizes)
