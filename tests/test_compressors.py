"""Pins benchmarks/compressors.py: the bzip2/xz baseline of the report, conditioned on the
training text."""

import importlib.util

import numpy as np
from helpers import REPO


def _compressors():
  spec = importlib.util.spec_from_file_location('compressors', f'{REPO}/benchmarks/compressors.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_compressor_baseline_charges_what_the_training_text_does_not_predict():
  compressors = _compressors()
  rng = np.random.default_rng(0)
  train = rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes()
  repeated = compressors.conditional_bits_per_byte(train, train[:5_000])
  fresh = compressors.conditional_bits_per_byte(train, rng.bytes(5_000))
  assert repeated['xz -9e'] < 1  # LZ: a match far back in the training text is nearly free
  for name in ('bzip2 -9', 'xz -9e'):
    assert fresh[name] > 7.5  # random bytes cost their 8 bits (and a little framing)
    assert repeated[name] < fresh[name] - 2
  assert compressors.test_half(b'abcdef') == b'def'
