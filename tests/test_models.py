"""Pins perceiver_ar_vl/models (Perceiver AR and the Transformer): bucket padding invariance,
causality, masks, compiles, parameter counts, and the interface every model implements."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TINY_MODEL, TINY_WINDOW, embedding_influence

from perceiver_ar_vl import models

M = TINY_WINDOW
TINY = TINY_MODEL


class Jitted:
  """A model whose `apply` is jitted (latent counts static): eager Flax is slow on CPU."""

  def __init__(self, module):
    self.raw = module
    self.apply = jax.jit(module.apply, static_argnames=('num_latents', 'bucket', 'deterministic'))


@pytest.fixture(scope='module')
def perceiver():
  model = Jitted(models.PerceiverAR(**TINY))
  tokens = jnp.zeros((2, M), jnp.int32)
  params = jax.jit(model.raw.init, static_argnames='num_latents')(
    jax.random.PRNGKey(0), tokens, num_latents=8
  )
  # The head is zero-initialised; randomise it so that logits carry information.
  params = jax.tree.map(
    lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(3), p.shape), params
  )
  return model, params


@pytest.fixture(scope='module')
def transformer():
  model = Jitted(models.Transformer(**TINY))
  params = jax.jit(model.raw.init)(jax.random.PRNGKey(0), jnp.zeros((2, M), jnp.int32))
  params = jax.tree.map(
    lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(4), p.shape), params
  )
  return model, params


def random_tokens(seed, batch=2, length=M):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (batch, length)), jnp.int32)


@pytest.mark.parametrize('n,b1,b2', [(5, 8, 16), (8, 8, 32), (1, 4, 48), (13, 16, 17)])
def test_active_logits_do_not_depend_on_bucket(perceiver, n, b1, b2):
  model, params = perceiver
  tokens = random_tokens(0)
  unpadded = model.apply(params, tokens, num_latents=n)
  at_b1 = model.apply(params, tokens, num_latents=n, bucket=b1)
  at_b2 = model.apply(params, tokens, num_latents=n, bucket=b2)
  assert unpadded.shape == (2, n, 256) and at_b1.shape == (2, b1, 256)
  np.testing.assert_allclose(at_b1[:, -n:], unpadded, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(at_b2[:, -n:], unpadded, atol=1e-5, rtol=1e-5)


def test_inactive_slots_are_not_attended(perceiver):
  """The B - N inactive slots hold window positions (their tokens are real inputs of the
  cross-attend) but are masked out as keys of the latent stack: changing the tokens at
  those positions may change only what every active latent sees through the cross-attend.
  Pinned by comparing with the unpadded run (bucket = N), where those positions are plain
  prefix: both must agree whatever the tokens in the inactive slots, while changing an
  active slot's token does change the active logits."""
  model, params = perceiver
  n, b = 4, 16
  tokens = random_tokens(1)
  other = tokens.at[:, M - b : M - n].set((tokens[:, M - b : M - n] + 7) % 256)
  for window in (tokens, other):
    padded = model.apply(params, window, num_latents=n, bucket=b)
    unpadded = model.apply(params, window, num_latents=n, bucket=n)
    np.testing.assert_allclose(padded[:, -n:], unpadded, atol=1e-5)
  # The inactive slots' values reach the active latents only as cross-attend keys, exactly
  # as in the unpadded run; without the latent-stack mask they would also be latent keys.
  full = model.apply(params, tokens, num_latents=b, bucket=b)
  assert not np.allclose(
    full[:, -n:], model.apply(params, tokens, num_latents=n, bucket=b)[:, -n:], atol=1e-4
  )
  active = tokens.at[:, M - 2].set((tokens[:, M - 2] + 7) % 256)
  moved = model.apply(params, active, num_latents=n, bucket=b)
  assert not np.allclose(
    moved[:, -1], model.apply(params, tokens, num_latents=n, bucket=b)[:, -1], atol=1e-4
  )


