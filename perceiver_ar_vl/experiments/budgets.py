"""Equal-budget training: how many steps a run gets so that it spends what a reference run does.

A budget is a cost summed over a run's steps. The cost of a step is a function of the latent
bucket it runs at (a Perceiver AR step at bucket B computes all B slots, active or not):
  * 'steps'   every step costs 1;
  * 'flops'   `flops.train_step_flops(config, B)`: the analytic FLOP model (matmuls only, 3x the
              forward; see flops.py);
  * 'seconds' the measured wall-clock of one compiled train step at B on this machine.
The reference is `fixed_512` (N = B = half the window) at the preset's steps; every other run
gets the largest step count T whose total cost is at most the reference's. Schedules depend on
T (the curriculum ramps over a fraction of T; the learning rate decays over T), so the cost of
T steps is recomputed with T as the run length, never extrapolated.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections

from perceiver_ar_vl import errors, spec, step_plan
from perceiver_ar_vl.experiments import flops, step_cost

BUDGETS = ('steps', 'flops', 'seconds')

BucketCost = Callable[[int], float]


def bucket_schedule(
  config: ml_collections.ConfigDict | spec.RunSpec, steps: int | None = None
) -> list[int]:
  """The latent bucket of every step of `config` run for `steps` steps (default train.steps)."""
  return [int(b) for b in step_plan.plan(config, steps).buckets]


def run_cost(
  config: ml_collections.ConfigDict | spec.RunSpec, cost: BucketCost, steps: int | None = None
) -> float:
  """Total cost of `config` run for `steps` steps (default train.steps)."""
  per_bucket: dict[int, float] = {}
  total = 0.0
  for bucket in bucket_schedule(config, steps):
    if bucket not in per_bucket:
      per_bucket[bucket] = cost(bucket)
    total += per_bucket[bucket]
  return total


def steps_for_budget(
  config: ml_collections.ConfigDict | spec.RunSpec,
  cost: BucketCost,
  budget: float,
  max_factor: int = 16,
) -> int:
  """The largest T in [1, max_factor * train.steps] with run_cost(config, cost, T) <= budget.

  Binary search: the cost of T steps grows with T for every strategy (a longer curriculum ramps
  more slowly, so its cost per step can only fall as T grows, but its total never does here).
  """
  low, high = 1, max_factor * config.train.steps
  if run_cost(config, cost, low) > budget:
    raise errors.UserError(
      f'One step of {config.name} costs more than the whole budget ({budget:.3g}); use '
      '--budget=steps.'
    )
  while low < high:
    mid = (low + high + 1) // 2
    if run_cost(config, cost, mid) <= budget:
      low = mid
    else:
      high = mid - 1
  return low


def seconds_cost(config: ml_collections.ConfigDict | spec.RunSpec, repeats: int = 5) -> BucketCost:
  """Measured seconds of one train step at each bucket (compiled first, then the median of
  `repeats` timed steps), cached per bucket."""
  cache: dict[int, float] = {}

  def cost(bucket: int) -> float:
    if bucket not in cache:
      cache[bucket] = measure_step_seconds(config, bucket, repeats)
    return cache[bucket]

  return cost


def measure_step_seconds(
  config: ml_collections.ConfigDict | spec.RunSpec, bucket: int, repeats: int = 5
) -> float:
  """Median wall-clock of `repeats` train steps of `config` at `bucket` on this machine
  (a random batch; the compile and one warm-up step are not timed)."""
  step, _ = step_cost.compiled_train_step(config, bucket)
  return step_cost.median_step_seconds(step, repeats)


def bucket_cost(budget: str, config: ml_collections.ConfigDict | spec.RunSpec) -> BucketCost:
  """The per-step cost function of `budget` for `config`."""
  if budget == 'steps':
    return lambda bucket: 1.0
  if budget == 'flops':  # the analytic model of flops.py at the bucket each step runs
    return lambda bucket: float(flops.train_step_flops(config, bucket))
  if budget == 'seconds':
    return seconds_cost(config)
  raise errors.UserError(f'Unknown budget {budget!r}; choose one of {BUDGETS}.')
