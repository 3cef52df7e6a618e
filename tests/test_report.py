"""Pins perceiver_ar_vl/experiments/report.py: the stability figures and the paired
significance rule over seeds (the whole report: tests/test_experiments.py)."""

import numpy as np
import pytest

from perceiver_ar_vl.experiments import report


def test_stability_counts_spikes_over_the_trailing_median():
  loss = np.full(200, 2.0)
  loss[120] = 2.0 * report.SPIKE_FACTOR * 1.01
  loss[150] = 2.0 * report.SPIKE_FACTOR * 0.99  # below the factor: not a spike
  loss[10] = 10.0  # before a full trailing window: not counted
  grad = np.linspace(1.0, 3.0, 200)
  records = [
    {'step': s + 1, 'loss': float(loss[s]), 'grad_norm': float(grad[s])} for s in range(200)
  ]
  out = report.stability(records, warmup_steps=100)
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
  out = report.paired_difference(consistent, reference)
  assert out['verdict'] == 'better' and out['n'] == 3
  assert out['mean'] == pytest.approx(-0.048)
  # Same mean gap, but one seed goes the other way: the interval covers 0.
  mixed = [
    _result(s, b + d)
    for s, (b, d) in enumerate(zip([3.30, 3.40, 3.35], [-0.1, -0.1, 0.05], strict=True))
  ]
  assert report.paired_difference(mixed, reference)['verdict'] == 'not significant'
  worse = [_result(s, b + 0.1 + 0.01 * s) for s, b in enumerate([3.30, 3.40, 3.35])]
  assert report.paired_difference(worse, reference)['verdict'] == 'worse'
  assert report.paired_difference(consistent[:1], reference)['verdict'] == 'one seed'
  assert report.paired_difference([_result(9, 3.0)], reference) is None
  assert report.format_mean_std([1.0, 3.0], 2) == '2.00 ± 1.41'
