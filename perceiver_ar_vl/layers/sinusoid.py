"""The absolute position table of the original Perceiver AR (`position_encoding='sinusoidal'`
built as its `generate_sinusoidal_features`), kept apart from the rotary encoding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def sinusoidal_table(
  length: int, size: int, min_scale: float = 1.0, max_scale: float = 1e4
) -> jax.Array:
  """A fixed [length, size] table of absolute positions, as the original's
  `generate_sinusoidal_features` builds it: sines in the first size//2 channels, cosines in
  the next size//2 (a last odd channel stays 0), at frequencies from min_scale down to
  min_scale / (max_scale / min_scale), log-spaced."""
  half = size // 2
  scale_factor = -np.log(max_scale / min_scale) / max(half - 1, 1)
  div_term_F = min_scale * np.exp(np.arange(half) * scale_factor)
  angles_LxF = np.arange(length)[:, None] * div_term_F
  table = np.zeros((length, size), np.float32)
  table[:, :half] = np.sin(angles_LxF)
  table[:, half : 2 * half] = np.cos(angles_LxF)
  return jnp.asarray(table)
