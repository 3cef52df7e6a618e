"""Pins perceiver_ar_vl/experiments/budgets.py: equal-budget step counts (flops, seconds)."""

import math

import pytest
from helpers import tiny_config

from perceiver_ar_vl import config_lib
from perceiver_ar_vl.experiments import budgets


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


def test_seconds_budget_times_each_bucket_once():
  config = tiny_config('fixed')
  cost = budgets.bucket_cost('seconds', config)
  first = cost(16)
  assert first > 0 and cost(16) == first  # measured once, then cached
  assert budgets.run_cost(config, cost) == pytest.approx(config.train.steps * first)
