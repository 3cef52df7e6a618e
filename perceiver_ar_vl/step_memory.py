"""Compiled train-step memory: XLA's memory analysis of the train step at a latent bucket, the
figure every report and benchmark of this project uses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from perceiver_ar_vl import config_lib, parallel, stepping
from perceiver_ar_vl import state as state_lib


def train_step_memory(config: ml_collections.ConfigDict, bucket: int) -> int:
  """Bytes of the compiled train step at `bucket`: arguments + outputs + temporaries (XLA's
  compiled memory analysis, without donation)."""
  model = config_lib.create_model(config)
  mesh = parallel.make_mesh()
  abstract_state = state_lib.abstract_train_state(config, model, mesh)
  _, schedule = state_lib.make_optimizer(config.train)
  batch = jax.ShapeDtypeStruct((config.train.batch_size, config.model.max_context + 1), jnp.int32)

  step = stepping.bucket_step(config, model, bucket, schedule)
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
