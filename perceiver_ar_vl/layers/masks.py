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
  aligned:    static; the S queries sit at the last S of the T key positions (window order,
              as in every model's forward pass), so causality is the structural mask
              "key index <= query index + T - S" that fused kernels express without a tensor.
  A leading dimension of 1 (instead of B) means the same for every example: the models use
  it when nothing is per-example (no left padding, no dropped keys), so no [B, S, T] mask
  exists anywhere.
  """

  q_pos_BxS: jax.Array
  kv_pos_BxT: jax.Array
  key_ok_BxT: jax.Array
  aligned: bool = flax.struct.field(pytree_node=False, default=False)

  def dense(self) -> jax.Array:
    """The whole [B or 1, S, T] boolean mask (for the dense kernels only)."""
    return allowed(self.q_pos_BxS, self.kv_pos_BxT, self.key_ok_BxT)


def allowed(q_pos_BxS: jax.Array, kv_pos_BxT: jax.Array, key_ok_BxT: jax.Array) -> jax.Array:
  """[B, S, T] boolean of the module docstring's rule, for these (slices of) positions: the
  dense mask, or one block of it in the chunked kernel."""
  q = q_pos_BxS[:, :, None]
  k = kv_pos_BxT[:, None, :]
  return (k <= q) & (key_ok_BxT[:, None, :] | (k == q))


def causal_mask(
  q_positions_BxS: jax.Array,
  kv_positions_BxT: jax.Array,
  key_ok_BxT: jax.Array,
  aligned: bool = False,
) -> AttentionMask:
  """Key position <= query position and key usable, and always the query itself."""
  return AttentionMask(
    jnp.asarray(q_positions_BxS, jnp.int32),
    jnp.asarray(kv_positions_BxT, jnp.int32),
    jnp.asarray(key_ok_BxT, bool),
    aligned,
  )
