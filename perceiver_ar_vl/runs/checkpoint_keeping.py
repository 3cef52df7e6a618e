"""Which checkpoints a run keeps, and which kept step is the best.

Three orbax preservation policies, of which a step is kept if any keeps it
(`AnyPreservationPolicy`):
  * `train.keep_checkpoints`: the newest k steps (`LatestN`), what resuming needs;
  * `train.keep_every`: every step that is a multiple of k, forever (`EveryNSteps`);
  * `train.keep_best`: the k steps with the lowest validation bits per byte (`BestN`), among
    the steps saved with their validation score (training scores validation at each regular
    save when keep_best > 0 and hands it to the save as the step's orbax metrics).
Orbax applies them at each save, so a step another policy no longer keeps is deleted then.

`eval.checkpoint_step='best'` picks the kept step with the lowest validation bits per byte of
those that carry a score (`best_step`), whatever the keep settings of the run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import orbax.checkpoint as ocp

from perceiver_ar_vl import config_choices

BEST = config_choices.BEST_CHECKPOINT  # eval.checkpoint_step: the lowest-bits kept step
METRIC = 'validation_bits_per_byte'  # the score a step is saved with, lower is better


def score(metrics: Mapping[str, Any] | None) -> float:
  """A saved step's validation bits per byte; +inf when it carries none (never the best)."""
  if not metrics or METRIC not in metrics:
    return math.inf
  return float(metrics[METRIC])


def manager_options(keep_checkpoints: int, keep_every: int = 0, keep_best: int = 0) -> dict:
  """The `ocp.CheckpointManagerOptions` keywords that keep the steps described above.

  With keep_best > 0 the manager also tracks scores (`best_fn`), which makes orbax write the
  metrics given to each save into the step's directory, where `best_step` finds them and a
  resumed run's BestN sees them again. Steps without a score are left to the other policies.
  """
  policies = ocp.checkpoint_managers
  keep: list[Any] = [policies.LatestN(n=keep_checkpoints)]
  if keep_every:
    keep.append(policies.EveryNSteps(interval_steps=keep_every))
  options: dict[str, Any] = {}
  if keep_best:
    keep.append(
      policies.BestN(
        get_metric_fn=score, reverse=True, n=keep_best, keep_checkpoints_without_metrics=False
      )
    )  # reverse: sorted from the highest bits down, the last n (the lowest) are kept
    options.update(best_fn=score, best_mode='min')
  return {'preservation_policy': policies.AnyPreservationPolicy(keep), **options}


def scores(mngr: ocp.CheckpointManager) -> dict[int, float]:
  """{step: validation bits per byte} of the kept steps that were saved with a score."""
  found = {step: score(mngr.metrics(step)) for step in mngr.all_steps()}
  return {step: bits for step, bits in sorted(found.items()) if math.isfinite(bits)}


def best_step(mngr: ocp.CheckpointManager) -> int | None:
  """The kept step with the lowest validation bits per byte (of equal ones, the newest), or
  None when no kept step carries a score."""
  scored = scores(mngr)
  if not scored:
    return None
  return min(scored, key=lambda step: (scored[step], -step))
