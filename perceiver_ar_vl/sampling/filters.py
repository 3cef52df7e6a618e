"""Token filtering and drawing: temperature, top-k and top-p, and the seeded draw.

Step t of a sampler draws with `fold_in(PRNGKey(seed), t)`; `draw` takes that step's Gumbel
noise, drawn ahead for a whole compiled call (`gumbel_noise`), so the generator is off the
per-step path while the tokens stay those of `jax.random.categorical`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def check_knobs(temperature, top_k, top_p) -> None:
  """Range checks on whichever of the three are concrete Python/numpy numbers."""
  if isinstance(temperature, (int, float, np.number)) and temperature < 0:
    raise ValueError(f'temperature must be >= 0 (0 means greedy), got {temperature}.')
  if isinstance(top_k, (int, np.integer)) and top_k < 0:
    raise ValueError(f'top_k must be >= 0 (0 means no top-k filter), got {top_k}.')
  if isinstance(top_p, (int, float, np.number)) and not 0 < top_p <= 1:
    raise ValueError(f'top_p must be in (0, 1] (1 means no nucleus filter), got {top_p}.')


def filter_logits(logits_BxV: jax.Array, temperature=1.0, top_k=0, top_p=1.0) -> jax.Array:
  """Logits to sample from: scaled by 1/temperature, -inf outside the kept candidates.

  Args:
    logits_BxV: float logits [..., vocab].
    temperature: > 0 scales the logits; 0 is greedy (only the argmax, the first on ties).
    top_k: keep the k most likely tokens (exactly k; ties broken by index); 0 keeps all.
    top_p: then keep the smallest set of most likely tokens whose probability (after
      temperature and top-k) reaches top_p; 1 keeps all.

  All three may be traced scalars.
  """
  check_knobs(temperature, top_k, top_p)
  logits_BxV = jnp.asarray(logits_BxV, jnp.float32)
  greedy = jnp.asarray(temperature) <= 0
  scaled_BxV = logits_BxV / jnp.where(greedy, 1.0, temperature)
  order_BxV = jnp.argsort(-scaled_BxV, axis=-1)  # token ids, most likely first (stable)
  # rank = the inverse permutation of order (0 for the most likely token), by a scatter: a
  # second argsort would cost as much as the first (a sort is ~25 us per row on the CPU).
  ranks_BxV = jnp.broadcast_to(jnp.arange(order_BxV.shape[-1]), order_BxV.shape)
  rank_BxV = jnp.put_along_axis(
    jnp.zeros_like(order_BxV), order_BxV, ranks_BxV, axis=-1, inplace=False
  )
  keep_BxV = (top_k <= 0) | (rank_BxV < top_k)
  probs_BxV = jax.nn.softmax(jnp.where(keep_BxV, scaled_BxV, -jnp.inf), axis=-1)
  sorted_probs_BxV = jnp.take_along_axis(probs_BxV, order_BxV, axis=-1)
  mass_before_BxV = jnp.cumsum(sorted_probs_BxV, axis=-1) - sorted_probs_BxV
  in_nucleus_BxV = jnp.take_along_axis(mass_before_BxV < top_p, rank_BxV, axis=-1)
  keep_BxV &= in_nucleus_BxV | (top_p >= 1)
  keep_BxV = jnp.where(greedy, rank_BxV == 0, keep_BxV)
  return jnp.where(keep_BxV, scaled_BxV, -jnp.inf)


class Knobs(NamedTuple):
  """Traced sampling settings, so changing them does not recompile."""

  key: jax.Array  # PRNGKey(seed)
  temperature: jax.Array
  top_k: jax.Array
  top_p: jax.Array


def gumbel_noise(knobs: Knobs, steps_S: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """float32 [S, *shape] Gumbel noise of each step in `steps_S`, from fold_in(key, step).

  `jax.random.categorical(key, logits)` is `argmax(gumbel(key, logits.shape) + logits)`;
  drawing the noise of all of a call's steps at once (one vectorised threefry) instead of
  once per step keeps the same tokens and takes the generator off the per-step path.
  """
  noise = lambda step: jax.random.gumbel(jax.random.fold_in(knobs.key, step), shape)
  return jax.vmap(noise)(steps_S)


def draw(logits_BxV: jax.Array, knobs: Knobs, noise_BxV: jax.Array) -> jax.Array:
  """The next token [B] (int32): `jax.random.categorical` of the filtered logits, with the
  step's Gumbel noise given (see `gumbel_noise`).

  Two common settings skip `filter_logits`'s sort (a `lax.switch` on the traced knobs), with
  the same result: greedy (temperature 0: only the first argmax is kept) and plain sampling
  (no top-k / top-p: the logits are only scaled).
  """
  logits_BxV = jnp.asarray(logits_BxV, jnp.float32)
  greedy = knobs.temperature <= 0
  plain = (knobs.top_k <= 0) & (knobs.top_p >= 1)
  vocab = jnp.arange(logits_BxV.shape[-1])
  filtered_BxV = jax.lax.switch(
    jnp.where(greedy, 0, jnp.where(plain, 1, 2)),
    [
      lambda: jnp.where(vocab == jnp.argmax(logits_BxV, -1, keepdims=True), logits_BxV, -jnp.inf),
      lambda: logits_BxV / jnp.where(greedy, 1.0, knobs.temperature),
      lambda: filter_logits(logits_BxV, knobs.temperature, knobs.top_k, knobs.top_p),
    ],
  )
  return jnp.argmax(noise_BxV + filtered_BxV, axis=-1).astype(jnp.int32)
