"""Helpers shared by the benchmark scripts: one compiled train step, timed and measured."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from perceiver_ar_vl import config_lib, runtime, spec
from perceiver_ar_vl.experiments import step_cost

# Steps run as training runs them (`cpu_execution`, read by JAX when its CPU client starts).
runtime.configure_cpu_execution(spec.RunSpec.cpu_execution)


@dataclasses.dataclass
class StepStats:
  seconds: float  # median wall-clock of one step (after a warm-up step)
  temp_bytes: int  # XLA compiled memory analysis: temporaries
  total_bytes: int  # arguments + outputs + temporaries - aliased (donated) buffers


def seed_model_config(context: int, batch: int) -> ml_collections.ConfigDict:
  """The seed-size model (6 layers, d_model 512, 8 heads, MLP 2048) with a `context`-byte
  window, `batch` windows per step, float32 and no dropout: the shapes of the comparison
  with lucidrains' perceiver-ar-pytorch (`vs_lucidrains.py`, `profile_step.py`)."""
  config = config_lib.strategy_config('fixed_512', 'gpu')
  config.model.update(max_context=context, dropout_rate=0.0, dtype='float32')
  config.train.batch_size = batch
  return config


def time_train_step(
  config: ml_collections.ConfigDict, bucket: int, repeats: int = 3, impl: str | None = None
) -> StepStats:
  """Median seconds of `step_cost.compiled_train_step` over `repeats` steps after one warm-up
  step, and its compiled memory."""
  step, stats = step_cost.compiled_train_step(config, bucket, impl)
  seconds = step_cost.median_step_seconds(step, repeats)
  total = step_cost.compiled_bytes(stats)
  return StepStats(seconds, int(stats.temp_size_in_bytes), total)


def matmul_gflops(
  size: int = 2048, repeats: int = 5, dtype: str = 'float32', result_dtype: str | None = None
) -> float:
  """GFLOP/s of a plain [size, size] x [size, size] matmul in JAX, float32 unless `dtype` says
  otherwise (the roofline that the train step's achieved rate is compared with); `result_dtype`
  asks for another result type (bf16 inputs with a float32 result: XLA:CPU's fast bf16 path,
  which `perceiver_ar_vl.layers.dots` uses)."""
  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.normal(size=(size, size)), dtype) for _ in range(2))
  f = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=result_dtype))
  f(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * size**3 / min(times) / 1e9


def alternating_medians(
  steps: dict[str, Callable[[], None]], rounds: int, repeats: int
) -> dict[str, float]:
  """Median wall-clock of each of `steps` (calls that wait for their result): each called once
  untimed, then `rounds` rounds of `repeats` timed calls of each in turn, so load on a shared
  machine hits all of them alike."""
  for step in steps.values():
    step()
  times = {name: [] for name in steps}
  for _ in range(rounds):
    for name, step in steps.items():
      for _ in range(repeats):
        start = time.perf_counter()
        step()
        times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}
