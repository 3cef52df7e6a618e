"""Pins perceiver_ar_vl/models/ecp.py: causality, the receptive field, the one-segment
Transformer equivalence, blocked attention against a dense reference, the authors' options,
memory that follows n*m, and a train -> eval -> sample run through the library."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import embedding_influence, tiny_config

from perceiver_ar_vl import models, sampling, training
from perceiver_ar_vl.evaluation import evaluate
from perceiver_ar_vl.models.ecp import segment_attention
from perceiver_ar_vl.runs import train_state

M, SEG = 32, 8
SIZE = dict(num_heads=2, d_model=16, mlp_dim=32, max_context=M, dropout_rate=0.0)


def init(model, seed=0):
  """Parameters with a random (not zero) head, so that logits carry information."""
  params = jax.jit(model.init)(jax.random.PRNGKey(seed), jnp.zeros((1, M), jnp.int32))
  key = jax.random.PRNGKey(seed + 1)
  return jax.tree.map(lambda p: p + 0.05 * jax.random.normal(key, p.shape), params)


@functools.cache
def jitted_apply(model):
  """model.apply, jitted once per model (eager Flax is slow on CPU)."""
  return jax.jit(model.apply)


def tokens(seed, batch=1):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (batch, M)), jnp.int32)


def influence(model, params, toks):
  """[M, M] |d logits at position p / d embedding at position t|, summed over channels."""
  return embedding_influence(lambda: model.apply(params, toks), M, SIZE['d_model'])


def expected_reach(num_layers):
  """[M, M] bool: position t can influence position p (t <= p, within num_layers segments)."""
  p, t = np.arange(M)[:, None], np.arange(M)[None, :]
  return (t <= p) & (p // SEG - t // SEG <= num_layers)


OPTIONS = {
  'default': {},
  'shared_kv': dict(ecp_shared_kv=True),
  'rotary_first_layer_only': dict(ecp_rotary_first_layer_only=True),
  'segment0_out': dict(ecp_segment0_out=True),
  'authors': dict(ecp_shared_kv=True, ecp_rotary_first_layer_only=True, ecp_segment0_out=True),
}


@pytest.mark.parametrize('num_layers', [1, 2])
@pytest.mark.parametrize('options', ['default', 'authors'])
def test_receptive_field_grows_one_segment_per_layer_and_is_causal(num_layers, options):
  """A token's influence ends at the last position of the num_layers-th following segment,
  and never reaches an earlier position (gradient of every position at once)."""
  model = models.ECP(**SIZE, num_layers=num_layers, segment_length=SEG, **OPTIONS[options])
  norms = influence(model, init(model), tokens(0))
  reach = expected_reach(num_layers)
  assert np.all(norms[~reach] == 0)
  assert np.all(norms[reach] > 0)


@pytest.mark.parametrize('position', [0, 9, 17, 31])
def test_causal_under_perturbation(position):
  model = models.ECP(**SIZE, num_layers=2, segment_length=SEG)
  params = init(model)
  a = tokens(1)
  b = a.at[0, position].set((a[0, position] + 1) % 256)
  la, lb = jitted_apply(model)(params, a), jitted_apply(model)(params, b)
  np.testing.assert_array_equal(la[:, :position], lb[:, :position])
  changed = np.abs(np.asarray(la - lb)).sum(-1)[0] > 0
  assert changed[position] and changed[min(M - 1, (position // SEG + 3) * SEG - 1)]


def test_one_segment_with_default_options_is_the_transformer():
  transformer = models.Transformer(**SIZE, num_layers=2)
  params = init(transformer, seed=5)
  ecp = models.ECP(**SIZE, num_layers=2, segment_length=M)
  toks = tokens(2, batch=2)
  valid = jnp.arange(M)[None, :] >= jnp.array([[0], [7]])  # second row left-padded
  np.testing.assert_allclose(
    jitted_apply(ecp)(params, toks, input_mask=valid),
    jitted_apply(transformer)(params, toks, input_mask=valid),
    atol=1e-6,
  )


@pytest.mark.parametrize('impl', ['einsum', 'chunked'])
def test_segment_attention_equals_dense_masked_reference(impl):
  rng = np.random.default_rng(3)
  b, n, h, k = 2, 24, 2, 8
  q, kk, v = (jnp.asarray(rng.normal(size=(b, n, h, k)), jnp.float32) for _ in range(3))
  positions = jnp.broadcast_to(jnp.arange(n), (b, n))
  key_ok = jnp.asarray(np.arange(n)[None] >= np.array([[0], [5]]))  # left padding
  w = jnp.asarray(rng.normal(size=(b, n, h, k)), jnp.float32)

  def reference(q, kk, v):
    p, t = np.arange(n)[:, None], np.arange(n)[None, :]
    allowed = (t <= p) & (t // 6 >= p // 6 - 1)
    mask = allowed[None] & (np.asarray(key_ok)[:, None, :] | (t == p)[None])
    s = jnp.einsum('bqhd,bkhd->bhqk', q, kk) / np.sqrt(k)
    s = jnp.where(mask[:, None], s, -jnp.inf)
    return jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(s, -1), v)

  def loss(fn):
    return lambda *a: jnp.sum(fn(*a) * w)

  blocked = lambda *a: segment_attention(*a, positions, key_ok, 6, impl)
  np.testing.assert_allclose(jax.jit(blocked)(q, kk, v), reference(q, kk, v), atol=1e-5)
  got = jax.jit(jax.grad(loss(blocked), argnums=(0, 1, 2)))(q, kk, v)
  want = jax.grad(loss(reference), argnums=(0, 1, 2))(q, kk, v)
  for g, r in zip(got, want, strict=True):
    np.testing.assert_allclose(g, r, atol=1e-5)


@pytest.mark.parametrize('option', ['shared_kv', 'rotary_first_layer_only', 'segment0_out'])
def test_each_authors_option_changes_the_function(option):
  default = models.ECP(**SIZE, num_layers=2, segment_length=SEG)
  variant = models.ECP(**SIZE, num_layers=2, segment_length=SEG, **OPTIONS[option])
  params = init(variant)
  shared = jax.tree.map(lambda p: p, params)
  for layer in ('layer_0', 'layer_1'):
    attn = shared['params'][layer]['attention']
    attn.setdefault('value', attn['key'])  # the default model needs a value projection
    attn.pop('out_segment0', None)
  toks = tokens(4)
  difference = np.abs(
    np.asarray(jitted_apply(variant)(params, toks) - jitted_apply(default)(shared, toks))
  )
  assert difference.max() > 1e-4


def test_memory_follows_window_times_segment():
  """Bounds from the memory model, not from today's compiler: at a fixed segment m the train
  step holds [n, 2m] scores per head (at n = 8192, m = 64, 2 heads: 8 MiB in float32), never
  the dense [B, H, n, n] ones (512 MiB at n = 8192), so its temporaries stay below the size of
  that dense tensor wherever it would matter (n >= 4096), and 4x the window costs well under
  the 16x of quadratic growth (linear growth is 4x)."""
  heads, batch = SIZE['num_heads'], 1

  def temporaries(n):
    model = models.ECP(**{**SIZE, 'max_context': n}, num_layers=1, segment_length=64)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, n), jnp.int32))
    grad = jax.jit(jax.grad(lambda p, t: model.apply(p, t).sum()))
    toks = jax.ShapeDtypeStruct((batch, n), jnp.int32)
    return grad.lower(params, toks).compile().memory_analysis().temp_size_in_bytes

  sizes = {n: temporaries(n) for n in (1024, 2048, 4096, 8192)}
  dense_scores = lambda n: batch * heads * n * n * 4  # float32 [B, H, n, n]
  assert sizes[4096] < dense_scores(4096) and sizes[8192] < dense_scores(8192), sizes
  assert sizes[8192] < 8 * sizes[2048] and sizes[4096] < 8 * sizes[1024], sizes


def test_window_must_be_whole_segments():
  model = models.ECP(**SIZE, num_layers=1, segment_length=5)
  with pytest.raises(ValueError, match='segment'):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, M), jnp.int32))


def test_ecp_trains_evaluates_and_samples(tmp_path):
  config = tiny_config('fixed', steps=24, model_type='ecp')
  config.train.checkpoint_every = 24
  summary = training.train(config, str(tmp_path))
  # Untrained (a zero head) it scores log2(256) = 8 bits a byte; the copy task's bytes come
  # from 16 symbols, so their frequencies alone give log2(16) = 4 bits (copying: about 2).
  # 24 steps must have learned at least half of the way from 8 to 4 bits.
  chance, alphabet = math.log2(256), math.log2(16)
  assert summary['final_step'] == 24, summary
  assert summary['validation_bits'] < (chance + alphabet) / 2, summary
  config.eval.update(mode='blocks', splits=('validation',))
  report = evaluate.evaluate(config, str(tmp_path))
  (row,) = [r for r in report['results'] if r['split'] == 'validation']
  assert row['bits'] == pytest.approx(summary['validation_bits'], rel=0.05)
  model, params, _ = train_state.restore_params(config, str(tmp_path))
  prompt = np.full((2, 5), 65, np.int32)
  kwargs = dict(length=6, num_latents=M, temperature=0.0)
  cached = sampling.sample(model, params, prompt, cached=True, **kwargs)
  uncached = sampling.sample(model, params, prompt, cached=False, **kwargs)
  np.testing.assert_array_equal(cached, uncached)  # the ECP cache is exact (test_ecp_sampling)
  assert cached.shape == (2, 6)
