"""Autoregressive byte sampling from Perceiver AR (cached or not) and the Transformer baseline.

Every step predicts the next byte from the window of the last M = model.max_context bytes,
left-padded with 0 and masked where there is no byte yet (so even a 1-byte prompt works); the
prediction is the logits of the window's last position. (ECP instead uses a segment-aligned
window that jumps by whole segments, `decoding_cache.ecp_origin`, on both paths.) Tokens are
drawn from `filter_logits` (temperature, top-k, top-p) with the key
`fold_in(PRNGKey(seed), step)`.

Latent schedule (Perceiver AR). The original's cached sampler starts with a full forward pass
at n0 = max(1, N // 2) latents, adds one latent per new byte, and when its latent cache holds
N latents and another byte comes, refills it with one full pass at n0 latents over the
current window. Step t therefore runs at `latent_counts(length, N)[t]` latents:
n0, n0+1, ..., N, n0, n0+1, ... BOTH paths follow this schedule (the uncached path reruns the
window at that step's count), so their logits agree wherever the cache is exact.

Paths:
  * uncached (`cached=False`): rerun the model on the window every byte. Works for every
    model and both position encodings (ECP: on its segment-aligned window, below).
  * cached, Perceiver AR (`decoding_cache.PerceiverCache`): keys/values of the
    cross-attend (every window position) and of every latent layer (the latents since the
    last reset). A new byte adds one cross-attend key and sends one query, the new latent,
    through the cross-attend and the latent stack; a reset is one full pass. Exact while
    prompt + generated <= M and at every reset step. Beyond M bytes the latents cached since
    the last reset keep the context they were computed with (the M bytes ending at their own
    position) where the uncached path recomputes them over the slid window: an
    approximation the original makes.
  * cached, Transformer (`decoding_cache.TransformerCache`): a plain KV cache of every layer
    over the window, filled by one full pass at the first step. Exact while prompt +
    generated <= M; beyond M each cached key keeps the context it was computed with (the
    usual sliding KV cache).
  * cached, ECP (`decoding_cache.ECPCache`): per layer the keys/values of the previous and
    the current segment (a ring buffer of 2m slots), each new byte one query through every
    layer. ECP's segments sit at fixed window positions, so a sliding window would move every
    segment boundary each byte and no key could be kept; both ECP paths therefore run on a
    segment-aligned window [origin, origin + M) that starts at the sequence's first byte and,
    when a byte would fall past its end, jumps ahead by whole segments, keeping min(S - 1, L)
    full segments behind the new byte's (L layers: ECP's receptive field). A jump is a full
    pass (reset). The cache is exact at every step, for every ECP option and both position
    encodings: each step's logits are the model's over that step's aligned window, which is
    what the uncached ECP path computes. With rotary positions and separate keys/values the
    aligned windows also equal the unbounded sequence (`decoding_cache.ecp_kept_segments`).
Cached sampling needs rotary (relative) positions: with `position_encoding='absolute'` each
byte's window position, hence its embedding, shifts by one every step, so cached keys go
stale at once; `sample` raises and asks for `cached=False`. (Not for ECP: its aligned window
keeps each byte's window position until the next reset, so its cache serves both encodings.)

One jitted call (`_decode_loop`) runs up to STEPS_PER_CALL steps in a `lax.fori_loop`, with
the window, the cache, the next token and the step index in the loop's carry, and the cache
reset (a full pass) as a `lax.cond` inside the loop. Shapes are static (fixed cache
capacities; the step count, context length and latent count are traced), so it compiles once
per model, path and batch size, and serves every length, seed and filter setting. A cached
step on the CPU is bound by the number of XLA operations rather than FLOPs, so the step
avoids the ones it can: window caches are ring buffers (a new byte writes one slot instead
of shifting the buffer), caches are stored heads-major [B, H, T, K] (no per-step
transposes), a call's Gumbel noise is drawn ahead in one vectorised call, and a draw without
top-k / top-p skips the sorts. (`benchmarks/step_time.py` measures cached against uncached.)
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from perceiver_ar_vl import decoding_cache, models

Model = models.PerceiverAR | models.Transformer | models.ECP


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


# ------------------------------------------------------------------ token filtering


def _check_knobs(temperature, top_k, top_p) -> None:
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
  _check_knobs(temperature, top_k, top_p)
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


class _Knobs(NamedTuple):
  """Traced sampling settings, so changing them does not recompile."""

  key: jax.Array  # PRNGKey(seed)
  temperature: jax.Array
  top_k: jax.Array
  top_p: jax.Array


def _gumbel_noise(knobs: _Knobs, steps_S: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """float32 [S, *shape] Gumbel noise of each step in `steps_S`, from fold_in(key, step).

  `jax.random.categorical(key, logits)` is `argmax(gumbel(key, logits.shape) + logits)`;
  drawing the noise of all of a call's steps at once (one vectorised threefry) instead of
  once per step keeps the same tokens and takes the generator off the per-step path.
  """
  noise = lambda step: jax.random.gumbel(jax.random.fold_in(knobs.key, step), shape)
  return jax.vmap(noise)(steps_S)


def _draw(logits_BxV: jax.Array, knobs: _Knobs, noise_BxV: jax.Array) -> jax.Array:
  """The next token [B] (int32): `jax.random.categorical` of the filtered logits, with the
  step's Gumbel noise given (see `_gumbel_noise`).

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


