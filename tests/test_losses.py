"""Pins perceiver_ar_vl/losses.py against a float64 numpy cross-entropy."""

import math

import numpy as np
import pytest

from perceiver_ar_vl import losses


def numpy_loss(logits, window, n, z_loss):
  b = logits.shape[1]
  targets = window[:, -b:][:, -n:]
  lg = logits[:, -n:].astype(np.float64)
  log_z = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
  nll = log_z - np.take_along_axis(lg, targets[..., None], -1)[..., 0]
  return nll.mean(), nll.mean() + z_loss * (log_z**2).mean()


@pytest.mark.parametrize('n', [1, 5, 8])
def test_loss_matches_reference_over_active_slots(n):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 8, 256)).astype(np.float32) * 3
  window = rng.integers(0, 256, (3, 21))
  out = losses.cross_entropy_loss(logits, window, n, z_loss=1e-4)
  nats, objective = numpy_loss(logits, window, n, 1e-4)
  assert float(out.nats) == pytest.approx(nats, rel=1e-5)
  assert float(out.bits) == pytest.approx(nats / math.log(2), rel=1e-5)
  assert float(out.objective) == pytest.approx(objective, rel=1e-5)
  assert float(out.num_targets) == 3 * n


def test_inactive_slots_do_not_count():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 8, 256)).astype(np.float32)
  window = rng.integers(0, 256, (2, 17))
  a = losses.cross_entropy_loss(logits, window, 3)
  logits[:, :5] = 100 * rng.normal(size=(2, 5, 256))  # garbage in inactive slots
  b = losses.cross_entropy_loss(logits, window, 3)
  assert float(a.nats) == float(b.nats)


def test_weights_skip_targets():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(2, 4, 256)).astype(np.float32)
  window = rng.integers(0, 256, (2, 9))
  weights = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], np.float32)
  out = losses.cross_entropy_loss(logits, window, 4, weights_BxS=weights)
  ref = losses.cross_entropy_loss(logits[1:], window[1:], 4)
  partial = losses.cross_entropy_loss(logits[:1, :2], window[:1, :7], 2)
  assert float(out.num_targets) == 6
  assert float(out.nats) == pytest.approx(
    (4 * float(ref.nats) + 2 * float(partial.nats)) / 6, rel=1e-5
  )
