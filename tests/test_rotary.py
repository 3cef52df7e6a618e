"""Pins perceiver_ar_vl/layers/rotary.py at long positions: angles stay exact around 2^17 and
beyond (float32 and bfloat16 inputs), against a float64 numpy rotation of the same convention.
"""

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from perceiver_ar_vl.layers.rotary import apply_rotary

HEAD_DIM, FRACTION, WAVELENGTH = 16, 0.5, 10_000.0
ROT = 8  # rotated channels: 2 * int(16 * 0.5 / 2)


def reference_rotary(x, positions, convention):
  """float64 rotation of the first ROT channels of x [B, T, H, K] at integer positions [B, T]."""
  half = ROT // 2
  exponent = np.arange(half) / (max(half - 1, 1) if convention == 'interleaved' else half)
  angles = positions.astype(np.float64)[..., None] * WAVELENGTH**-exponent  # exact in float64
  cos, sin = np.cos(angles)[:, :, None], np.sin(angles)[:, :, None]
  x = x.astype(np.float64)
  out = x.copy()
  if convention == 'interleaved':
    a, b = x[..., 0:ROT:2], x[..., 1:ROT:2]
    out[..., 0:ROT:2], out[..., 1:ROT:2] = a * cos - b * sin, b * cos + a * sin
  else:
    a, b = x[..., :half], x[..., half:ROT]
    out[..., :half], out[..., half:ROT] = a * cos - b * sin, b * cos + a * sin
  return out


def long_positions():
  """[2, 6] int positions around 2^17 and 2^17 + 65536 (and a few steps past each)."""
  base = np.array([[2**17], [2**17 + 65536]])
  return base + np.array([[-1, 0, 1, 7, 1000, 4097]])


@pytest.fixture(scope='module')
def x():
  return np.random.default_rng(0).normal(size=(2, 6, 3, HEAD_DIM)).astype(np.float32)


@pytest.mark.parametrize('convention', ['half', 'interleaved'])
def test_float32_angles_are_exact_past_2_17(x, convention):
  positions = long_positions()
  got = apply_rotary(
    jnp.asarray(x), jnp.asarray(positions, jnp.int32), FRACTION, WAVELENGTH, convention
  )
  want = reference_rotary(x, positions, convention)
  scale = np.abs(want).max()
  tolerance = 1e-5 * scale  # angles to ~1e-7 rad, then float32 products
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=tolerance, rtol=0)
  # The plain float32 product position * frequency would miss by far more than that here.
  half = ROT // 2
  exponent = np.arange(half) / (max(half - 1, 1) if convention == 'interleaved' else half)
  naive = positions.astype(np.float32)[..., None] * (WAVELENGTH**-exponent).astype(np.float32)
  exact = positions.astype(np.float64)[..., None] * WAVELENGTH**-exponent
  assert np.abs(np.angle(np.exp(1j * (naive - exact)))).max() * scale > 10 * tolerance


@pytest.mark.parametrize('convention', ['half', 'interleaved'])
def test_bfloat16_inputs_rotate_by_float32_angles(x, convention):
  positions = long_positions()
  x_bf16 = x.astype(ml_dtypes.bfloat16)
  got = apply_rotary(
    jnp.asarray(x_bf16), jnp.asarray(positions, jnp.int32), FRACTION, WAVELENGTH, convention
  )
  assert got.dtype == jnp.bfloat16
  want = reference_rotary(x_bf16.astype(np.float64), positions, convention)
  # bf16 keeps 8 bits of mantissa: the rounded result is within 2^-8 of each value. A bf16
  # angle at 2^17 would be off by hundreds of radians (values off by O(scale)).
  np.testing.assert_allclose(
    np.asarray(got.astype(jnp.float32), np.float64), want, atol=1e-2 * np.abs(want).max(), rtol=0
  )


def test_negative_positions_undo_the_rotation(x):
  """The chunked kernel's backward rotates by -position: exactly the inverse."""
  positions = jnp.asarray(long_positions(), jnp.int32)
  there = apply_rotary(jnp.asarray(x), positions, FRACTION, WAVELENGTH)
  back = apply_rotary(there, -positions, FRACTION, WAVELENGTH)
  np.testing.assert_allclose(np.asarray(back), x, atol=1e-5 * np.abs(x).max(), rtol=0)