# ------------------------------------------------------------------ the compiled loop

# Steps per jitted call: the loop's output buffers hold this many steps, so one compiled
# program serves every `length` (a call may run fewer steps; the loop count is traced).
STEPS_PER_CALL = 256


class _LoopState(NamedTuple):
  """What one decode step hands to the next (and one jitted call to the next).

  window_BxM: int32 [B, M], the last M bytes before `token_B` (left-padded with 0).
  token_B: int32 [B], the byte that the next step appends (the last prompt byte at step 0).
  cache: a `decoding_cache.PerceiverCache`, `TransformerCache` or `ECPCache`; None on the
    uncached path.
  step: int32 scalar, the index of the next step (its PRNG fold-in and latent count).
  context_len: int32 scalar, the number of bytes once `token_B` is appended.
  """

  window_BxM: jax.Array
  token_B: jax.Array
  cache: (
    decoding_cache.PerceiverCache | decoding_cache.TransformerCache | decoding_cache.ECPCache | None
  )
  step: jax.Array
  context_len: jax.Array


def _uncached_logits(model, variables, window_BxM, context_len, num_latents, bucket: int):
  """Reruns the model on the left-padded window; logits [B, vocab] of its last position (ECP:
  of the last byte in its segment-aligned window, `decoding_cache.ecp_window_logits`)."""
  if isinstance(model, models.ECP):
    return decoding_cache.ecp_window_logits(model, variables, window_BxM, context_len)[0]
  batch, window = window_BxM.shape
  valid_BxM = decoding_cache.window_indices(context_len, batch, window) >= 0
  if isinstance(model, models.PerceiverAR):
    logits_BxSxV = model.apply(
      variables, window_BxM, num_latents, bucket=bucket, input_mask=valid_BxM
    )
  else:
    logits_BxSxV = model.apply(variables, window_BxM, input_mask=valid_BxM)
  return logits_BxSxV[:, -1]


def _reset(model, max_latents: int, variables, window_BxM, context_len):
  """A full pass that fills a new cache: (logits [B, vocab] float32, cache)."""
  if isinstance(model, models.PerceiverAR):
    logits_BxV, cache = decoding_cache.perceiver_prefill(
      model, variables, window_BxM, context_len, reset_latents(max_latents), max_latents
    )
  elif isinstance(model, models.ECP):
    logits_BxV, cache = decoding_cache.ecp_prefill(model, variables, window_BxM, context_len)
  else:
    logits_BxV, cache = decoding_cache.transformer_prefill(
      model, variables, window_BxM, context_len
    )
  return logits_BxV.astype(jnp.float32), cache


def _extend(model, variables, cache, token_B, context_len, num_latents):
  """One new position through the cache: (logits [B, vocab] float32, cache)."""
  if isinstance(model, models.PerceiverAR):
    logits_BxV, cache = model.apply(
      variables, cache, token_B, context_len, num_latents, method=decoding_cache.perceiver_extend
    )
  else:
    extend = decoding_cache.transformer_extend
    if isinstance(model, models.ECP):
      extend = decoding_cache.ecp_extend
    logits_BxV, cache = model.apply(variables, cache, token_B, context_len, method=extend)
  return logits_BxV.astype(jnp.float32), cache


