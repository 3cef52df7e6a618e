"""Pins perceiver_ar_vl/sampling (decode.py, filters.py, text.py): cached == uncached, the
model itself, filters, seeds."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TINY_MODEL, TINY_WINDOW

from perceiver_ar_vl import models, sampling
from perceiver_ar_vl.sampling import decode, filters

M = TINY_WINDOW
TINY = TINY_MODEL


def random_variables(model, seed):
  """Random variables of the model's shapes (no init compile): LayerNorm scales near 1, every
  other parameter N(0, 0.1^2), so that the (otherwise zero) head gives informative logits."""
  shapes = jax.eval_shape(model.init_variables, jax.random.PRNGKey(0))
  rng = np.random.default_rng(seed)

  def leaf(path, shape_dtype):
    noise = rng.standard_normal(shape_dtype.shape).astype(np.float32)
    return jnp.asarray(1 + 0.05 * noise if path[-1].key == 'scale' else 0.1 * noise)

  return jax.tree_util.tree_map_with_path(leaf, shapes)


@pytest.fixture(scope='module')
def perceiver():
  model = models.PerceiverAR(**TINY)
  return model, random_variables(model, 3)


@pytest.fixture(scope='module')
def transformer():
  model = models.Transformer(**TINY)
  return model, random_variables(model, 4)


@functools.partial(jax.jit, static_argnames='model')
def model_last_logits(model, variables, window_BxM, mask_BxM, num_latents):
  """The model's forward pass on a window (Perceiver AR at bucket M, so not the sampler's
  bucket N)."""
  return model.forward(variables, window_BxM, num_latents, M, input_mask=mask_BxM)[:, -1]


def left_padded(tokens_BxT):
  """The last M tokens, left-padded with 0, and the mask of real tokens."""
  window = np.zeros((tokens_BxT.shape[0], M), np.int32)
  tail = tokens_BxT[:, -M:]
  window[:, M - tail.shape[1] :] = tail
  mask = np.zeros_like(window, bool)
  mask[:, M - tail.shape[1] :] = True
  return jnp.asarray(window), jnp.asarray(mask)


def model_logits_at(model, variables, sequence_BxT, context_len, num_latents=0):
  """The model's next-token logits [B, vocab] after the first `context_len` tokens."""
  window, mask = left_padded(sequence_BxT[:, :context_len])
  return np.asarray(model_last_logits(model, variables, window, mask, num_latents))


def prompt(seed, batch=2, length=10):
  return np.random.default_rng(seed).integers(0, 256, (batch, length)).astype(np.int32)


def both_paths(model, variables, prompt_BxP, **kwargs):
  cached = sampling.sample(model, variables, prompt_BxP, cached=True, return_logits=True, **kwargs)
  uncached = sampling.sample(
    model, variables, prompt_BxP, cached=False, return_logits=True, **kwargs
  )
  return cached, uncached


def test_latent_counts_cycle_from_half_to_full():
  np.testing.assert_array_equal(sampling.latent_counts(12, 8), [4, 5, 6, 7, 8] * 2 + [4, 5])
  np.testing.assert_array_equal(sampling.latent_counts(3, 1), [1, 1, 1])
  np.testing.assert_array_equal(sampling.latent_counts(4, 3), [1, 2, 3, 1])


@pytest.mark.parametrize('prompt_len', [10, 3, 1])
def test_cached_matches_uncached_across_resets(perceiver, prompt_len):
  """N=8: full passes at steps 0, 5, 10, 15; total length <= M, so the cache is exact.
  Prompts of 3 and 1 bytes are shorter than n0 = 4 (latents at padded positions)."""
  model, variables = perceiver
  (tok_c, log_c), (tok_u, log_u) = both_paths(
    model, variables, prompt(0, length=prompt_len), length=20, num_latents=8, seed=1
  )
  assert prompt_len + 20 <= M and log_c.shape == (2, 20, 256)
  np.testing.assert_allclose(log_c, log_u, atol=1e-4, rtol=1e-4)
  np.testing.assert_array_equal(tok_c, tok_u)
  # Informative logits, and steps that really differ from each other.
  assert np.abs(log_u[:, 1:] - log_u[:, :-1]).max() > 1e-2


