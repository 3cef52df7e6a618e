"""Pins the research-comparison pieces: latent dropout, short-context training (random
truncation), equal budgets, stability figures, the paired significance rule and the cpu_long
preset."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

from perceiver_ar_vl import (
  budgets,
  config_lib,
  errors,
  experiment_report,
  experiments,
  models,
  parallel,
  stepping,
)
from perceiver_ar_vl import state as state_lib

SIZE = dict(num_layers=3, num_heads=2, d_model=16, mlp_dim=32, max_context=24, dropout_rate=0.0)


def _perceiver(latent_dropout):
  model = models.PerceiverAR(**SIZE, latent_dropout=latent_dropout)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 24), 0, 256)
  params = model.init(jax.random.PRNGKey(1), tokens, num_latents=8)
  params = jax.tree.map(
    lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(2), p.shape), params
  )
  return model, params, tokens


def test_latent_dropout_acts_only_in_training_and_spares_a_latents_own_key():
  model, params, tokens = _perceiver(latent_dropout=0.9)
  plain = models.PerceiverAR(**SIZE).apply(params, tokens, num_latents=8)
  np.testing.assert_array_equal(model.apply(params, tokens, num_latents=8), plain)
  rngs = {'dropout': jax.random.PRNGKey(3)}
  train = model.apply(params, tokens, num_latents=8, deterministic=False, rngs=rngs)
  # The first active latent has only itself as a latent-layer key, which is never dropped.
  np.testing.assert_allclose(train[:, 0], plain[:, 0], rtol=1e-5, atol=1e-5)
  assert not np.allclose(train[:, 1:], plain[:, 1:], atol=1e-3)
  assert np.isfinite(train).all()


def test_latent_dropout_keeps_causality():
  model, params, tokens = _perceiver(latent_dropout=0.5)
  rngs = {'dropout': jax.random.PRNGKey(4)}
  base = model.apply(params, tokens, num_latents=8, deterministic=False, rngs=rngs)
  changed = tokens.at[:, 20].set((tokens[:, 20] + 1) % 256)  # window position 20 = slot 4
  after = model.apply(params, changed, num_latents=8, deterministic=False, rngs=rngs)
  np.testing.assert_array_equal(after[:, :4], base[:, :4])
  assert not np.allclose(after[:, 4:], base[:, 4:])


def test_truncation_mask_keeps_a_random_suffix_of_a_fraction_of_windows():
  window = jnp.zeros((4000, 33), jnp.int32)
  mask = np.asarray(stepping.truncation_mask(window, 0.25, jax.random.PRNGKey(0)))
  assert mask.shape == (4000, 32)
  keep = mask.sum(1)
  assert (mask[:, -1]).all() and (keep >= 1).all()
  # Every row is a suffix: False then True.
  np.testing.assert_array_equal(mask, np.arange(32)[None] >= 32 - keep[:, None])
  truncated = keep < 32
  assert abs(truncated.mean() - 0.25 * 31 / 32) < 0.03  # L = M counts as not truncated
  assert set(np.unique(keep[truncated])) == set(range(1, 32))
  np.testing.assert_array_equal(
    mask, np.asarray(stepping.truncation_mask(window, 0.25, jax.random.PRNGKey(0)))
  )
  assert np.asarray(stepping.truncation_mask(window[:8], 0.0, jax.random.PRNGKey(1))).all()


def test_random_truncation_scores_only_the_kept_suffix():
  """The train step's loss ignores the bytes before each window's kept suffix and counts only
  the latents inside it (mask rebuilt from the step's documented rng)."""
  config = tiny_config('fixed')
  config.train.random_truncation = 0.9
  model = config_lib.create_model(config)
  mesh = parallel.make_mesh()
  state = state_lib.create_train_state(config, model, mesh)
  _, schedule = state_lib.make_optimizer(config.train)
  step = jax.jit(stepping.bucket_step(config, model, 16, schedule))
  window = jax.random.randint(jax.random.PRNGKey(5), (4, 33), 0, 256)
  base_rng = jax.random.PRNGKey(6)
  _, out = step(state, window, jnp.int32(16), base_rng)
  rng = jax.random.fold_in(jax.random.fold_in(base_rng, 0), stepping._TRUNCATION_STREAM)
  mask = stepping.truncation_mask(window, 0.9, rng)
  assert float(out['target_tokens']) == float(mask[:, -16:].sum()) < 4 * 16
  noise = jax.random.randint(jax.random.PRNGKey(7), window.shape, 0, 256)
  padded = jnp.where(jnp.pad(mask, ((0, 0), (0, 1)), constant_values=True), window, noise)
  assert not np.array_equal(padded, window)
  _, out_padded = step(state, padded, jnp.int32(16), base_rng)
  np.testing.assert_allclose(out_padded['loss'], out['loss'], rtol=1e-5)


def _cpu(name):
  config = config_lib.strategy_config(name, 'cpu')
  config.train.steps = 600
  return config


@pytest.mark.parametrize('name', ['fixed_256', 'uniform', 'curriculum', 'transformer'])
def test_flops_budget_gives_the_most_steps_that_fit(name):
  reference = _cpu('fixed_512')
  cost = budgets.bucket_cost('flops', reference)
  budget = budgets.run_cost(reference, cost)
  assert budgets.steps_for_budget(reference, cost, budget) == 600
  config = _cpu(name)
  cost = budgets.bucket_cost('flops', config)
  steps = budgets.steps_for_budget(config, cost, budget)
  assert budgets.run_cost(config, cost, steps) <= budget < budgets.run_cost(config, cost, steps + 1)
  if name == 'fixed_256':  # every step at bucket 64: exactly the FLOP ratio
    ratio = budget / (600 * cost(64))
    assert steps == math.floor(600 * ratio) and steps > 1000
  if name == 'transformer':
    assert steps < 600


def test_run_config_applies_budget_seed_and_variants():
  steps = experiments.run_config('curriculum+truncation', 'cpu', seed=2, budget='flops')
  assert steps.seed == 2 and steps.name == 'curriculum+truncation'
  assert steps.train.random_truncation == 0.25 and steps.train.steps > 600
  same = experiments.run_config('fixed_512', 'cpu', budget='flops')
  assert same.train.steps == 600
  assert experiments.run_dir('/o', same) == '/o/runs/fixed_512/seed0-600steps'
  for bad, phrase in [
    (dict(strategies=('fixed_512+bogus',)), "unknown variant 'bogus'"),
    (dict(budget=('joules',)), "--budget='joules'"),
    (dict(seeds=()), 'give one or more seeds'),
  ]:
    with pytest.raises(errors.UserError, match=phrase):
      experiments.run_experiment('cpu', '/nonexistent', **bad)


def test_cpu_long_preset_keeps_the_cpu_latents_at_a_4096_window():
  cpu, long = (
    config_lib.strategy_config('curriculum', 'cpu'),
    config_lib.strategy_config('curriculum', 'cpu_long'),
  )
  assert long.model.max_context == 4096 and cpu.model.max_context == 256
  assert (long.latents.min, long.latents.max, long.latents.buckets) == (
    cpu.latents.min,
    cpu.latents.max,
    cpu.latents.buckets,
  )
  assert long.model.d_model == cpu.model.d_model and long.model.num_layers == cpu.model.num_layers
  assert config_lib.strategy_config('transformer', 'cpu_long').latents.max == 4096


def test_stability_counts_spikes_over_the_trailing_median():
  loss = np.full(200, 2.0)
  loss[120] = 2.0 * experiment_report.SPIKE_FACTOR * 1.01
  loss[150] = 2.0 * experiment_report.SPIKE_FACTOR * 0.99  # below the factor: not a spike
  loss[10] = 10.0  # before a full trailing window: not counted
  grad = np.linspace(1.0, 3.0, 200)
  records = [
    {'step': s + 1, 'loss': float(loss[s]), 'grad_norm': float(grad[s])} for s in range(200)
  ]
  out = experiment_report.stability(records, warmup_steps=100)
  assert out['loss_spikes'] == 1 and out['loss_spike_steps'] == [121]
  after = grad[100:]
  assert out['grad_norm_cv'] == pytest.approx(after.std() / after.mean())


def _result(seed, test_bits):
  return {
    'seed': seed,
    'train_latents': [8],
    'eval': [{'split': 'test', 'num_latents': 8, 'bits': test_bits}],
  }


def test_paired_difference_calls_only_differences_beyond_the_spread():
  reference = [_result(s, b) for s, b in enumerate([3.30, 3.40, 3.35])]
  consistent = [_result(s, b - 0.05 + 0.002 * s) for s, b in enumerate([3.30, 3.40, 3.35])]
  out = experiment_report.paired_difference(consistent, reference)
  assert out['verdict'] == 'better' and out['n'] == 3
  assert out['mean'] == pytest.approx(-0.048)
  # Same mean gap, but one seed goes the other way: the interval covers 0.
  mixed = [
    _result(s, b + d)
    for s, (b, d) in enumerate(zip([3.30, 3.40, 3.35], [-0.1, -0.1, 0.05], strict=True))
  ]
  assert experiment_report.paired_difference(mixed, reference)['verdict'] == 'not significant'
  worse = [_result(s, b + 0.1 + 0.01 * s) for s, b in enumerate([3.30, 3.40, 3.35])]
  assert experiment_report.paired_difference(worse, reference)['verdict'] == 'worse'
  assert experiment_report.paired_difference(consistent[:1], reference)['verdict'] == 'one seed'
  assert experiment_report.paired_difference([_result(9, 3.0)], reference) is None
  assert experiment_report.format_mean_std([1.0, 3.0], 2) == '2.00 ± 1.41'


def test_seconds_budget_times_each_bucket_once():
  config = tiny_config('fixed')
  cost = budgets.bucket_cost('seconds', config)
  first = cost(16)
  assert first > 0 and cost(16) == first  # measured once, then cached
  assert budgets.run_cost(config, cost) == pytest.approx(config.train.steps * first)


def test_compressor_baseline_charges_what_the_training_text_does_not_predict():
  import importlib.util

  from helpers import REPO

  spec = importlib.util.spec_from_file_location('compressors', f'{REPO}/benchmarks/compressors.py')
  compressors = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(compressors)
  rng = np.random.default_rng(0)
  train = rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes()
  repeated = compressors.conditional_bits_per_byte(train, train[:5_000])
  fresh = compressors.conditional_bits_per_byte(train, rng.bytes(5_000))
  assert repeated['xz -9e'] < 1  # LZ: a match far back in the training text is nearly free
  for name in ('bzip2 -9', 'xz -9e'):
    assert fresh[name] > 7.5  # random bytes cost their 8 bits (and a little framing)
    assert repeated[name] < fresh[name] - 2
  assert compressors.test_half(b'abcdef') == b'def'
