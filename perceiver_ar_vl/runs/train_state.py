"""Training state: the optimizer, fresh and abstract (restorable) states, restored params.

Shared by training, evaluation and sampling, which restore the same TrainState from a workdir.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from perceiver_ar_vl import config_lib, parallel, spec
from perceiver_ar_vl.models.base import LanguageModel
from perceiver_ar_vl.runs import checkpoints


class TrainState(train_state.TrainState):
  """Params, optimizer state and step (`apply_fn` and `tx` are static)."""


def make_optimizer(
  t: ml_collections.ConfigDict | spec.TrainSpec,
) -> tuple[optax.GradientTransformation, Any]:
  """Global-norm clipping then AdamW, with linear warmup then cosine (or constant) lr."""
  warmup = min(t.warmup_steps, max(t.steps - 1, 0))
  if t.lr_schedule == 'cosine':
    schedule = optax.warmup_cosine_decay_schedule(
      0.0,
      t.learning_rate,
      warmup_steps=warmup,
      decay_steps=max(t.steps, warmup + 1),
      end_value=0.1 * t.learning_rate,
    )
  else:
    schedule = optax.join_schedules(
      [
        optax.linear_schedule(0.0, t.learning_rate, max(warmup, 1)),
        optax.constant_schedule(t.learning_rate),
      ],
      [warmup],
    )
  tx = optax.chain(
    optax.clip_by_global_norm(t.grad_clip),
    optax.adamw(schedule, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay),
  )
  return tx, schedule


def _new_state_fn(config: ml_collections.ConfigDict | spec.RunSpec, model: LanguageModel):
  """rng -> a fresh TrainState (what both the real and the abstract state are traced from).

  Its step is a strongly typed int32, as a restored one is (`TrainState.create`'s Python 0
  would be weakly typed): a fresh and a resumed run then run the same compiled train_step.
  """
  tx, _ = make_optimizer(config.train)
  return lambda rng: TrainState.create(
    apply_fn=model.forward, params=model.init_variables(rng), tx=tx
  ).replace(step=jnp.zeros((), jnp.int32))


def train_state_shardings(
  config: ml_collections.ConfigDict | spec.RunSpec, model: LanguageModel, mesh
) -> TrainState:
  """A NamedSharding for each array of the TrainState on `mesh`: replicated, or with
  `train.fsdp` split over the data axis (parallel.state_shardings). Its optimizer is a new
  one: match it with a state leaf by leaf, not as a pytree of the same structure."""
  shapes = jax.eval_shape(_new_state_fn(config, model), jax.random.PRNGKey(0))
  return parallel.state_shardings(shapes, mesh, config.train.fsdp)


def create_train_state(
  config: ml_collections.ConfigDict | spec.RunSpec, model: LanguageModel, mesh
) -> TrainState:
  """A fresh TrainState, replicated or (train.fsdp) sharded over `mesh`."""
  new_state = _new_state_fn(config, model)  # one optimizer: the shardings' tree is the state's
  shapes = jax.eval_shape(new_state, jax.random.PRNGKey(0))
  make = jax.jit(new_state, out_shardings=parallel.state_shardings(shapes, mesh, config.train.fsdp))
  return make(jax.random.PRNGKey(config.seed))


def abstract_train_state(
  config: ml_collections.ConfigDict | spec.RunSpec, model: LanguageModel, mesh
) -> TrainState:
  """Shapes, dtypes and shardings of the TrainState, for restoring without allocating twice.

  The shardings are those of this run's mesh and train.fsdp, whatever the device count and
  placement of the run that saved the checkpoint: orbax reads each device's part into them.
  """
  shapes = jax.eval_shape(_new_state_fn(config, model), jax.random.PRNGKey(0))
  shardings = parallel.state_shardings(shapes, mesh, config.train.fsdp)
  return jax.tree.map(
    lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
    shapes,
    shardings,
  )


def checkpoint_step(workdir: str, step: int | str = -1) -> int:
  """The saved step that `restore_params(config, workdir, step)` would restore (-1: the
  latest, 'best': the kept step with the lowest validation bits per byte); raises
  checkpoints.CheckpointError when there is none. Cheap: lists directories (and scores)."""
  mngr = checkpoints.manager(workdir, create=False)
  try:
    return checkpoints.resolve_step(mngr, step)
  finally:
    mngr.close()


def restore_params(
  config: ml_collections.ConfigDict | spec.RunSpec, workdir: str, step: int | str = -1
):
  """(model, variables, step) from `workdir`'s checkpoint `step` (-1: the latest, 'best': the
  kept step with the lowest validation bits per byte).

  `variables` is the dict `model.apply` takes ({'params': ...}): TrainState.params holds
  the whole of what `model.init` returned. A missing step or a checkpoint of another model
  shape raises checkpoints.CheckpointError before anything is built.
  """
  mngr = checkpoints.manager(workdir, create=False)
  try:
    step = checkpoints.resolve_step(mngr, step)
    model = config_lib.create_model(config)
    abstract_state = abstract_train_state(config, model, parallel.make_mesh())
    state = checkpoints.restore(mngr, abstract_state, step)
  finally:
    mngr.close()
  return model, state.params, int(state.step)
