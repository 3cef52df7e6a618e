"""Attention masks described by positions, never as a materialised [B, S, T] boolean.

Every model's mask has one form,

    query at position p sees the key at position t  <=>  t <= p  and  (key usable or t == p),

(the "or t == p" keeps every row non-empty, so a padded query never produces NaN). Kernels
build the part they need (a block, or the dense mask for the dense kernels) from positions.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class AttentionMask:
  """Which keys each query sees, described by positions (see the module docstring).

  q_pos_BxS:  int position of each query.
  kv_pos_BxT: int position of each key.
  key_ok_BxT: bool, the key may be attended (valid byte, active latent, not dropped).
  """

  q_pos_BxS: jax.Array
  kv_pos_BxT: jax.Array
  key_ok_BxT: jax.Array

  def block(self, q_pos_BxS: jax.Array, kv_pos_BxT: jax.Array, key_ok_BxT: jax.Array):
    """[B, S, T] boolean for the given slices of positions (one block of a kernel)."""
    q = q_pos_BxS[:, :, None]
    k = kv_pos_BxT[:, None, :]
    return (k <= q) & (key_ok_BxT[:, None, :] | (k == q))

  def dense(self) -> jax.Array:
    """The whole [B, S, T] boolean mask (for the dense kernels only)."""
    return self.block(self.q_pos_BxS, self.kv_pos_BxT, self.key_ok_BxT)


def causal_mask(
  q_positions_BxS: jax.Array, kv_positions_BxT: jax.Array, key_ok_BxT: jax.Array
) -> AttentionMask:
  """Key position <= query position and key usable, and always the query itself."""
  return AttentionMask(
    jnp.asarray(q_positions_BxS, jnp.int32),
    jnp.asarray(kv_positions_BxT, jnp.int32),
    jnp.asarray(key_ok_BxT, bool),
  )
