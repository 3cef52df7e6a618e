"""Latent buckets and the per-step latent-count strategies.

XLA compiles one program per shape, so a step with N latents runs at the static bucket
B = bucket_for(N, buckets) and N itself enters the program as a traced integer: a run
compiles once per bucket it uses, never once per N.

Strategies (config.latents.strategy) map a training step to N, deterministically from
(seed, step) so a resumed run draws the same N as the uninterrupted one:
  * fixed       N = latents.max;
  * uniform     N ~ U[latents.min, latents.max], one draw per step from a seeded stream;
  * curriculum  N grows from latents.min to latents.max (`schedules.ramp`): over
                `warmup_fraction` of training with `schedule` = 'linear' (every integer) or
                'stepwise' (bucket by bucket), or with 'staircase' (the seed project's
                recipe) in `stairs` equal stages of the whole run, `stair_size` latents a
                stage: N = min(max, min + stair_size * floor(step / (total_steps / stairs))).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from perceiver_ar_vl import errors, schedules
from perceiver_ar_vl.config_choices import SCHEDULES, STRATEGIES


def validate_buckets(buckets: Sequence[int], max_context: int | None = None) -> tuple[int, ...]:
  """Returns `buckets` as a tuple after checking they are sorted, positive and fit the window."""
  try:
    buckets = tuple(int(b) for b in buckets)
  except (TypeError, ValueError):
    raise errors.UserError(
      f'latents.buckets must be a tuple of integers, got {buckets!r}; e.g. '
      "--config.latents.buckets='(64,128,256)'."
    ) from None
  if not buckets:
    raise errors.UserError(
      'latents.buckets is empty: give at least one bucket, e.g. '
      "--config.latents.buckets='(64,128,256)'."
    )
  if any(b < 1 for b in buckets):
    raise errors.UserError(
      f'latents.buckets must be positive, got {buckets}; drop the entries below 1.'
    )
  if list(buckets) != sorted(set(buckets)):
    raise errors.UserError(
      f'latents.buckets must be strictly increasing, got {buckets}; sort them and drop '
      f"duplicates: --config.latents.buckets='{_tuple_flag(sorted(set(buckets)))}'."
    )
  if max_context is not None and buckets[-1] > max_context:
    raise errors.UserError(
      f'Largest bucket {buckets[-1]} of latents.buckets exceeds the window '
      f'model.max_context={max_context}; drop it or enlarge the window.'
    )
  return buckets


def _tuple_flag(values: Sequence[int]) -> str:
  """`(a,b,c)`: how a tuple is written in a --config override."""
  return '(' + ','.join(str(v) for v in values) + (',)' if len(values) == 1 else ')')


def bucket_for(n: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= n of `buckets` (checked once, by `validate_buckets`: sorted and
  positive). Raises UserError if n < 1 or no bucket can hold n."""
  n = int(n)
  if n < 1:
    raise errors.UserError(f'Number of latents must be >= 1, got {n}.')
  for b in buckets:
    if b >= n:
      return b
  raise errors.UserError(
    f'No bucket can hold {n} latents: the largest of latents.buckets={buckets} is '
    f'{buckets[-1]}. Add a bucket >= {n} to latents.buckets or lower the latent count.'
  )


def validate_counts(
  min_latents: int, max_latents: int, buckets: Sequence[int], max_context: int | None = None
) -> None:
  """Checks the latent counts and buckets of any strategy, with a message that says what to
  change (the strategy and schedule names are enumerated keys: config_lib.validate checks
  them with the others)."""
  if not 1 <= min_latents <= max_latents:
    raise errors.UserError(
      f'Need 1 <= latents.min <= latents.max, got min={min_latents}, max={max_latents}; '
      'change latents.min or latents.max.'
    )
  if max_context is not None and max_latents > max_context:
    raise errors.UserError(
      f'latents.max={max_latents} exceeds the window model.max_context={max_context}: '
      f'there cannot be more latents than window positions; set latents.max <= {max_context} '
      'or enlarge model.max_context.'
    )
  bucket_for(max_latents, validate_buckets(buckets, max_context))


def num_latents_at(
  step: int,
  *,
  strategy: str,
  min_latents: int,
  max_latents: int,
  total_steps: int,
  seed: int,
  buckets: Sequence[int] = (),
  schedule: str = 'linear',
  warmup_fraction: float = 0.5,
  stair_size: int = 32,
  stairs: int = 14,
) -> int:
  """N for training step `step` (a pure function of its arguments)."""
  if strategy == 'fixed':
    return int(max_latents)
  if strategy == 'uniform':
    rng = np.random.default_rng([seed, step, 0x6C61])  # one independent stream per step
    return int(rng.integers(min_latents, max_latents + 1))
  if strategy == 'curriculum':
    if schedule not in SCHEDULES:
      raise errors.UserError(f'Unknown latents.schedule {schedule!r}; choose one of {SCHEDULES}.')
    return schedules.ramp(
      step,
      low=min_latents,
      high=max_latents,
      total_steps=total_steps,
      shape=schedule,
      warmup_fraction=warmup_fraction,
      stages=buckets,
      stairs=stairs,
      stair_size=stair_size,
    )
  raise errors.UserError(f'Unknown latents.strategy {strategy!r}; choose one of {STRATEGIES}.')


def latent_count(config: Any, step: int) -> int:
  """N at training step `step` of the run `config` describes (its latents, steps and seed)."""
  lat = config.latents
  return num_latents_at(
    step,
    strategy=lat.strategy,
    min_latents=lat.min,
    max_latents=lat.max,
    total_steps=config.train.steps,
    seed=config.seed,
    buckets=lat.buckets,
    schedule=lat.schedule,
    warmup_fraction=lat.warmup_fraction,
    stair_size=lat.stair_size,
    stairs=lat.stairs,
  )


def check_latents(num_latents, bucket: int | None, context: int) -> int:
  """Validates N and B against the window length; returns the static bucket B."""
  concrete_n = None
  if isinstance(num_latents, (int, np.integer)):
    concrete_n = int(num_latents)
  if bucket is None:
    if concrete_n is None:
      raise ValueError(
        'num_latents is traced, so its bucket must be given: pass a static bucket=B >= num_latents.'
      )
    bucket = concrete_n
  bucket = int(bucket)
  if bucket > context:
    raise ValueError(
      f'bucket={bucket} exceeds the window of {context} tokens; use a bucket '
      f'<= {context} (or a longer window).'
    )
  if concrete_n is not None:
    if concrete_n < 1:
      raise ValueError(f'num_latents must be >= 1, got {concrete_n}.')
    if concrete_n > bucket:
      raise ValueError(
        f'num_latents={concrete_n} does not fit in bucket={bucket}; use a bucket >= {concrete_n}.'
      )
  return bucket