def test_one_compilation_per_bucket_for_65_97_128():
  model = models.PerceiverAR(
    vocab_size=256,
    num_layers=2,
    num_heads=2,
    d_model=16,
    mlp_dim=32,
    max_context=160,
    dropout_rate=0.0,
  )
  tokens = random_tokens(3, batch=1, length=160)
  params = model.init(jax.random.PRNGKey(0), tokens, num_latents=8)
  traces = []

  @jax.jit
  def forward(num_latents):
    traces.append(1)
    return model.apply(params, tokens, num_latents=num_latents, bucket=128)

  unpadded = jax.jit(model.apply, static_argnames='num_latents')
  for n in (65, 97, 128):
    out = forward(jnp.int32(n))
    np.testing.assert_allclose(
      out[:, -n:], unpadded(params, tokens, num_latents=n), atol=1e-5, rtol=1e-5
    )
  assert len(traces) == 1


def first_changed_position(logits_a, logits_b, first_position):
  changed = np.abs(np.asarray(logits_a) - np.asarray(logits_b)).max(axis=(0, 2)) > 1e-6
  return first_position + int(np.argmax(changed)) if changed.any() else None


@pytest.mark.parametrize('p', [0, 20, 40, 47])
def test_perceiver_is_causal_under_perturbation(perceiver, p):
  model, params = perceiver
  tokens = random_tokens(4)
  b = 32
  changed = tokens.at[:, p].set((tokens[:, p] + 1) % 256)
  a = model.apply(params, tokens, num_latents=b)
  c = model.apply(params, changed, num_latents=b)
  first = first_changed_position(a, c, M - b)
  assert first is not None and first >= p  # position p itself may (and should) change


@pytest.mark.parametrize('p', [0, 20, 47])
def test_transformer_is_causal_under_perturbation(transformer, p):
  model, params = transformer
  tokens = random_tokens(5)
  changed = tokens.at[:, p].set((tokens[:, p] + 1) % 256)
  first = first_changed_position(model.apply(params, tokens), model.apply(params, changed), 0)
  assert first == p


def test_causality_by_gradient(perceiver, transformer):
  tokens = random_tokens(6, batch=1)
  for jitted, params, bucket in ((*perceiver, 16), (*transformer, None)):
    model = jitted.raw

    def apply(model=model, params=params, bucket=bucket):
      if bucket is None:
        return model.apply(params, tokens)
      return model.apply(params, tokens, num_latents=bucket)

    # d(sum of slot s's logits) / d(embedding at every position), for every slot s at once.
    norms_SxM = embedding_influence(apply, M, TINY['d_model'])
    first_slot_position = M - (bucket or M)
    for slot, norms in enumerate(norms_SxM):
      position = first_slot_position + slot
      assert np.all(norms[position + 1 :] == 0), (type(model).__name__, slot)
      assert norms[position] > 0 and (position == 0 or norms[:position].sum() > 0)


def test_left_padding_mask_hides_padded_tokens(perceiver, transformer):
  tokens = random_tokens(7)
  pad = 20
  mask = jnp.arange(M)[None, :] >= pad
  mask = jnp.broadcast_to(mask, tokens.shape)
  other = tokens.at[:, :pad].set(jnp.asarray(np.random.default_rng(8).integers(0, 256, (2, pad))))
  model, params = perceiver
  for b in (8, 40):  # latents only valid / latents that include padded positions
    a = model.apply(params, tokens, num_latents=b, input_mask=mask)
    c = model.apply(params, other, num_latents=b, input_mask=mask)
    valid_slots = slice(max(0, pad - (M - b)), None)
    np.testing.assert_allclose(a[:, valid_slots], c[:, valid_slots], atol=1e-5)
    assert np.all(np.isfinite(np.asarray(a)))
  model, params = transformer
  a = model.apply(params, tokens, input_mask=mask)
  c = model.apply(params, other, input_mask=mask)
  np.testing.assert_allclose(a[:, pad:], c[:, pad:], atol=1e-5)
  assert not np.allclose(model.apply(params, tokens)[:, pad:], a[:, pad:], atol=1e-4)


def block_parameters(d: int, f: int, cross: bool) -> int:
  """One pre-LN block: LayerNorms (scale, bias; a cross-attend has one more, for its keys and
  values), q/k/v/out projections with biases, an MLP d -> f -> d with biases."""
  layer_norms = (3 if cross else 2) * 2 * d
  return layer_norms + 4 * (d * d + d) + (d * f + f) + (f * d + d)


