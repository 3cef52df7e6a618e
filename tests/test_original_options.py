"""Pins the options that reproduce google-research/perceiver-ar's model function: its rotary
convention, LayerNorm epsilon, z_linear query projection, cross-attend heads and MLP width,
sinusoidal positions, the max_wavelength check, and the seed project's staircase schedule.

References are written here from the original's formulas (numpy, float64), not from the
library's code."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perceiver_ar_vl import config_lib, errors, latents, sampling, step_plan
from perceiver_ar_vl.layers.rotary import apply_rotary
from perceiver_ar_vl.layers.sinusoid import sinusoidal_table
from perceiver_ar_vl.models import PerceiverAR

ORIGINAL = dict(
  latent_query_projection=True,
  num_cross_attend_heads=2,
  cross_attend_mlp_dim=96,
  rotary_convention='interleaved',
  layer_norm_epsilon=1e-5,
)


def original_rotary(x, positions, max_wavelength, fraction):
  """The original's rotary (perceiver_ar_model._apply_rotary_encoding_to_subset), float64."""
  rot = 2 * int(x.shape[-1] * fraction / 2)
  bands = rot // 2
  freq = max_wavelength ** ((2.0 / rot) * np.linspace(0, bands, bands))
  radians = positions[..., None] * np.repeat(1.0 / freq, 2)  # [B, T, R]
  cos, sin = np.cos(radians)[:, :, None], np.sin(radians)[:, :, None]
  x_r = x[..., :rot]
  spliced = np.stack((-x_r[..., 1::2], x_r[..., ::2]), -1).reshape(x_r.shape)
  return np.concatenate([x_r * cos + spliced * sin, x[..., rot:]], -1)


def half_split_rotary(x, positions, max_wavelength, fraction):
  """Ours: pairs (i, i + R/2), inverse frequencies W^(-i/(R/2)), float64."""
  rot = 2 * int(x.shape[-1] * fraction / 2)
  half = rot // 2
  angles = positions[..., None] * max_wavelength ** (-np.arange(half) / half)
  cos, sin = np.cos(angles)[:, :, None], np.sin(angles)[:, :, None]
  a, b = x[..., :half], x[..., half:rot]
  return np.concatenate([a * cos - b * sin, b * cos + a * sin, x[..., rot:]], -1)


@pytest.mark.parametrize('fraction', [1.0, 0.5, 0.25, 0.125])
@pytest.mark.parametrize(
  'convention,reference', [('interleaved', original_rotary), ('half', half_split_rotary)]
)
def test_rotary_conventions_match_their_formulas(fraction, convention, reference):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 9, 3, 16))
  positions = rng.integers(0, 64, (2, 9)).astype(np.float64)
  got = apply_rotary(
    jnp.asarray(x, jnp.float32), jnp.asarray(positions), fraction, 64.0, convention
  )
  np.testing.assert_allclose(np.asarray(got), reference(x, positions, 64.0, fraction), atol=2e-5)


def test_the_two_rotary_conventions_differ():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 5, 2, 8)), jnp.float32)
  positions = jnp.arange(5)[None]
  half = apply_rotary(x, positions, 1.0, 64.0, 'half')
  interleaved = apply_rotary(x, positions, 1.0, 64.0, 'interleaved')
  assert float(jnp.abs(half - interleaved).max()) > 0.1


