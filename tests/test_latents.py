"""Pins perceiver_ar_vl/latents.py: buckets, validation errors, strategies."""

import pytest

from perceiver_ar_vl import latents

BUCKETS = (32, 64, 128, 256, 512, 1024)


@pytest.mark.parametrize(
  'n,want', [(1, 32), (32, 32), (33, 64), (65, 128), (512, 512), (1000, 1024)]
)
def test_bucket_for_is_smallest_bucket_that_fits(n, want):
  assert latents.bucket_for(n, BUCKETS) == want


@pytest.mark.parametrize('n,match', [(0, '>= 1'), (1025, 'No bucket can hold 1025')])
def test_bucket_errors_are_clear(n, match):
  with pytest.raises(ValueError, match=match):
    latents.bucket_for(n, BUCKETS)


@pytest.mark.parametrize(
  'buckets,match',
  [
    ((), 'empty'),
    ((64, 32), 'strictly increasing'),
    ((32, 32), 'strictly increasing'),
    ((0, 8), 'positive'),
  ],
)
def test_bad_buckets_are_refused_once_by_validation(buckets, match):
  with pytest.raises(ValueError, match=match):
    latents.validate_buckets(buckets)
  with pytest.raises(ValueError, match=match):
    latents.validate_counts(4, 4, buckets)


def test_buckets_above_window_are_rejected():
  with pytest.raises(ValueError, match='exceeds the window'):
    latents.validate_buckets(BUCKETS, max_context=512)


def schedule(strategy, steps=100, **kw):
  args = dict(
    strategy=strategy, min_latents=64, max_latents=512, total_steps=steps, seed=3, buckets=BUCKETS
  )
  args.update(kw)
  return [latents.num_latents_at(s, **args) for s in range(steps)]


def test_fixed_strategy_is_constant():
  assert set(schedule('fixed')) == {512}


def test_uniform_strategy_is_seeded_per_step_and_covers_range():
  draws = schedule('uniform', steps=2000)
  assert min(draws) >= 64 and max(draws) <= 512
  assert min(draws) < 80 and max(draws) > 495
  assert draws == schedule('uniform', steps=2000)  # reproducible from (seed, step)
  assert draws[1500:] == [
    latents.num_latents_at(
      s, strategy='uniform', min_latents=64, max_latents=512, total_steps=2000, seed=3
    )
    for s in range(1500, 2000)
  ]  # a resumed run draws the same
  assert draws != schedule('uniform', steps=2000, seed=4)


def test_linear_curriculum_grows_from_min_to_max():
  n = schedule('curriculum', steps=100, warmup_fraction=0.5)
  assert n[0] == 64 and n[50] == 512 and n[-1] == 512
  assert all(a <= b for a, b in zip(n, n[1:], strict=False))
  assert n[25] == 288


def test_stepwise_curriculum_steps_through_buckets():
  n = schedule('curriculum', steps=100, schedule='stepwise', warmup_fraction=0.8)
  assert sorted(set(n)) == [64, 128, 256, 512]
  assert n[0] == 64 and n[-1] == 512
  assert all(a <= b for a, b in zip(n, n[1:], strict=False))


@pytest.mark.parametrize(
  'kw,match',
  [
    (dict(min_latents=600), 'latents.min <= latents.max'),
    (dict(max_latents=2048, buckets=BUCKETS + (2048,)), 'exceeds the window'),
    (dict(buckets=(32, 64)), 'No bucket can hold 512'),
  ],
)
def test_strategy_validation(kw, match):
  args = dict(min_latents=64, max_latents=512, buckets=BUCKETS, max_context=1024)
  args.update(kw)
  with pytest.raises(ValueError, match=match):
    latents.validate_counts(**args)
