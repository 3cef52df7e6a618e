"""Rotary position encoding (RoFormer; GPT-NeoX channel layout) on part of each head."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rotary_dims(head_dim: int, fraction: float) -> int:
  """Number of channels of each head that rotate: an even number <= head_dim."""
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f'rotary_fraction must be in [0, 1], got {fraction}.')
  return 2 * int(head_dim * fraction / 2)


def apply_rotary(
  x_BxTxHxK: jax.Array, positions_BxT: jax.Array, fraction: float, max_wavelength: float
) -> jax.Array:
  """Rotates the first `fraction` of each head's channels by angle position * frequency.

  Channel pairs (i, i + R/2) of the rotated part turn together (the GPT-NeoX layout), so
  q . k depends only on the relative offset of the two positions.
  """
  rot = rotary_dims(x_BxTxHxK.shape[-1], fraction)
  if rot == 0:
    return x_BxTxHxK
  half = rot // 2
  inv_freq_F = max_wavelength ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles_BxTxF = positions_BxT.astype(jnp.float32)[..., None] * inv_freq_F
  sin_BxTx1xF = jnp.sin(angles_BxTxF)[:, :, None, :]
  cos_BxTx1xF = jnp.cos(angles_BxTxF)[:, :, None, :]
  x_rot, x_pass = x_BxTxHxK[..., :rot], x_BxTxHxK[..., rot:]
  x1 = x_rot[..., :half].astype(jnp.float32)
  x2 = x_rot[..., half:].astype(jnp.float32)
  rotated = jnp.concatenate(
    [x1 * cos_BxTx1xF - x2 * sin_BxTx1xF, x2 * cos_BxTx1xF + x1 * sin_BxTx1xF], axis=-1
  )
  return jnp.concatenate([rotated.astype(x_BxTxHxK.dtype), x_pass], axis=-1)
