"""Autoregressive byte sampling from any model, through its decoding cache or not.

Every step predicts the next byte from the window of the last M = model.max_context bytes,
left-padded with 0 and masked where there is no byte yet (so even a 1-byte prompt works); the
prediction is the logits of the window's last position (ECP instead uses a segment-aligned
window that jumps by whole segments, on both paths: `models/ecp_cache.py`). Tokens are drawn
from `filters.filter_logits` (temperature, top-k, top-p) with `fold_in(PRNGKey(seed), step)`.

Latent schedule. The original's cached sampler starts with a full forward pass at
n0 = max(1, N // 2) latents, adds one latent per new byte, and when its latent cache holds
N latents and another byte comes, refills it with one full pass at n0 latents over the
current window. Step t therefore runs at `latent_counts(length, N)[t]` latents:
n0, n0+1, ..., N, n0, n0+1, ... BOTH paths follow this schedule (the uncached path reruns the
window at that step's count), so their logits agree wherever the cache is exact. Models that
score every position ignore the count.

Paths, each reached only through the model interface (`models.LanguageModel`):
  * uncached (`cached=False`): `model.uncached_logits` reruns the window every byte. Works for
    every model and both position encodings.
  * cached: `model.prefill` fills the model's cache with one full pass where
    `model.needs_prefill` says so (Perceiver AR: the latent schedule is back at n0;
    Transformer: the first step; ECP: the first step and each jump of its aligned window),
    and `model.extend` sends each other byte through it as one query. Perceiver AR's and the
    Transformer's caches are exact while prompt + generated <= M and at every reset; beyond
    M each cached key keeps the context it was computed with (the original's approximation,
    and the usual sliding KV cache). ECP's is exact at every step. A model says when its
    cache cannot serve (`model.cached_sampling_error`: absolute positions shift every step,
    except in ECP's aligned window); `sample` then asks for `cached=False`.

One jitted call (`_decode_loop`) runs up to STEPS_PER_CALL steps in a `lax.fori_loop`, with
the window, the cache, the next token and the step index in the loop's carry, and the cache
reset (a full pass) as a `lax.cond` inside the loop. Shapes are static (fixed cache
capacities; the step count, context length and latent count are traced), so it compiles once
per model, path and batch size, and serves every length, seed and filter setting. A cached
step on the CPU is bound by the number of XLA operations rather than FLOPs, so the step
avoids the ones it can: window caches are ring buffers, caches are stored heads-major, a
call's Gumbel noise is drawn ahead in one vectorised call, and a draw without top-k / top-p
skips the sorts. (`benchmarks/step_time.py` measures cached against uncached.)
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from perceiver_ar_vl.models.base import LanguageModel
from perceiver_ar_vl.sampling.filters import Knobs, check_knobs, draw, gumbel_noise

# ------------------------------------------------------------------ the latent schedule


def reset_latents(num_latents: int) -> int:
  """n0 = max(1, N // 2): the latent count of a full pass (start and every cache reset)."""
  return max(1, num_latents // 2)


def latent_counts(length: int, num_latents: int) -> np.ndarray:
  """Latent count at each of `length` steps: n0, n0+1, ..., N, then back to n0, ...

  Step t of both paths runs at this count; a step at n0 is a full pass (cache reset).
  """
  n0 = reset_latents(num_latents)
  return n0 + np.arange(length) % (num_latents - n0 + 1)


# ------------------------------------------------------------------ the window


def left_padded_window(tokens_BxT: np.ndarray, window: int) -> np.ndarray:
  """The last `window` tokens [B, window], left-padded with 0 when there are fewer."""
  tail_BxS = tokens_BxT[:, max(0, tokens_BxT.shape[1] - window) :]
  out_BxW = np.zeros((tokens_BxT.shape[0], window), np.int32)
  out_BxW[:, window - tail_BxS.shape[1] :] = tail_BxS
  return out_BxW


def shift_in(buffer_BxTx_: jax.Array, new_Bx1x_: jax.Array) -> jax.Array:
  """Drops the oldest slot of a [B, T, ...] buffer and appends `new` [B, 1, ...] at the end."""
  return jnp.concatenate([buffer_BxTx_[:, 1:], new_Bx1x_.astype(buffer_BxTx_.dtype)], axis=1)


# ------------------------------------------------------------------ the compiled loop

# Steps per jitted call: the loop's output buffers hold this many steps, so one compiled
# program serves every `length` (a call may run fewer steps; the loop count is traced).
STEPS_PER_CALL = 256


class _LoopState(NamedTuple):
  """What one decode step hands to the next (and one jitted call to the next).

  window_BxM: int32 [B, M], the last M bytes before `token_B` (left-padded with 0).
  token_B: int32 [B], the byte that the next step appends (the last prompt byte at step 0).
  cache: the model's decoding cache (what `model.prefill` returns); None uncached.
  step: int32 scalar, the index of the next step (its PRNG fold-in and latent count).
  context_len: int32 scalar, the number of bytes once `token_B` is appended.
  """

  window_BxM: jax.Array
  token_B: jax.Array
  cache: Any
  step: jax.Array
  context_len: jax.Array


def _reset(model: LanguageModel, max_latents: int, variables, window_BxM, context_len):
  """A full pass that fills a new cache: (logits [B, vocab] float32, cache)."""
  logits_BxV, cache = model.prefill(
    variables, window_BxM, context_len, reset_latents(max_latents), max_latents
  )
  return logits_BxV.astype(jnp.float32), cache


def _decode(
  model,
  cached: bool,
  max_latents: int,
  variables,
  state: _LoopState,
  knobs: Knobs,
  noise_BxV: jax.Array,
):
  """One step: appends `state.token_B`, predicts the next byte and draws it.

  The step's latent count is `latent_counts` at `state.step` (Perceiver AR). On the cached
  path the step is a full pass that refills the cache where the schedule says so (Perceiver
  AR: the count is back at n0; Transformer: step 0; ECP: step 0 and each jump of the aligned
  window), else one position through the cache;
  `lax.cond` runs only the branch taken. `noise_BxV` is the step's Gumbel noise.
  Returns (next state, logits [B, vocab]).
  """
  window_BxM = shift_in(state.window_BxM, state.token_B[:, None])
  n0 = reset_latents(max_latents)
  num_latents = n0 + state.step % (max_latents - n0 + 1)
  cache = state.cache
  if not cached:
    logits_BxV = model.uncached_logits(
      variables, window_BxM, state.context_len, num_latents, max_latents
    ).astype(jnp.float32)
  else:

    def extend():
      logits_BxV, new_cache = model.extend(
        variables, cache, state.token_B, state.context_len, num_latents
      )
      return logits_BxV.astype(jnp.float32), new_cache

    logits_BxV, cache = jax.lax.cond(
      model.needs_prefill(cache, state.step, state.context_len, num_latents == n0),
      lambda: _reset(model, max_latents, variables, window_BxM, state.context_len),
      extend,
    )
  token_B = draw(logits_BxV, knobs, noise_BxV)
  next_state = _LoopState(window_BxM, token_B, cache, state.step + 1, state.context_len + 1)
  return next_state, logits_BxV


@functools.partial(jax.jit, static_argnames=('model', 'cached', 'max_latents', 'keep_logits'))
def _decode_loop(
  model,
  cached: bool,
  max_latents: int,
  keep_logits: bool,
  variables,
  state: _LoopState,
  num_steps,
  knobs: Knobs,
):
  """Runs `num_steps` (traced, <= STEPS_PER_CALL) steps of `_decode` in one `lax.fori_loop`.

  Args:
    model, max_latents: static; max_latents is the sampler's N (bucket and cache capacity).
    cached: static; False reruns the window every step.
    keep_logits: static; also collect every step's logits.
    num_steps: traced, so every call count shares one compiled program.

  Returns:
    (state after the steps, int32 tokens [B, STEPS_PER_CALL], float32 logits
    [B, STEPS_PER_CALL, vocab] or None); only the first `num_steps` columns are written.
  """
  batch = state.token_B.shape[0]
  tokens_BxS = jnp.zeros((batch, STEPS_PER_CALL), jnp.int32)
  logits_BxSxV = None
  if keep_logits:
    logits_BxSxV = jnp.zeros((batch, STEPS_PER_CALL, model.vocab_size), jnp.float32)
  steps_S = state.step + jnp.arange(STEPS_PER_CALL)
  noise_SxBxV = gumbel_noise(knobs, steps_S, (batch, model.vocab_size))

  def body(i, carry):
    state, tokens_BxS, logits_BxSxV = carry
    state, step_logits_BxV = _decode(
      model, cached, max_latents, variables, state, knobs, noise_SxBxV[i]
    )
    tokens_BxS = jax.lax.dynamic_update_index_in_dim(tokens_BxS, state.token_B, i, axis=1)
    if keep_logits:
      logits_BxSxV = jax.lax.dynamic_update_index_in_dim(logits_BxSxV, step_logits_BxV, i, axis=1)
    return state, tokens_BxS, logits_BxSxV

  state, tokens_BxS, logits_BxSxV = jax.lax.fori_loop(
    0, num_steps, body, (state, tokens_BxS, logits_BxSxV)
  )
  return state, tokens_BxS, logits_BxSxV


@functools.partial(jax.jit, static_argnames=('model', 'max_latents'))
def _empty_cache(model, max_latents: int, variables, window_BxM):
  """A zero cache of the shapes and dtypes that `_reset` makes (the loop's first carry)."""
  shapes = jax.eval_shape(
    lambda: _reset(model, max_latents, variables, window_BxM, jnp.int32(0))[1]
  )
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


# ------------------------------------------------------------------ public API


def _check_arguments(model, prompt_BxP: np.ndarray, length: int, num_latents: int, cached: bool):
  if not isinstance(model, LanguageModel):
    raise TypeError(f'Can sample from a models.LanguageModel, got {type(model).__name__}.')
  if prompt_BxP.ndim != 2 or not np.issubdtype(prompt_BxP.dtype, np.integer):
    raise ValueError(
      f'prompt must be an integer array [batch, length], got {prompt_BxP.dtype} {prompt_BxP.shape}.'
    )
  if prompt_BxP.shape[1] == 0:
    raise ValueError('The prompt is empty: give at least one byte to start from.')
  if prompt_BxP.shape[0] == 0:
    raise ValueError('The prompt has batch size 0: give at least one row.')
  if prompt_BxP.min() < 0 or prompt_BxP.max() >= model.vocab_size:
    raise ValueError(f'Prompt tokens must lie in [0, {model.vocab_size}).')
  if length < 1:
    raise ValueError(f'length must be >= 1 (the number of bytes to generate), got {length}.')
  if not 1 <= num_latents <= model.max_context:
    raise ValueError(
      f'num_latents must be between 1 and the window model.max_context={model.max_context}, '
      f'got {num_latents}.'
    )
  if cached and model.cached_sampling_error():
    raise ValueError(model.cached_sampling_error())


def sample(
  model: LanguageModel,
  variables,
  prompt_BxP: np.ndarray,
  *,
  length: int,
  num_latents: int,
  temperature: float = 1.0,
  top_k: int = 0,
  top_p: float = 1.0,
  seed: int = 0,
  cached: bool = True,
  return_logits: bool = False,
):
  """Generates `length` bytes after each row of the prompt.

  Args:
    model: any `models.LanguageModel` (PerceiverAR, Transformer, ECP).
    variables: the model's variables ({'params': ...}).
    prompt_BxP: int array [batch, P >= 1]; rows share P. Only its last M bytes are seen
      (ECP: those in its segment-aligned window, `models/ecp_cache.py`).
    length: bytes to generate (>= 1).
    num_latents: N, the most latents a step uses (1..M); steps follow `latent_counts`.
      The Transformer ignores it (every position is a query) but it is still checked.
    temperature, top_k, top_p: see `filter_logits`; temperature 0 is greedy.
    seed: step t draws with jax.random.fold_in(jax.random.PRNGKey(seed), t).
    cached: keep keys/values between steps (see the module docstring) instead of rerunning
      the whole window each byte. Needs rotary positions, except for ECP (whose cache
      follows its segment-aligned window and is exact on both paths).
    return_logits: also return the model's (unfiltered) logits of each step.

  Returns:
    int32 [B, length] generated tokens, and with `return_logits` also float32
    [B, length, vocab], the logits each token was drawn from (before filtering).
  """
  prompt_BxP = np.asarray(prompt_BxP)
  _check_arguments(model, prompt_BxP, length, num_latents, cached)
  check_knobs(temperature, top_k, top_p)
  knobs = Knobs(
    jax.random.PRNGKey(seed),
    jnp.float32(temperature),
    jnp.int32(top_k),
    jnp.float32(top_p),
  )
  window_BxM = jnp.asarray(left_padded_window(prompt_BxP[:, :-1], model.max_context))
  state = _LoopState(
    window_BxM,
    jnp.asarray(prompt_BxP[:, -1], jnp.int32),  # step 0 appends the last prompt byte
    _empty_cache(model, num_latents, variables, window_BxM) if cached else None,
    jnp.int32(0),
    jnp.int32(prompt_BxP.shape[1]),
  )
  chunks = []  # (steps, tokens, logits) per call; read back once all calls are queued
  for start in range(0, length, STEPS_PER_CALL):
    steps = min(STEPS_PER_CALL, length - start)
    state, tokens_BxS, logits_BxSxV = _decode_loop(
      model, cached, num_latents, return_logits, variables, state, jnp.int32(steps), knobs
    )
    chunks.append((steps, tokens_BxS, logits_BxSxV))
  tokens_BxL = np.concatenate([np.asarray(t)[:, :n] for n, t, _ in chunks], axis=1)
  if return_logits:
    return tokens_BxL, np.concatenate([np.asarray(x)[:, :n] for n, _, x in chunks], axis=1)
  return tokens_BxL
