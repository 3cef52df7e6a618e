"""The one builder of the compiled train step: `train_step` bound to a run's model, optimizer
schedule and loss settings, jitted with the run's shardings (state as created or restored,
batch split over the devices) and donation of the state, per (latent bucket, training window).

Training runs these programs; `experiments.step_cost` measures their memory and time and the
benchmarks time them through it, so every published figure is of the program that trains.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from jax.sharding import Mesh

from perceiver_ar_vl import config_lib, parallel
from perceiver_ar_vl.models.base import LanguageModel
from perceiver_ar_vl.runs import train_state
from perceiver_ar_vl.runs.train_state import TrainState
from perceiver_ar_vl.training.step import bucket_step
from perceiver_ar_vl.windows import row_length


class CompiledSteps:
  """train_step jitted once per latent bucket (and training window, with a window curriculum);
  `compiles` counts the traces of each latent bucket, `window_compiles` of each window. The
  model and mesh are the config's unless given (`model`, `mesh` hold them).

  `compile_ahead` compiles the buckets a run will use before its first step (ahead-of-time
  `.lower().compile()`), so the run never pauses mid-way to compile; a bucket not compiled
  ahead is still compiled on first use, through jit. `window` 0 is the whole row.
  """

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    model: LanguageModel | None = None,
    mesh: Mesh | None = None,
  ):
    self._config = config
    self.model = model or config_lib.create_model(config)
    self.mesh = mesh or parallel.make_mesh()
    self._schedule = train_state.make_optimizer(config.train)[1]
    self._fns: dict[tuple[int, int], Callable] = {}
    self._compiled: dict[tuple[int, int], Callable] = {}
    self.compiles: dict[int, int] = {}
    self.window_compiles: dict[int, int] = {}

  def __call__(self, bucket: int, window: int = 0) -> Callable:
    """The step at (`bucket`, `window`): compiled ahead, or jitted (compiled on first use)."""
    return self._compiled.get((bucket, window)) or self.jitted(bucket, window)

  def jitted(self, bucket: int, window: int = 0) -> Callable:
    """The jitted step at (`bucket`, `window`), made once (traced when first called)."""
    key = (bucket, window)
    if key not in self._fns:
      t = self._config.train
      step = bucket_step(self._config, self.model, bucket, self._schedule, window)

      shown = window or self._config.model.max_context  # 0: the whole row

      def counted(state, *args):
        self.compiles[bucket] = self.compiles.get(bucket, 0) + 1  # runs at trace time only
        self.window_compiles[shown] = self.window_compiles.get(shown, 0) + 1
        logging.info('Compiling train_step for bucket %d, window %d.', bucket, shown)
        new_state, step_metrics = step(state, *args)
        # The new state is placed like the one that came in (by create_train_state or
        # restore): replicated, or with train.fsdp split over the data axis, where XLA
        # all-gathers the parameters for the step and reduce-scatters their gradients.
        placed = parallel.state_shardings(new_state, self.mesh, t.fsdp)
        return jax.lax.with_sharding_constraint(new_state, placed), step_metrics

      rep, rows = parallel.replicated(self.mesh), parallel.batch_sharded(self.mesh)
      # The state's shardings (None): those of the state passed in, which it keeps.
      self._fns[key] = jax.jit(
        counted, donate_argnums=0, in_shardings=(None, rows, rep, rep), out_shardings=(None, rep)
      )
    return self._fns[key]

  def lower(self, bucket: int, window: int = 0, state: Any = None) -> jax.stages.Lowered:
    """The train step at (`bucket`, `window`) lowered for `state`'s shapes and shardings (an
    abstract TrainState of the config when None), the global batch and the replicated latent
    count and rng: what `.compile()` turns into the program training runs."""
    c = self._config
    if state is None:
      state = train_state.abstract_train_state(c, self.model, self.mesh)
    rows = (c.train.batch_size, row_length(c))
    rep = parallel.replicated(self.mesh)
    batch = jax.ShapeDtypeStruct(rows, jnp.int32, sharding=parallel.batch_sharded(self.mesh))
    n = jax.ShapeDtypeStruct((), jnp.int32, sharding=rep)
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep)  # a PRNGKey
    return self.jitted(bucket, window).lower(state, batch, n, rng)

  def compile_ahead(self, buckets: list[int], state: TrainState, windows: tuple = (0,)) -> None:
    """Compiles train_step for each of `buckets` (at each of `windows`) now, one trace each,
    for `state`'s shapes."""
    for window in windows:
      for bucket in buckets:
        if (bucket, window) not in self._compiled:
          self._compiled[(bucket, window)] = self.lower(bucket, window, state).compile()