def test_cached_is_exact_within_the_window_and_at_resets_beyond(perceiver):
  """Past M bytes the extend steps approximate (documented); full passes stay exact."""
  model, variables = perceiver
  p = prompt(1, length=40)
  tokens, logits = sampling.sample(
    model, variables, p, length=30, num_latents=8, cached=True, return_logits=True
  )
  sequence = np.concatenate([p, tokens], axis=1)
  counts = sampling.latent_counts(30, 8)
  for step in range(30):
    context_len = p.shape[1] + step
    want = model_logits_at(model, variables, sequence, context_len, int(counts[step]))
    exact = context_len <= M or counts[step] == 4
    np.testing.assert_allclose(logits[:, step], want, atol=1e-4 if exact else 0.5, rtol=0)


def test_one_latent_resets_every_step(perceiver):
  model, variables = perceiver
  (tok_c, log_c), (tok_u, log_u) = both_paths(
    model, variables, prompt(2, length=5), length=6, num_latents=1, seed=3
  )
  np.testing.assert_allclose(log_c, log_u, atol=1e-4, rtol=1e-4)
  np.testing.assert_array_equal(tok_c, tok_u)


def test_uncached_logits_equal_the_model_on_the_window(perceiver):
  """Pins the uncached path (window, padding, mask, latent count) against model.apply."""
  model, variables = perceiver
  p = prompt(3, length=30)
  length, n = 25, 8  # the last steps slide the window past M
  tokens, logits = sampling.sample(
    model, variables, p, length=length, num_latents=n, cached=False, return_logits=True
  )
  counts = sampling.latent_counts(length, n)
  sequence = np.concatenate([p, tokens], axis=1)
  for step in (0, 2, 3, 17, 24):
    want = model_logits_at(model, variables, sequence, p.shape[1] + step, int(counts[step]))
    np.testing.assert_allclose(logits[:, step], want, atol=1e-5, rtol=1e-5)


def test_transformer_sampling_cached_and_uncached(transformer):
  model, variables = transformer
  p = prompt(4, length=7)
  (tok_c, log_c), (tok_u, log_u) = both_paths(model, variables, p, length=12, num_latents=8, seed=5)
  np.testing.assert_allclose(log_c, log_u, atol=1e-4, rtol=1e-4)
  np.testing.assert_array_equal(tok_c, tok_u)
  sequence = np.concatenate([p, tok_u], axis=1)
  for step in (0, 5, 11):
    want = model_logits_at(model, variables, sequence, p.shape[1] + step)
    np.testing.assert_allclose(log_u[:, step], want, atol=1e-5, rtol=1e-5)


def test_seed_determines_the_sample(perceiver):
  model, variables = perceiver
  run = lambda seed: sampling.sample(
    model, variables, prompt(5), length=16, num_latents=8, seed=seed, temperature=1.0
  )
  np.testing.assert_array_equal(run(7), run(7))
  assert not np.array_equal(run(7), run(8))


def test_greedy_takes_the_argmax_of_each_step(perceiver):
  model, variables = perceiver
  tokens, logits = sampling.sample(
    model, variables, prompt(6), length=10, num_latents=8, temperature=0.0, return_logits=True
  )
  np.testing.assert_array_equal(tokens, logits.argmax(-1))
  # And greedy does not depend on the seed.
  again = sampling.sample(
    model, variables, prompt(6), length=10, num_latents=8, temperature=0.0, seed=99
  )
  np.testing.assert_array_equal(tokens, again)


