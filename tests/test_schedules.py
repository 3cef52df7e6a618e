"""Pins perceiver_ar_vl/schedules.py, the one ramp behind the three curricula (latents,
window, copy length), against its formulas written out here; the curricula's own tests
(test_latents.py, test_windows.py, test_copy_task.py) pin each adapter."""

import math

import pytest

from perceiver_ar_vl import errors, schedules


def test_linear_reaches_high_after_the_warmup_and_stays():
  values = [
    schedules.ramp(s, low=8, high=64, total_steps=100, warmup_fraction=0.25) for s in range(100)
  ]
  assert values[0] == 8 and values[25:] == [64] * 75
  assert values[10] == round(8 + 10 / 25 * 56)
  assert values == sorted(values)


def test_stepwise_spends_equal_time_on_each_stage():
  ramp = lambda s: schedules.ramp(
    s,
    low=8,
    high=64,
    total_steps=100,
    shape='stepwise',
    warmup_fraction=0.5,
    stages=(4, 16, 32, 128),
  )
  values = [ramp(s) for s in range(100)]
  # Stages: 8, then 16 and 32 (strictly between 8 and 64), then 64; 50 steps of warm-up.
  assert sorted(set(values)) == [8, 16, 32, 64]
  for step, value in enumerate(values):
    assert value == [8, 16, 32, 64][min(3, int(min(1.0, step / 50) * 4))]


@pytest.mark.parametrize('stair_size', [None, 5])
def test_staircase_climbs_in_equal_stages_of_the_whole_run(stair_size):
  ramp = lambda s: schedules.ramp(
    s, low=10, high=30, total_steps=80, shape='staircase', stairs=4, stair_size=stair_size
  )
  for step in range(80):
    stair = min(3, math.floor(step / 20))
    want = 10 + round(stair * 20 / 3) if stair_size is None else min(30, 10 + 5 * stair)
    assert ramp(step) == want
  assert ramp(79) == (30 if stair_size is None else 25)


def test_an_unknown_shape_is_one_line():
  with pytest.raises(errors.UserError, match="Unknown schedule shape 'cosine'"):
    schedules.ramp(3, low=1, high=2, total_steps=10, shape='cosine')
