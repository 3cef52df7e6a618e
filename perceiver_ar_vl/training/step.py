"""The pure train step: (state, batch of windows, N, rng) -> (state, metrics).

The model is reached through its interface (`model.forward`), so the same step trains every
model; `bucket_step` binds it to a config at one latent bucket, which is what training, the
memory report and the benchmarks compile.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from perceiver_ar_vl import data, losses
from perceiver_ar_vl.models.base import LanguageModel
from perceiver_ar_vl.runs.train_state import TrainState

_TRUNCATION_STREAM = 0x7472  # fold_in tag: truncation draws, independent of dropout's


def truncation_mask(window_BxW: jax.Array, fraction: float, rng: jax.Array) -> jax.Array:
  """[batch, M] validity mask for short-context training (`train.random_truncation`).

  Each window is truncated with probability `fraction` to a suffix of L ~ U[1, M] input bytes;
  the positions before it become left padding (False): not attended and, for a latent sitting
  there, not scored. Windows that are not truncated keep all M positions.
  """
  batch, context = window_BxW.shape[0], window_BxW.shape[1] - 1
  pick_rng, length_rng = jax.random.split(rng)
  truncated_B = jax.random.bernoulli(pick_rng, fraction, (batch,))
  keep_B = jnp.where(truncated_B, jax.random.randint(length_rng, (batch,), 1, context + 1), context)
  return jnp.arange(context)[None, :] >= context - keep_B[:, None]


def train_step(
  state: TrainState,
  window_BxW: jax.Array,
  num_latents: jax.Array,
  base_rng: jax.Array,
  *,
  model: LanguageModel,
  bucket: int,
  z_loss: float,
  grad_accum_steps: int,
  schedule,
  random_truncation: float = 0.0,
  padded_rows: bool = False,
  window: int = 0,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a batch of windows [batch, M+1] with N active latents.

  Dropout (and truncation) randomness is fold_in(base_rng, step), so a resumed run draws the
  same masks. With grad_accum_steps = k the batch is split into k microbatches whose gradients
  are averaged (each has the same number of active targets, so this equals the full-batch
  gradient; with random_truncation > 0 each microbatch's mean is weighted equally).

  `padded_rows` (static; `data.rows_have_padding`): rows may hold left padding (negative
  tokens, data.PAD), which is then neither attended nor scored: the input mask is tokens >= 0
  and a latent slot at padding carries no loss; tokens are clipped to 0 before the model.
  Without it the step is the one it always was.

  `window` (static; `windows.window_at`): > 0 trains on the last `window` input bytes of each
  row only (the window curriculum), a static slice; 0 = the whole row.
  """
  rng = jax.random.fold_in(base_rng, state.step)
  if 0 < window < window_BxW.shape[1] - 1:
    window_BxW = window_BxW[:, -(window + 1) :]

  def loss_fn(params, micro_BxW, micro_rng):
    input_mask, weights = None, None
    if padded_rows:  # left padding: negative tokens
      input_mask = micro_BxW[:, :-1] >= 0
      micro_BxW = jnp.maximum(micro_BxW, 0)
    if random_truncation > 0:
      trunc_rng = jax.random.fold_in(micro_rng, _TRUNCATION_STREAM)
      truncated = truncation_mask(micro_BxW, random_truncation, trunc_rng)
      input_mask = truncated if input_mask is None else input_mask & truncated
    if input_mask is not None:
      weights = input_mask[:, input_mask.shape[1] - bucket :]  # a latent at padding: no loss
    logits = model.forward(
      params,
      micro_BxW[:, :-1],
      num_latents,
      bucket,
      input_mask=input_mask,
      rngs={'dropout': micro_rng},
    )
    out = losses.cross_entropy_loss(
      logits, micro_BxW, num_latents, z_loss=z_loss, weights_BxS=weights
    )
    return out.objective, out

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if grad_accum_steps == 1:
    (_, out), grads = grad_fn(state.params, window_BxW, rng)
  else:
    batch, width = window_BxW.shape
    micro_KxBxW = window_BxW.reshape(batch // grad_accum_steps, grad_accum_steps, width)
    micro_KxBxW = micro_KxBxW.swapaxes(0, 1)

    def accumulate(carry, xs):
      micro_BxW, i = xs
      (_, out), grads = grad_fn(state.params, micro_BxW, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, carry, (grads, out)), None

    zeros = jax.tree.map(
      jnp.zeros_like,
      (state.params, jax.eval_shape(lambda: grad_fn(state.params, micro_KxBxW[0], rng)[0][1])),
    )
    (grads, out), _ = jax.lax.scan(accumulate, zeros, (micro_KxBxW, jnp.arange(grad_accum_steps)))
    grads = jax.tree.map(lambda g: g / grad_accum_steps, grads)
    out = jax.tree.map(lambda x: x / grad_accum_steps, out)
    out = out._replace(num_targets=out.num_targets * grad_accum_steps)
  new_state = state.apply_gradients(grads=grads)
  step_metrics = {
    'loss': out.objective,
    'nats': out.nats,
    'bits_per_byte': out.bits,
    'grad_norm': optax.tree.norm(grads),
    'learning_rate': schedule(state.step),
    'target_tokens': out.num_targets,
  }
  return new_state, step_metrics


def bucket_step(
  config: ml_collections.ConfigDict,
  model: LanguageModel,
  bucket: int,
  schedule,
  window: int = 0,
) -> Callable:
  """`train_step` bound to `config`'s model, loss and optimizer settings at latent `bucket`
  (and training `window`, 0 = the whole row): (state, window_BxW, num_latents, base_rng) ->
  (state, metrics). What training, the memory report and the benchmarks all compile."""
  return functools.partial(
    train_step,
    model=model,
    bucket=bucket,
    z_loss=config.train.z_loss,
    grad_accum_steps=config.train.grad_accum_steps,
    schedule=schedule,
    random_truncation=config.train.random_truncation,
    padded_rows=data.rows_have_padding(config.data),
    window=window,
  )