@pytest.mark.parametrize('temperature,top_k,top_p', [(1.0, 0, 1.0), (0.7, 20, 0.9), (0.0, 0, 1.0)])
def test_draw_is_jax_categorical_of_the_filtered_logits(temperature, top_k, top_p):
  """The loop draws each step's Gumbel noise ahead, for a whole call at once; the tokens are
  still jax.random.categorical(fold_in(PRNGKey(seed), step), filter_logits(logits))."""
  knobs = filters.Knobs(
    jax.random.PRNGKey(5), jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p)
  )
  logits_BxV = 3 * jax.random.normal(jax.random.PRNGKey(2), (3, 256))
  steps_S = jnp.arange(7, 47)

  @jax.jit
  def both(logits_BxV):
    noise_SxBxV = filters.gumbel_noise(knobs, steps_S, logits_BxV.shape)
    got_SxB = jax.vmap(lambda noise: filters.draw(logits_BxV, knobs, noise))(noise_SxBxV)
    filtered_BxV = sampling.filter_logits(logits_BxV, temperature, top_k, top_p)
    draw = lambda step: jax.random.categorical(jax.random.fold_in(knobs.key, step), filtered_BxV)
    return got_SxB, jax.vmap(draw)(steps_S)

  got_SxB, want_SxB = both(logits_BxV)
  np.testing.assert_array_equal(got_SxB, want_SxB)
  assert len(np.unique(got_SxB)) > (1 if temperature else 0)


def test_top_k_keeps_exactly_the_k_largest():
  logits = jax.random.normal(jax.random.PRNGKey(0), (3, 256))
  for k in (1, 5, 40):
    out = np.asarray(sampling.filter_logits(logits, 1.0, k, 1.0))
    kept = np.isfinite(out)
    assert np.all(kept.sum(-1) == k)
    top = np.argsort(-np.asarray(logits), axis=-1)[:, :k]
    assert np.all(np.take_along_axis(kept, top, axis=-1))
  out = np.asarray(sampling.filter_logits(logits, 2.0, 0, 1.0))
  np.testing.assert_allclose(out, np.asarray(logits) / 2.0, rtol=1e-6)
  ties = jnp.asarray([[0.0, 1.0, 1.0, 1.0, -1.0]])  # ties go to the lower token id
  for k, want in ((2, {1, 2}), (3, {1, 2, 3}), (4, {0, 1, 2, 3})):
    assert set(np.flatnonzero(np.isfinite(sampling.filter_logits(ties, 1.0, k, 1.0)[0]))) == want


def test_top_p_keeps_the_smallest_nucleus():
  probs = np.array([[0.05, 0.5, 0.15, 0.3]])
  logits = jnp.log(jnp.asarray(probs, jnp.float32))
  for top_p, want in ((0.4, {1}), (0.75, {1, 3}), (0.85, {1, 3, 2}), (1.0, {0, 1, 2, 3})):
    out = np.asarray(sampling.filter_logits(logits, 1.0, 0, top_p))
    assert set(np.flatnonzero(np.isfinite(out[0]))) == want, top_p
  # top-p applies to the distribution left by top-k: 0.5/(0.5+0.3) = 0.625 < 0.7.
  out = np.asarray(sampling.filter_logits(logits, 1.0, 2, 0.7))
  assert set(np.flatnonzero(np.isfinite(out[0]))) == {1, 3}


def test_temperature_zero_is_argmax():
  logits = jax.random.normal(jax.random.PRNGKey(1), (4, 256))
  out = np.asarray(sampling.filter_logits(logits, 0.0, 0, 1.0))
  assert np.all(np.isfinite(out).sum(-1) == 1)
  np.testing.assert_array_equal(out.argmax(-1), np.asarray(logits).argmax(-1))


def test_generate_text_decodes_the_sampled_bytes(perceiver):
  model, variables = perceiver
  text = sampling.generate_text(model, variables, 'héllo', length=12, num_latents=8, seed=2)
  tokens = sampling.sample(
    model,
    variables,
    np.frombuffer('héllo'.encode(), np.uint8)[None].astype(np.int32),
    length=12,
    num_latents=8,
    seed=2,
  )
  assert isinstance(text, str)
  assert text == bytes(tokens[0].astype(np.uint8).tolist()).decode('utf-8', errors='replace')


