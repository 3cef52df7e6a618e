"""Pins perceiver_ar_vl/layers/match.py (n-gram match heads) and the model options around it:
exact codes, causality, the sorted path against a plain reference, every kernel, the cache,
the FLOP model, the config's errors and the original model left as it was."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TINY_MODEL, tiny_config
from test_sampling import random_variables

from perceiver_ar_vl import config_defaults, config_lib, errors, models, original, sampling
from perceiver_ar_vl.experiments import flops
from perceiver_ar_vl.layers import match
from perceiver_ar_vl.original import convert

MATCH_OPTIONS = dict(match_ngrams=(4, 2), cross_attend_rotary_fraction=0.0)


def codes_of(tokens, valid, k):
  code, ok = match.ngram_codes(jnp.asarray(tokens), jnp.asarray(valid), k)
  return np.asarray(code), np.asarray(ok)


def test_equal_ngrams_have_equal_codes_and_only_they():
  """Over every pair of positions of a 3-symbol stream: codes equal <=> the k bytes equal."""
  tokens = np.random.default_rng(0).integers(0, 3, (1, 300))
  for k in (1, 3, 6):
    code, ok = codes_of(tokens, np.ones_like(tokens, bool), k)
    grams = [tuple(tokens[0, t - k + 1 : t + 1]) for t in range(300)]
    ts = np.flatnonzero(ok[0])
    same_code = code[0, ts][:, None] == code[0, ts][None, :]
    same_gram = np.array([[grams[a] == grams[b] for b in ts] for a in ts])
    np.testing.assert_array_equal(same_code, same_gram)
    assert same_gram.sum() > len(ts)  # the test sees repeated n-grams, not only the diagonal


def test_a_one_byte_change_changes_exactly_the_codes_that_cover_it():
  tokens = np.random.default_rng(1).integers(0, 256, (1, 40))
  valid = np.ones_like(tokens, bool)
  changed = tokens.copy()
  changed[0, 20] = (changed[0, 20] + 1) % 256
  k = 5
  before, _ = codes_of(tokens, valid, k)
  after, _ = codes_of(changed, valid, k)
  differ = np.flatnonzero(before[0] != after[0])
  np.testing.assert_array_equal(differ, np.arange(20, 20 + k))


def test_ngrams_over_the_window_start_or_padding_never_match():
  tokens = np.zeros((1, 12), np.int64)  # every n-gram would be equal
  valid = np.ones_like(tokens, bool)
  valid[0, 6] = False
  _, ok = codes_of(tokens, valid, 3)
  want = [False, False, True, True, True, True, False, False, False, True, True, True]
  np.testing.assert_array_equal(ok[0], want)
  code, ok = codes_of(tokens, valid, 3)
  k_code, k_ok = match.key_codes(jnp.asarray(code), jnp.asarray(ok))
  assert not np.asarray(k_ok)[0, :3].any()  # a key needs the 3 bytes before it


def reference_match(tokens, valid, key_ok, v_TxK, k, strength, num_queries):
  """Float64 loops over byte tuples (no hashing): out_i = sum of v_j over keys j <= i whose
  k bytes before j equal i's last k bytes, divided by exp(-strength) + their count."""
  T = len(tokens)
  out = np.zeros((num_queries, v_TxK.shape[1]))
  for s, i in enumerate(range(T - num_queries, T)):
    if i < k - 1 or not valid[i - k + 1 : i + 1].all():
      continue
    hits = [
      j
      for j in range(k, i + 1)
      if key_ok[j]
      and valid[j - k : j].all()
      and (tokens[j - k : j] == tokens[i - k + 1 : i + 1]).all()
    ]
    if hits:
      out[s] = v_TxK[hits].sum(0) / (np.exp(-strength) + len(hits))
  return out


