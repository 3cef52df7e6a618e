"""Helpers shared by the benchmark scripts: one compiled train step, timed and measured."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from perceiver_ar_vl import config_lib, parallel, step_memory, stepping
from perceiver_ar_vl import state as state_lib


@dataclasses.dataclass
class StepStats:
  seconds: float  # median wall-clock of one step (after a warm-up step)
  temp_bytes: int  # XLA compiled memory analysis: temporaries
  total_bytes: int  # arguments + outputs + temporaries - aliased (donated) buffers


def compiled_train_step(
  config: ml_collections.ConfigDict, bucket: int, impl: str | None = None
) -> tuple[Callable[[], None], Any]:
  """The train step of `config`'s model at `bucket` (batch `config.train.batch_size`, donated
  state, as training runs it), compiled; returns (step, XLA memory analysis) where `step()`
  runs one step on a fixed random batch and waits for it."""
  config = config.copy_and_resolve_references()
  if impl is not None:
    config.model.attention_impl = impl
  model = config_lib.create_model(config)
  state = state_lib.create_train_state(config, model, parallel.make_mesh())
  _, schedule = state_lib.make_optimizer(config.train)

  step_fn = stepping.bucket_step(config, model, bucket, schedule)
  rng = jax.random.PRNGKey(0)

  shape = (config.train.batch_size, config.model.max_context + 1)
  window = jnp.asarray(np.random.default_rng(0).integers(0, 256, shape), jnp.int32)
  n = jnp.int32(bucket)
  compiled = jax.jit(step_fn, donate_argnums=0).lower(state, window, n, rng).compile()
  holder = [state]

  def step() -> None:
    holder[0], metrics = compiled(holder[0], window, n, rng)
    jax.block_until_ready(metrics)

  return step, compiled.memory_analysis()


def time_train_step(
  config: ml_collections.ConfigDict, bucket: int, repeats: int = 3, impl: str | None = None
) -> StepStats:
  """Median seconds of `compiled_train_step` over `repeats` steps after one warm-up step, and
  its compiled memory."""
  step, stats = compiled_train_step(config, bucket, impl)
  step()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  total = step_memory.compiled_bytes(stats)
  return StepStats(statistics.median(times), int(stats.temp_size_in_bytes), total)


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
  """GFLOP/s of a plain float32 [size, size] x [size, size] matmul in JAX (the roofline that
  the train step's achieved rate is compared with)."""
  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.normal(size=(size, size)), jnp.float32) for _ in range(2))
  f = jax.jit(jnp.matmul)
  f(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * size**3 / min(times) / 1e9