def _decode(
  model,
  cached: bool,
  max_latents: int,
  variables,
  state: _LoopState,
  knobs: _Knobs,
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
  window_BxM = decoding_cache.shift_in(state.window_BxM, state.token_B[:, None])
  n0 = reset_latents(max_latents)
  num_latents = n0 + state.step % (max_latents - n0 + 1)
  cache = state.cache
  if not cached:
    logits_BxV = _uncached_logits(
      model, variables, window_BxM, state.context_len, num_latents, max_latents
    ).astype(jnp.float32)
  else:
    is_reset = state.step == 0
    if isinstance(model, models.PerceiverAR):
      is_reset = num_latents == n0
    elif isinstance(model, models.ECP):
      is_reset |= decoding_cache.ecp_origin(model, state.context_len) != cache.origin
    logits_BxV, cache = jax.lax.cond(
      is_reset,
      lambda: _reset(model, max_latents, variables, window_BxM, state.context_len),
      lambda: _extend(model, variables, cache, state.token_B, state.context_len, num_latents),
    )
  token_B = _draw(logits_BxV, knobs, noise_BxV)
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
  knobs: _Knobs,
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
  noise_SxBxV = _gumbel_noise(knobs, steps_S, (batch, model.vocab_size))

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
  if not isinstance(model, (models.PerceiverAR, models.Transformer, models.ECP)):
    raise TypeError(f'Can sample from PerceiverAR, Transformer or ECP, got {type(model).__name__}.')
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
  if cached and model.position_encoding != 'rotary' and not isinstance(model, models.ECP):
    raise ValueError(
      f"Cached sampling needs position_encoding='rotary'; with "
      f"{model.position_encoding!r} every byte's window position changes each step, so "
      'cached keys/values go stale. Pass cached=False.'
    )


def sample(
  model: Model,
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
    model: a `models.PerceiverAR`, `models.Transformer` or `models.ECP`.
    variables: the model's variables ({'params': ...}).
    prompt_BxP: int array [batch, P >= 1]; rows share P. Only its last M bytes are seen
      (ECP: those in its segment-aligned window, `decoding_cache.ecp_origin`).
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
  _check_knobs(temperature, top_k, top_p)
  knobs = _Knobs(
    jax.random.PRNGKey(seed),
    jnp.float32(temperature),
    jnp.int32(top_k),
    jnp.float32(top_p),
  )
  window_BxM = jnp.asarray(decoding_cache.left_padded_window(prompt_BxP[:, :-1], model.max_context))
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


def generate_text(
  model: Model, variables, prompt: str, *, length: int, num_latents: int, **kwargs
) -> str:
  """Samples `length` bytes after the UTF-8 bytes of `prompt`; returns them decoded.

  Invalid UTF-8 (e.g. a character cut at the end) decodes as U+FFFD. `kwargs` go to `sample`
  (all but `return_logits`).
  """
  if kwargs.get('return_logits'):
    raise ValueError('generate_text returns text only; call sample(..., return_logits=True).')
  prompt_1xP = np.frombuffer(prompt.encode('utf-8'), np.uint8).astype(np.int32)[None]
  tokens_1xL = sample(
    model, variables, prompt_1xP, length=length, num_latents=num_latents, **kwargs
  )
  return bytes(tokens_1xL[0].astype(np.uint8).tolist()).decode('utf-8', errors='replace')


def sample_from_workdir(config, workdir: str) -> str:
  """Restores `workdir`'s checkpoint (`eval.checkpoint_step`) and samples `config.sample`.

  Returns the prompt followed by the generated text.
  """
  from perceiver_ar_vl import state  # noqa: PLC0415 (state imports the model zoo)

  s = config.sample
  model, variables, _ = state.restore_params(config, workdir, config.eval.checkpoint_step)
  text = generate_text(
    model,
    variables,
    s.prompt,
    length=s.length,
    num_latents=s.num_latents or config.latents.max,
    temperature=s.temperature,
    top_k=s.top_k,
    top_p=s.top_p,
    seed=s.seed,
    cached=s.cached,
  )
  return s.prompt + text
