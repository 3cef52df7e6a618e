"""The compiled train step, measured: XLA's memory analysis of the train step at a latent
bucket (the memory figure every report and benchmark of this project uses) and its wall-clock
(what the seconds budget and the benchmarks time)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from perceiver_ar_vl import config_lib, parallel, train_state, windows
from perceiver_ar_vl.training.step import bucket_step


def train_step_memory(config: ml_collections.ConfigDict, bucket: int) -> int:
  """Bytes of the compiled train step at `bucket`: arguments + outputs + temporaries (XLA's
  compiled memory analysis, without donation)."""
  model = config_lib.create_model(config)
  mesh = parallel.make_mesh()
  abstract_state = train_state.abstract_train_state(config, model, mesh)
  _, schedule = train_state.make_optimizer(config.train)
  batch = jax.ShapeDtypeStruct((config.train.batch_size, windows.row_length(config)), jnp.int32)

  step = bucket_step(config, model, bucket, schedule)
  rng = jax.random.PRNGKey(0)

  compiled = jax.jit(step).lower(abstract_state, batch, jnp.int32(bucket), rng).compile()
  stats = compiled.memory_analysis()
  return compiled_bytes(stats)


_MEMORY: dict[tuple[str, int], int] = {}


def cached_train_step_memory(config: ml_collections.ConfigDict, bucket: int) -> int:
  """train_step_memory, computed once per (model, train settings, bucket) in this process."""
  t = config.train
  key = (
    config.model.to_json() + repr((t.batch_size, t.grad_accum_steps, t.random_truncation)),
    bucket,
  )
  if key not in _MEMORY:
    _MEMORY[key] = train_step_memory(config, bucket)
  return _MEMORY[key]


def compiled_bytes(stats) -> int:
  """Arguments + outputs + temporaries - aliased (donated) buffers of an XLA compiled memory
  analysis: the memory figure every report and benchmark of this project uses."""
  return int(
    stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    + stats.temp_size_in_bytes
    - stats.alias_size_in_bytes
  )


def compiled_train_step(
  config: ml_collections.ConfigDict, bucket: int, impl: str | None = None
) -> tuple[Callable[[], None], Any]:
  """The train step of `config`'s model at `bucket` (batch `config.train.batch_size`, donated
  state, as training runs it), compiled; returns (step, XLA memory analysis) where `step()`
  runs one step on a fixed random batch and waits for it, and `step.compiled` is the XLA
  executable (its HLO text: `step.compiled.as_text()`). `impl` overrides
  model.attention_impl."""
  config = config.copy_and_resolve_references()
  if impl is not None:
    config.model.attention_impl = impl
  model = config_lib.create_model(config)
  state = train_state.create_train_state(config, model, parallel.make_mesh())
  _, schedule = train_state.make_optimizer(config.train)

  step_fn = bucket_step(config, model, bucket, schedule)
  rng = jax.random.PRNGKey(0)

  shape = (config.train.batch_size, windows.row_length(config))
  window = jnp.asarray(np.random.default_rng(0).integers(0, 256, shape), jnp.int32)
  n = jnp.int32(bucket)
  compiled = jax.jit(step_fn, donate_argnums=0).lower(state, window, n, rng).compile()
  holder = [state]

  def step() -> None:
    holder[0], metrics = compiled(holder[0], window, n, rng)
    jax.block_until_ready(metrics)

  step.compiled = compiled
  return step, compiled.memory_analysis()


def median_step_seconds(step: Callable[[], None], repeats: int) -> float:
  """Median wall-clock of `repeats` calls of `step` after one untimed warm-up call."""
  step()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return statistics.median(times)
