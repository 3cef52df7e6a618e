"""Pins perceiver_ar_vl/models (Perceiver AR and the Transformer): bucket padding invariance,
causality, masks, compiles, parameter counts, and the interface every model implements."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TINY_MODEL, TINY_WINDOW, embedding_influence

from perceiver_ar_vl import config_choices, models
from perceiver_ar_vl.models.base import LanguageModel

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
  """The B - N inactive slots are masked out as keys of the latent stack, so nothing of
  theirs reaches an active latent except what the unpadded run (bucket = N) sees as well:
  their tokens, as cross-attend keys of the prefix.

  Pinned three ways: (1) new tokens in the inactive slots give the same active logits as
  the unpadded run on those tokens; (2) changing the inactive slots' embeddings in the
  latent stream (their cross-attend queries, whose outputs are the inactive latents) leaves
  the active logits unchanged; (3) the same change at an active slot, or a new token there,
  does move the last logits, so neither comparison is vacuous."""
  model, params = perceiver
  n, b = 4, 16
  tokens = random_tokens(1)
  other = tokens.at[:, M - b : M - n].set((tokens[:, M - b : M - n] + 7) % 256)
  assert not np.array_equal(other, tokens)
  padded = {}
  for name, window in (('tokens', tokens), ('other', other)):
    padded[name] = model.apply(params, window, num_latents=n, bucket=b)[:, -n:]
    unpadded = model.apply(params, window, num_latents=n, bucket=n)
    np.testing.assert_allclose(padded[name], unpadded, atol=1e-5)
  # Those bytes are still the active latents' context (the prefix of the cross-attend).
  assert not np.allclose(padded['tokens'], padded['other'], atol=1e-4)

  @jax.jit
  def active_logits(params, delta_1xBxD):
    """The active logits with `delta` added to the slots' embeddings in the latent stream."""

    def add_delta(next_fun, args, kwargs, context):
      if context.method_name == 'latent_queries':  # args: the slots' embeddings [B, b, D]
        return next_fun(args[0] + delta_1xBxD, *args[1:], **kwargs)
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(add_delta):
      return model.raw.apply(params, tokens, num_latents=n, bucket=b)[:, -n:]

  noise = jax.random.normal(jax.random.PRNGKey(7), (1, b, TINY['d_model']))
  inactive = (jnp.arange(b) < b - n)[None, :, None]
  base = active_logits(params, jnp.zeros_like(noise))
  np.testing.assert_allclose(base, padded['tokens'], atol=1e-6)
  np.testing.assert_allclose(active_logits(params, 10 * noise * inactive), base, atol=1e-6)
  one_active = (jnp.arange(b) == b - 2)[None, :, None]
  moved = active_logits(params, 10 * noise * one_active)
  assert not np.allclose(moved[:, -1], base[:, -1], atol=1e-4)
  # Without the latent-stack mask (N = B: every slot a key) the same slots do change them.
  full = model.apply(params, tokens, num_latents=b, bucket=b)
  assert not np.allclose(full[:, -n:], base, atol=1e-4)
  active = tokens.at[:, M - 2].set((tokens[:, M - 2] + 7) % 256)
  moved = model.apply(params, active, num_latents=n, bucket=b)
  assert not np.allclose(moved[:, -1], base[:, -1], atol=1e-4)


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
  params = jax.jit(model.init_variables)(jax.random.PRNGKey(0))
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
  values), q/k/v/out projections with biases, an MLP d -> f -> d with biases. The heads
  split d (H heads of d / H): they change no count."""
  layer_norms = (3 if cross else 2) * 2 * d
  return layer_norms + 4 * (d * d + d) + (d * f + f) + (f * d + d)


def parameter_count(model_type: str, d: int, f: int, layers: int, vocab: int) -> int:
  """Embedding [V, d]; the blocks (Perceiver AR: a cross-attend, then L - 1 latent blocks;
  the Transformer and ECP: L self-attention blocks); final LayerNorm; head d -> V + bias."""
  crosses = 1 if model_type == 'perceiver_ar' else 0
  blocks = crosses * block_parameters(d, f, True) + (layers - crosses) * block_parameters(
    d, f, False
  )
  return vocab * d + blocks + 2 * d + (d * vocab + vocab)


@pytest.mark.parametrize('model_type', sorted(models.MODELS))
@pytest.mark.parametrize(
  'd, f, heads, layers, vocab',
  [(512, 2048, 8, 6, 256), (48, 80, 3, 2, 100)],  # the seed size; an odd one
  ids=['seed', 'odd'],
)
def test_parameter_count_follows_the_architecture(model_type, d, f, heads, layers, vocab):
  """Every model's parameter count against a count written from the architecture (the seed
  size, 6 layers, 8 heads, d 512, MLP 2048, vocab 256: 19,178,752 for Perceiver AR)."""
  options = dict(segment_length=8) if model_type == 'ecp' else {}  # 48 = 6 segments
  model = models.MODELS[model_type](
    num_layers=layers,
    num_heads=heads,
    d_model=d,
    mlp_dim=f,
    vocab_size=vocab,
    max_context=48,
    **options,
  )
  shapes = jax.eval_shape(model.init_variables, jax.random.PRNGKey(0))
  count = sum(x.size for x in jax.tree.leaves(shapes))
  assert count == parameter_count(model_type, d, f, layers, vocab)


def test_the_registry_and_the_classes_agree():
  """models.MODELS has a class for each config_choices.MODEL_TYPES entry, and each entry says
  what its class says about scoring every position."""
  assert set(models.MODELS) == set(config_choices.MODEL_TYPES)
  for name, cls in models.MODELS.items():
    assert issubclass(cls, LanguageModel), name
    assert config_choices.MODEL_TYPES[name].scores_every_position == cls.scores_every_position


@pytest.mark.parametrize('name', sorted(models.MODELS))
def test_every_model_implements_the_interface(name):
  """The model overrides what the base leaves abstract (raising NotImplementedError), and
  each override runs with the shapes the library relies on (traced for shapes only: no
  compile)."""
  cls = models.MODELS[name]
  for method in ('window_logits', 'prefill_cache', 'extend_cache', 'needs_prefill'):
    assert getattr(cls, method) is not getattr(LanguageModel, method), method
  assert cls.attention_shapes is not LanguageModel.attention_shapes
  batch, bucket, vocab = 2, 8, TINY['vocab_size']
  options = dict(segment_length=8) if name == 'ecp' else {}
  model = cls(**{**TINY, 'num_layers': 2}, **options)
  variables = jax.eval_shape(model.init_variables, jax.random.PRNGKey(0))
  window = jax.ShapeDtypeStruct((batch, M), jnp.int32)
  logits = jax.eval_shape(lambda v, w: model.forward(v, w, bucket, bucket), variables, window)
  assert logits.shape == (batch, bucket, vocab)
  step_logits, cache = jax.eval_shape(
    lambda v, w: model.prefill(v, w, jnp.int32(M), bucket, bucket), variables, window
  )
  assert step_logits.shape == (batch, vocab)
  token = jax.ShapeDtypeStruct((batch,), jnp.int32)
  extended = jax.eval_shape(
    lambda v, c, t: model.extend(v, c, t, jnp.int32(M + 1), bucket), variables, cache, token
  )
  assert jax.tree.structure(extended) == jax.tree.structure((step_logits, cache))
  assert jax.tree.map(lambda x: (x.shape, x.dtype), extended[1]) == jax.tree.map(
    lambda x: (x.shape, x.dtype), cache
  )
  refill = jax.eval_shape(
    lambda c: model.needs_prefill(c, jnp.int32(1), jnp.int32(M + 1), False), cache
  )
  assert refill.shape == () and refill.dtype == jnp.bool_
  shapes = model.attention_shapes(bucket)
  assert len(shapes) == model.num_layers
  assert all(isinstance(s, models.AttentionShape) for s in shapes)


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
  params = jax.jit(model.raw.init_variables)(jax.random.PRNGKey(0))
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
  low_shapes = jax.eval_shape(low.init_variables, jax.random.PRNGKey(0))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(low_shapes))
  full = model.apply(params, tokens, num_latents=8)
  half = jax.jit(low.apply, static_argnames='num_latents')(params, tokens, num_latents=8)
  assert half.dtype == jnp.float32  # logits come back in float32 for the loss
  assert not np.array_equal(half, full)  # the compute really ran in bfloat16
  np.testing.assert_allclose(half, full, atol=0.1)


@pytest.mark.parametrize(
  'cls,encoding', [(models.PerceiverAR, 'absolute'), (models.Transformer, 'sinusoidal')]
)
def test_first_byte_origin_counts_table_positions_from_the_first_valid_byte(cls, encoding):
  """position_origin='first_byte': a window left-padded by p positions scores its bytes as the
  unpadded window of M - p bytes does (its positions 0..M-p-1); 'window' does not."""
  pad, n = 12, 8
  tokens = random_tokens(9, length=M - pad)
  padded = jnp.concatenate([jnp.zeros((2, pad), jnp.int32), tokens], axis=1)
  mask = jnp.broadcast_to(jnp.arange(M)[None] >= pad, padded.shape)
  logits = {}
  for origin in ('window', 'first_byte'):
    model = cls(**TINY, position_encoding=encoding, position_origin=origin)
    variables = model.init_variables(jax.random.PRNGKey(0))
    variables = jax.tree.map(
      lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(5), p.shape), variables
    )
    forward = jax.jit(model.forward, static_argnums=(2, 3))
    logits[origin] = forward(variables, padded, n, n, input_mask=mask)
  short = forward(variables, tokens, n, n)  # no padding: positions 0..M-p-1 under either
  np.testing.assert_allclose(logits['first_byte'], short, atol=1e-5)
  uncached = jax.jit(model.uncached_logits, static_argnums=(3, 4))
  next_byte = uncached(variables, padded, M - pad, n, n)  # sampling's step
  np.testing.assert_allclose(next_byte, short[:, -1], atol=1e-5)
  assert not np.allclose(logits['window'], short, atol=1e-3)