@pytest.mark.parametrize('model_type', ['perceiver_ar', 'transformer'])
def test_seed_size_parameter_count(model_type):
  """The seed size (6 layers, 8 heads, d 512, MLP 2048, vocab 256) against a count written
  from the architecture: embedding, blocks, final LayerNorm, head."""
  d, f, v, layers = 512, 2048, 256, 6
  model = models.MODELS[model_type](
    num_layers=layers, num_heads=8, d_model=d, mlp_dim=f, vocab_size=v, max_context=1024
  )
  shapes = jax.eval_shape(model.init_variables, jax.random.PRNGKey(0))
  count = sum(x.size for x in jax.tree.leaves(shapes))
  crosses = 1 if model_type == 'perceiver_ar' else 0
  blocks = crosses * block_parameters(d, f, True) + (layers - crosses) * block_parameters(
    d, f, False
  )
  assert count == v * d + blocks + 2 * d + (d * v + v)


def test_every_model_implements_the_interface():
  """Each registered model overrides what the base leaves abstract, and its registry entry
  says what its class says about scoring every position."""
  from perceiver_ar_vl import config_choices
  from perceiver_ar_vl.models.base import LanguageModel

  abstract = ('window_logits', 'prefill_cache', 'extend_cache', 'needs_prefill', 'attention_shapes')
  for name, cls in models.MODELS.items():
    assert issubclass(cls, LanguageModel)
    for method in abstract:
      assert getattr(cls, method) is not getattr(LanguageModel, method), (name, method)
    assert config_choices.MODEL_TYPES[name].scores_every_position == cls.scores_every_position


@pytest.mark.parametrize(
  'kwargs,match',
  [
    (dict(num_latents=0), 'num_latents must be >= 1'),
    (dict(num_latents=9, bucket=8), 'does not fit in bucket'),
    (dict(num_latents=8, bucket=64), 'exceeds the window'),
    (dict(num_latents=49), 'exceeds the window'),
  ],
)
def test_bad_latent_arguments_are_clear_errors(perceiver, kwargs, match):
  model, params = perceiver
  with pytest.raises(ValueError, match=match):
    model.apply(params, random_tokens(9), **kwargs)


def test_traced_latents_need_a_bucket(perceiver):
  model, params = perceiver
  with pytest.raises(ValueError, match='bucket'):
    jax.jit(lambda n: model.raw.apply(params, random_tokens(9), num_latents=n))(jnp.int32(4))


def test_window_longer_than_max_context_is_rejected(perceiver):
  model, params = perceiver
  with pytest.raises(ValueError, match='max_context'):
    model.apply(params, random_tokens(9, length=M + 1), num_latents=4)


def test_dropout_and_cross_attend_dropout_only_in_training():
  model = Jitted(models.PerceiverAR(**{**TINY, 'dropout_rate': 0.5}, cross_attend_dropout=0.5))
  tokens = random_tokens(10)
  params = model.raw.init(jax.random.PRNGKey(0), tokens, num_latents=8)
  params = jax.tree.map(
    lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(5), p.shape), params
  )
  eval_a = model.apply(params, tokens, num_latents=8)
  eval_b = model.apply(params, tokens, num_latents=8)
  np.testing.assert_array_equal(eval_a, eval_b)
  train = model.apply(
    params, tokens, num_latents=8, deterministic=False, rngs={'dropout': jax.random.PRNGKey(1)}
  )
  assert not np.allclose(train, eval_a)


def test_bfloat16_compute_keeps_float32_parameters(perceiver):
  model, params = perceiver
  low = models.PerceiverAR(**TINY, dtype=jnp.bfloat16)
  tokens = random_tokens(11)
  assert all(
    p.dtype == jnp.float32
    for p in jax.tree.leaves(low.init(jax.random.PRNGKey(0), tokens, num_latents=8))
  )
  full = model.apply(params, tokens, num_latents=8)
  half = low.apply(params, tokens, num_latents=8)
  assert half.dtype == jnp.float32  # logits come back in float32 for the loss
  assert not np.array_equal(half, full)  # the compute really ran in bfloat16
  np.testing.assert_allclose(half, full, atol=0.1)