@pytest.mark.parametrize('k', [1, 3])
def test_dense_and_sorted_paths_equal_the_plain_reference(k):
  rng = np.random.default_rng(2)
  B, T, S, K = 2, 90, 30, 5
  tokens = rng.integers(0, 3, (B, T))
  valid = rng.random((B, T)) > 0.05
  key_ok = rng.random((B, T)) > 0.1
  v = rng.standard_normal((B, T, K)).astype(np.float32)
  strength = 0.7
  code, ok = match.ngram_codes(jnp.asarray(tokens), jnp.asarray(valid), k)
  k_code, k_ok = match.key_codes(code, ok)
  args = (
    code[:, T - S :],
    ok[:, T - S :],
    jnp.broadcast_to(jnp.arange(T - S, T), (B, S)),
    k_code,
    k_ok & jnp.asarray(key_ok),
    jnp.asarray(v),
    jnp.float32(strength),
  )
  want = np.stack(
    [reference_match(tokens[b], valid[b], key_ok[b], v[b], k, strength, S) for b in range(B)]
  )
  assert np.abs(want).max() > 0.1  # queries with matches
  assert k == 1 or (np.abs(want).sum(-1) == 0).any()  # and without
  for path in (match.dense_match, match.sorted_match):  # compiled: eager scans take seconds
    np.testing.assert_allclose(jax.jit(path)(*args), want, atol=2e-6)
  grads = [
    jax.jit(jax.grad(lambda v, s, f=f: (f(*args[:5], v, s) ** 2).sum(), argnums=(0, 1)))(
      args[5], args[6]
    )
    for f in (match.dense_match, match.sorted_match)
  ]
  for a, b in zip(*grads, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_no_key_at_or_after_a_later_position_reaches_a_query():
  """The value at key j reaches query i only for j <= i (gradients), on the sorted path."""
  rng = np.random.default_rng(3)
  T = 64
  tokens = jnp.asarray(np.tile(rng.integers(0, 2, (1, 8)), (1, T // 8)))  # many matches
  valid = jnp.ones((1, T), bool)
  code, ok = match.ngram_codes(tokens, valid, 2)
  k_code, k_ok = match.key_codes(code, ok)
  v = jnp.asarray(rng.standard_normal((1, T, 3)), jnp.float32)
  positions = jnp.arange(T)[None]
  out = lambda v: match.sorted_match(code, ok, positions, k_code, k_ok, v, jnp.float32(1.0))
  jacobian = jax.jit(jax.jacrev(lambda v: out(v)[0].sum(-1)))(v)  # [query, 1, key, channel]
  reached_SxT = np.abs(np.asarray(jacobian)[:, 0]).sum(-1) > 0  # key j's value reaches query i
  assert not np.triu(reached_SxT, k=1).any()  # never a key after the query
  assert reached_SxT[[20, 40, 63]].any(-1).all()  # but earlier ones do


def model_with(impl='auto', **options):
  return models.PerceiverAR(**{**TINY_MODEL, 'attention_impl': impl}, **options)


@pytest.fixture(scope='module')
def match_variables():
  return random_variables(model_with(**MATCH_OPTIONS, cross_attend_log_scale=True), 5)


def test_every_kernel_gives_the_same_logits_with_match_heads(match_variables):
  rng = np.random.default_rng(4)
  tokens = jnp.asarray(rng.integers(0, 3, (2, TINY_MODEL['max_context'])))
  mask = jnp.asarray(np.arange(TINY_MODEL['max_context'])[None] >= np.array([[0], [9]]))

  def logits_of(impl, variables):
    model = model_with(impl, **MATCH_OPTIONS, cross_attend_log_scale=True)
    forward = jax.jit(lambda v: model.forward(v, tokens, 12, 16, input_mask=mask))
    return np.asarray(forward(variables))

  logits = {impl: logits_of(impl, match_variables) for impl in ('einsum', 'xla', 'chunked')}
  assert model_with('chunked', **MATCH_OPTIONS).match_dense(2, 16, 48) is False  # sorted path
  assert model_with('einsum', **MATCH_OPTIONS).match_dense(2, 16, 48) is True
  for impl in ('xla', 'chunked'):
    np.testing.assert_allclose(logits[impl], logits['einsum'], atol=1e-5)
  off = jax.tree_util.tree_map(lambda x: x, match_variables)  # the match heads' output zeroed
  off['params']['match']['out']['kernel'] = jnp.zeros_like(off['params']['match']['out']['kernel'])
  assert np.abs(logits_of('xla', off) - logits['xla']).max() > 1e-2  # they take part


def test_cached_sampling_equals_uncached_with_match_heads(match_variables):
  model = model_with(**MATCH_OPTIONS, cross_attend_log_scale=True)
  prompt = np.random.default_rng(5).integers(0, 3, (2, 10)).astype(np.int32)
  kwargs = dict(length=30, num_latents=8, seed=1, return_logits=True)
  tok_c, log_c = sampling.sample(model, match_variables, prompt, cached=True, **kwargs)
  tok_u, log_u = sampling.sample(model, match_variables, prompt, cached=False, **kwargs)
  assert prompt.shape[1] + 30 <= TINY_MODEL['max_context']
  np.testing.assert_allclose(log_c, log_u, atol=1e-4, rtol=1e-4)
  np.testing.assert_array_equal(tok_c, tok_u)


def test_flop_model_counts_the_match_heads():
  plain, with_match = model_with(), model_with(**MATCH_OPTIONS)
  S, T, d, c = 16, TINY_MODEL['max_context'], TINY_MODEL['d_model'], 2 * 8  # 2 heads of 8
  extra = 2 * T * d * c + 2 * S * c * d + 2 * S * T * c
  assert flops.forward_flops(with_match, S) - flops.forward_flops(plain, S) == extra


@pytest.mark.parametrize(
  'overrides, message',
  [
    ({'model.match_ngrams': (0,)}, 'match_ngrams'),
    ({'model.match_ngrams': (128,)}, 'match_ngrams'),
    ({'model.match_ngrams': (8,), 'model.type': 'transformer'}, 'Perceiver AR cross-attend'),
    ({'model.cross_attend_rotary_fraction': 1.5}, 'cross_attend_rotary_fraction'),
    ({'eval.windows': (1,)}, 'eval.windows'),
  ],
)
def test_bad_long_context_settings_are_one_line_errors(overrides, message):
  config = tiny_config('fixed')
  for key, value in overrides.items():
    section, field = key.split('.')
    config[section][field] = value
  if config.model.type == 'transformer':
    config.latents.update(min=32, max=32, buckets=(32,))
  with pytest.raises(errors.UserError, match=message) as info:
    config_lib.validate(config)
  assert '\n' not in str(info.value)


def test_the_original_model_has_no_long_context_option():
  config = convert.config_from_kwargs(**original.sweep_kwargs('random_mirrored_32'))
  convert.check_original_model(config)  # as converted: accepted
  assert not config_lib.create_model(config).has_long_context_options()
  for key, value in (('match_ngrams', (8,)), ('cross_attend_rotary_fraction', 0.0)):
    changed = config_defaults.base_config()
    changed.model[key] = value
    with pytest.raises(errors.UserError, match=f'model.{key}'):
      convert.check_original_model(changed)


def copy_bits_after_training(options: dict, steps: int = 60) -> float:
  """Trains a 1-layer model on copies of 16..256 bytes at window 256 for `steps` Adam steps,
  then scores copies 2048 bytes back at window 4096 (copy bits: a perfect copier 4*4/2048,
  the bytes no 4-gram covers; chance 4)."""
  import optax

  from perceiver_ar_vl import data, losses
  from perceiver_ar_vl.evaluation import evaluate

  shape = dict(TINY_MODEL, num_layers=1, num_heads=2, d_model=32, mlp_dim=64)
  train_model = models.PerceiverAR(**{**shape, 'max_context': 256}, **options)
  config = config_defaults.base_config()
  config.data.update(name='copy', copy_length=4096, copy_train_lengths=(16, 256))
  train_data = data.make_dataset(config.data, window=257, seed=0)
  variables = train_model.init_variables(jax.random.PRNGKey(0))
  optimizer = optax.adam(1e-2)
  opt_state = optimizer.init(variables)

  @jax.jit
  def step(variables, opt_state, rows):
    def loss_fn(variables):
      logits = train_model.forward(variables, rows[:, :-1], 64, 64)
      return losses.token_nll(logits, rows)[0].mean()

    grads = jax.grad(loss_fn)(variables)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(variables, updates), opt_state

  for s in range(steps):
    variables, opt_state = step(variables, opt_state, jnp.asarray(train_data.train_batch(s, 8, 0)))
  long_model = models.PerceiverAR(**{**shape, 'max_context': 4096}, **options)
  long_data = data.make_dataset(config.data, window=4097, seed=0)
  result = evaluate.bits_per_byte(
    long_model,
    variables,
    long_data.split_bytes('validation'),
    num_latents=256,
    max_bytes=2 * 4096,
    source_distances=long_data.source_distances('validation'),
  )
  assert result['fresh_bits'] > 3.9  # random bytes stay unpredictable
  return result['copy_bits']


def test_trained_at_window_256_the_match_head_copies_2048_bytes_back():
  with_match = copy_bits_after_training(dict(match_ngrams=(4,), cross_attend_rotary_fraction=0.0))
  plain = copy_bits_after_training({})
  assert with_match < 0.5 and plain > 3.5, (with_match, plain)