def test_steps_compile_once(perceiver):
  """Different lengths, seeds and sampling settings reuse the compiled steps."""
  model, variables = perceiver
  kwargs = dict(num_latents=8, cached=True)
  sampling.sample(model, variables, prompt(7), length=12, **kwargs)
  events = []
  listener = lambda name, *args, **kwargs: events.append(name) if 'compil' in name else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  jax.monitoring.register_event_listener(listener)
  try:
    sampling.sample(
      model, variables, prompt(8), length=17, seed=4, temperature=0.7, top_k=9, top_p=0.9, **kwargs
    )
    assert events == []
    jax.jit(lambda x: x * 3)(jnp.arange(3.0))  # a new program: the listener does see it
    assert any('jaxpr_trace' in e for e in events), events
  finally:  # only this test's listener: others (JAX's, a profiler's) stay registered
    jax.monitoring.unregister_event_duration_listener(listener)
    jax.monitoring.unregister_event_listener(listener)


@pytest.mark.parametrize('cached', [True, False])
def test_a_sample_split_over_several_calls_is_the_same(perceiver, monkeypatch, cached):
  """`sample` carries the window, cache, token and step from one compiled call to the next:
  3 calls of at most 7 steps give what one call gives (resets at steps 0, 5, 10, 15, 20)."""
  model, variables = perceiver
  kwargs = dict(length=20, num_latents=8, cached=cached, seed=4, return_logits=True)
  tokens, logits = sampling.sample(model, variables, prompt(11), **kwargs)
  monkeypatch.setattr(decode, 'STEPS_PER_CALL', 7)
  split_tokens, split_logits = sampling.sample(model, variables, prompt(11), **kwargs)
  np.testing.assert_array_equal(split_tokens, tokens)
  np.testing.assert_allclose(split_logits, logits, atol=1e-6, rtol=0)


def test_absolute_positions_sample_uncached_only():
  model = models.PerceiverAR(**TINY, position_encoding='absolute')
  variables = random_variables(model, 5)
  p = prompt(9, length=5)
  tokens, logits = sampling.sample(
    model, variables, p, length=7, num_latents=8, cached=False, return_logits=True
  )
  counts = sampling.latent_counts(7, 8)
  sequence = np.concatenate([p, tokens], axis=1)
  for step in (0, 6):
    want = model_logits_at(model, variables, sequence, p.shape[1] + step, int(counts[step]))
    np.testing.assert_allclose(logits[:, step], want, atol=1e-5, rtol=1e-5)
  with pytest.raises(ValueError, match='cached=False'):
    sampling.sample(model, variables, p, length=4, num_latents=8, cached=True)


@pytest.mark.parametrize(
  'kwargs,match',
  [
    (dict(num_latents=0), 'num_latents must be between 1'),
    (dict(num_latents=M + 1), 'num_latents must be between 1'),
    (dict(length=0), 'length must be >= 1'),
    (dict(prompt_BxP=np.zeros((2, 0), np.int32)), 'prompt is empty'),
    (dict(prompt_BxP=np.zeros((5,), np.int32)), r'\[batch, length\]'),
    (dict(prompt_BxP=np.full((1, 3), 256, np.int32)), r'\[0, 256\)'),
    (dict(temperature=-1.0), 'temperature must be >= 0'),
    (dict(top_k=-2), 'top_k must be >= 0'),
    (dict(top_p=0.0), r'top_p must be in \(0, 1\]'),
  ],
)
def test_bad_arguments_are_clear_errors(perceiver, kwargs, match):
  model, variables = perceiver
  args = dict(prompt_BxP=prompt(10), length=4, num_latents=4) | kwargs
  with pytest.raises(ValueError, match=match):
    sampling.sample(model, variables, args.pop('prompt_BxP'), **args)


def test_empty_text_prompt_is_a_clear_error(perceiver):
  model, variables = perceiver
  with pytest.raises(ValueError, match='prompt is empty'):
    sampling.generate_text(model, variables, '', length=3, num_latents=4)