def test_sinusoidal_table_is_the_originals():
  """generate_sinusoidal_features(size, max_len, min_scale=1, max_scale=10000)."""
  size, length = 10, 33
  scale_factor = -np.log(10_000.0) / (size // 2 - 1)
  div_term = np.exp(np.arange(size // 2) * scale_factor)
  expected = np.zeros((length, size))
  expected[:, : size // 2] = np.sin(np.arange(length)[:, None] * div_term)
  expected[:, size // 2 :] = np.cos(np.arange(length)[:, None] * div_term)
  np.testing.assert_allclose(np.asarray(sinusoidal_table(length, size)), expected, atol=1e-6)


def smoke(**model_options):
  config = config_lib.strategy_config('curriculum', 'smoke')
  config.model.update(model_options)
  return config_lib.validate(config)


def perturbed_variables(model, seed=0):
  """Variables with every parameter moved off its init (the head is zero-initialised)."""
  variables = model.init_variables(jax.random.PRNGKey(seed))
  keys = iter(jax.random.split(jax.random.PRNGKey(seed + 1), len(jax.tree.leaves(variables))))
  return jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape), variables)


def tokens(batch=2, length=128, seed=3):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 16, (batch, length)), jnp.int32)


def test_original_options_build_the_originals_parameters():
  model = config_lib.create_model(smoke(**ORIGINAL))
  params = jax.eval_shape(model.init_variables, jax.random.PRNGKey(0))['params']
  d = model.d_model
  assert params['z_linear']['kernel'].shape == (d, d) and params['z_linear']['bias'].shape == (d,)
  assert params['cross_attend']['attention']['query']['kernel'].shape == (d, 2, d // 2)
  assert params['cross_attend']['mlp']['fc_in']['kernel'].shape == (d, 96)
  assert params['latent_0']['attention']['query']['kernel'].shape == (d, 4, d // 4)
  assert params['latent_0']['mlp']['fc_in']['kernel'].shape == (d, model.mlp_dim)
  assert (
    'z_linear'
    not in config_lib.create_model(smoke()).init_variables(jax.random.PRNGKey(0))['params']
  )


def test_z_linear_projects_the_latent_queries_and_is_their_residual():
  """With z_linear = identity the model is the one without it; moving z_linear moves the
  latents' logits (it feeds both the queries and the residual stream)."""
  plain = config_lib.create_model(smoke())
  projected = config_lib.create_model(smoke(latent_query_projection=True))
  variables = perturbed_variables(plain)
  d = plain.d_model
  identity = {'kernel': jnp.eye(d), 'bias': jnp.zeros(d)}
  with_identity = {'params': {**variables['params'], 'z_linear': identity}}
  x = tokens()
  run = lambda m, v: jax.jit(lambda v: m.forward(v, x, 16, 16))(v)
  base = run(plain, variables)
  np.testing.assert_allclose(run(projected, with_identity), base, atol=1e-5)
  moved = {'kernel': 1.5 * jnp.eye(d), 'bias': jnp.full(d, 0.1)}
  with_moved = {'params': {**variables['params'], 'z_linear': moved}}
  shift = run(projected, with_moved) - base
  assert float(jnp.abs(shift).max()) > 1e-3


def test_layer_norm_epsilon_reaches_every_layer_norm():
  """A tiny input scale makes epsilon matter; the chunked kernel (which recomputes the
  cross-attend's LayerNorm itself) must agree with the dense one at any epsilon."""
  x = tokens()
  outputs = {}
  for eps in (1e-6, 1e-2):
    for impl in ('einsum', 'chunked'):
      model = config_lib.create_model(smoke(layer_norm_epsilon=eps, attention_impl=impl))
      variables = perturbed_variables(model)
      embed = variables['params']['embed']['embedding']
      variables['params']['embed']['embedding'] = 1e-3 * embed
      outputs[eps, impl] = jax.jit(lambda v, m=model: m.forward(v, x, 16, 16))(variables)
  for eps in (1e-6, 1e-2):
    np.testing.assert_allclose(outputs[eps, 'einsum'], outputs[eps, 'chunked'], atol=2e-5)
  assert float(jnp.abs(outputs[1e-6, 'einsum'] - outputs[1e-2, 'einsum']).max()) > 1e-3


def test_original_options_chunked_gradients_equal_the_dense_ones():
  """The cross-attend carries every option (z_linear, its own heads and width, the
  interleaved rotary, epsilon) and runs the chunked kernel with keys made inside it."""
  x = tokens(length=64)
  grads = {}
  for impl in ('einsum', 'chunked'):
    model = PerceiverAR(
      num_layers=1,
      num_heads=4,
      d_model=32,
      mlp_dim=64,
      max_context=64,
      dropout_rate=0.0,
      attention_impl=impl,
      **ORIGINAL,
    )
    variables = perturbed_variables(model)
    loss = lambda v, m=model: jnp.sum(m.forward(v, x, 16, 16) ** 2)
    grads[impl] = jax.jit(jax.grad(loss))(variables)
  pairs = zip(jax.tree.leaves(grads['einsum']), jax.tree.leaves(grads['chunked']), strict=True)
  for dense, chunked in pairs:
    np.testing.assert_allclose(dense, chunked, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize('options', [ORIGINAL, {'position_encoding': 'sinusoidal'}])
def test_original_options_sample_the_same_cached_and_uncached(options):
  model = config_lib.create_model(smoke(**options))
  variables = perturbed_variables(model)
  prompt = np.random.default_rng(0).integers(0, 16, (1, 20)).astype(np.int32)
  kwargs = dict(length=24, num_latents=8, temperature=0.0, return_logits=True)
  uncached = sampling.sample(model, variables, prompt, cached=False, **kwargs)
  if model.cached_sampling_error():  # fixed positions: each byte's embedding moves a step
    with pytest.raises(ValueError, match="position_encoding='rotary'"):
      sampling.sample(model, variables, prompt, cached=True, **kwargs)
    return
  cached = sampling.sample(model, variables, prompt, cached=True, **kwargs)
  np.testing.assert_array_equal(cached[0], uncached[0])
  np.testing.assert_allclose(cached[1], uncached[1], atol=1e-4)


def test_sinusoidal_positions_are_fixed_not_learned():
  model = config_lib.create_model(smoke(position_encoding='sinusoidal'))
  params = jax.eval_shape(model.init_variables, jax.random.PRNGKey(0))['params']
  assert 'position_table' not in params  # nothing to train
  assert isinstance(model, PerceiverAR)


def test_max_wavelength_shorter_than_the_window_is_refused():
  with pytest.raises(errors.UserError, match=r'max_wavelength=100 is shorter than the window'):
    smoke(max_wavelength=100.0)
  smoke(max_wavelength=100.0, position_encoding='absolute')  # no rotary: nothing to check


def test_presets_raise_max_wavelength_to_a_longer_window():
  config = config_lib.base_config()
  config.model.max_context = 16_384
  assert config_lib.apply_preset(config, 'gpu').model.max_wavelength == 16_384
  assert config_lib.strategy_config('curriculum', 'cpu').model.max_wavelength == 10_000


def test_staircase_is_the_seed_projects_curriculum():
  """N = min(512, 64 + 32 * floor(step / (T / 14))) with T = 10,000 (the seed's Train.py)."""
  config = config_lib.strategy_config('curriculum')
  config.latents.schedule = 'staircase'
  config.train.steps = 10_000
  config = config_lib.validate(config)
  got = [latents.latent_count(config, step) for step in range(10_000)]
  expected = [min(512, 64 + 32 * int(step // (10_000 / 14))) for step in range(10_000)]
  assert got == expected
  assert got[714] == 64 and got[715] == 96 and got[-1] == 480
  assert step_plan.plan(config).buckets_ahead(0) == [64, 128, 256, 512]
