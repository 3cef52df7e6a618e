"""Pins perceiver_ar_vl/training/host_loop.py, piece by piece: the stop signal, the device
batches, the device scalars and the NaN guard (the whole loop: tests/test_train.py)."""

import itertools
import os
import signal
import threading

import numpy as np
import pytest

from perceiver_ar_vl import parallel
from perceiver_ar_vl.training import host_loop, progress


@pytest.fixture
def signal_handlers():
  """The test process's SIGINT/SIGTERM handlers, whatever it inherited (an interactive shell,
  nohup, CI), restored after the test."""
  before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
  yield before
  for sig, handler in before.items():
    signal.signal(sig, handler)


def test_a_second_signal_stops_at_once(signal_handlers):
  signal.signal(signal.SIGINT, signal.default_int_handler)  # as in an interactive terminal
  with host_loop.StopSignal() as stop:
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.received == 'SIGINT' and stop.number == signal.SIGINT  # wait for the step
    with pytest.raises(KeyboardInterrupt, match=r'a second stop signal \(SIGTERM\)'):
      os.kill(os.getpid(), signal.SIGTERM)
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
  assert signal.getsignal(signal.SIGTERM) == signal_handlers[signal.SIGTERM]


def test_a_run_started_with_sigint_ignored_keeps_ignoring_it(signal_handlers):
  """nohup / a background job: SIGINT stays ignored (no stop), SIGTERM still stops, and
  SIG_IGN is what is left afterwards."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  with host_loop.StopSignal() as stop:
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.received is None
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.received == 'SIGTERM'
  assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
  assert signal.getsignal(signal.SIGTERM) == signal_handlers[signal.SIGTERM]


def _filling_threads() -> list[threading.Thread]:
  return [t for t in threading.enumerate() if t.name == 'device_batches' and t.is_alive()]


def test_device_batches_yield_the_host_batches_in_order_and_close_cleanly():
  mesh = parallel.make_mesh()
  host = [np.full((4, 33), i, np.int32) for i in range(5)]
  with host_loop.DeviceBatches(iter(host), mesh) as batches:
    got = [np.asarray(b) for b in batches]
  assert [int(b[0, 0]) for b in got] == list(range(5)) and got[0].shape == (4, 33)

  def failing():
    yield host[0]
    raise OSError('disk gone')

  with host_loop.DeviceBatches(failing(), mesh) as batches:
    next(batches)
    with pytest.raises(OSError, match='disk gone'):
      next(batches)
  endless = host_loop.DeviceBatches(itertools.repeat(host[0]), mesh)  # never ends by itself
  next(endless)
  assert _filling_threads()
  endless.close()
  assert not _filling_threads()  # every filling thread has ended


def test_device_ints_transfer_each_value_once():
  ints = host_loop.DeviceInts(parallel.make_mesh())
  first = ints(12)
  assert int(first) == 12 and ints(12) is first and int(ints(3)) == 3


def test_a_non_finite_loss_names_the_last_good_checkpoint(tmp_path):
  good = [{'step': 1, 'loss': 2.0}]
  progress.check_finite(good, str(tmp_path), last_saved=0)
  with pytest.raises(progress.NonFiniteLossError, match=r'step 2.*last good checkpoint \(step 1'):
    progress.check_finite([*good, {'step': 2, 'loss': float('nan')}], str(tmp_path), 1)
  with pytest.raises(FloatingPointError, match='No checkpoint was saved before'):
    progress.check_finite([{'step': 1, 'loss': float('inf')}], str(tmp_path), 0)
