"""The compiled train step, measured: XLA's memory analysis of the train step at a latent
bucket (the memory figure every report and benchmark of this project uses) and its wall-clock
(what the seconds budget and the benchmarks time)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from perceiver_ar_vl import parallel, spec, windows
from perceiver_ar_vl.runs import train_state
from perceiver_ar_vl.training.compiled_steps import CompiledSteps


def train_step_memory(config: ml_collections.ConfigDict | spec.RunSpec, bucket: int) -> int:
  """Bytes of the train step at `bucket` as training compiles it (`CompiledSteps`: the run's
  shardings, the state donated): arguments + outputs + temporaries - donated buffers, per
  device (XLA's compiled memory analysis)."""
  steps = CompiledSteps(config)
  compiled = steps.lower(bucket, full_window(config)).compile()
  return compiled_bytes(compiled.memory_analysis())


def full_window(config: ml_collections.ConfigDict | spec.RunSpec) -> int:
  """The window a train step sees at the end of any window curriculum (M without one)."""
  return windows.window_buckets(config)[-1]


_MEMORY: dict[tuple[str, int], int] = {}


def cached_train_step_memory(config: ml_collections.ConfigDict | spec.RunSpec, bucket: int) -> int:
  """train_step_memory, computed once per (model, train settings, bucket) in this process."""
  t = config.train
  key = (
    repr(spec.from_config(config).model)
    + repr((t.batch_size, t.grad_accum_steps, t.random_truncation)),
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
  config: spec.RunSpec, bucket: int, impl: str | None = None, compiler_options: dict | None = None
) -> tuple[Callable[[], None], Any]:
  """The train step of `config`'s model at `bucket` (batch `config.train.batch_size`),
  compiled as training compiles it (`CompiledSteps`); returns (step, XLA memory analysis)
  where `step()` runs one step on a fixed random batch and waits for it, and `step.compiled`
  is the XLA executable (its HLO text: `step.compiled.as_text()`). `impl` overrides
  model.attention_impl; `compiler_options` are XLA options for this compilation only
  (`benchmarks/step_variants.py`)."""
  config = spec.from_config(config)
  if impl is not None:
    config = config.replace(model={'attention_impl': impl})
  steps = CompiledSteps(config)
  state = train_state.create_train_state(config, steps.model, steps.mesh)
  compiled = steps.lower(bucket, full_window(config), state).compile(compiler_options)
  shape = (config.train.batch_size, windows.row_length(config))
  rows = np.random.default_rng(0).integers(0, 256, shape).astype(np.int32)
  window = parallel.global_batch(rows, steps.mesh)
  rep = parallel.replicated(steps.mesh)
  n, rng = (jax.device_put(x, rep) for x in (np.int32(bucket), jax.random.PRNGKey(0)))
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
