"""Memory-efficient attention (Rabe & Staats 2021, in FlashAttention-2's form) in plain JAX.

Forward: for each block of queries, an online softmax over blocks of keys (running maximum,
denominator and weighted sum), never holding more than one [B, H, block_q, block_k] score
block. Backward (`custom_vjp`): recomputes each block's probabilities from the saved
log-sum-exp, so no per-block scores are stored; dq is accumulated in place and each key
block's dk/dv are handed to a `finish` step once complete. Blocks that the causal mask hides
entirely are skipped in both passes, and blocks it does not touch build no mask. The loops
read blocks in place (dynamic slices of the [B, T, H, K] inputs), so the kernel adds no copy
of the keys/values to a step's memory.

Two entry points:
  * `chunked_attention(q, k, v, mask)` — attention over given keys/values;
  * `projected_chunked_attention(q, x, kv_params, mask, ...)` — the keys/values are
    LayerNorm -> dense projections (-> rotary on keys) of x, and the backward pushes each
    finished key block's dk/dv straight through those projections into dx and the parameter
    gradients. Only x, k and v are M-sized in the backward (no LayerNorm output, un-rotated
    keys or full dk/dv), which is what lets the cross-attend of a 131k-byte window train in a
    few GiB. Nothing is recomputed but the scores.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from perceiver_ar_vl.layers.masks import AttentionMask, allowed
from perceiver_ar_vl.layers.rotary import apply_rotary

DEFAULT_BLOCK_Q = 1024
DEFAULT_BLOCK_K = 1024
_NO_KEY = np.iinfo(np.int32).max  # position of a padding key: after every query


def _pad_seq(x, amount: int, value=0):
  """Pads axis 1 (the sequence) at the end."""
  if amount == 0:
    return x
  return jnp.pad(x, [(0, 0), (0, amount)] + [(0, 0)] * (x.ndim - 2), constant_values=value)


def _padded_inputs(q_BxSxHxK, kv_len: int, mask: AttentionMask, block_q, block_k):
  """Scaled, padded queries and positions; block sizes. Padded keys sit after every query
  and are never usable; padded queries see nothing and are dropped from the result."""
  q_len, head_dim = q_BxSxHxK.shape[1], q_BxSxHxK.shape[3]
  bq = min(block_q or DEFAULT_BLOCK_Q, q_len)
  bk = min(block_k or DEFAULT_BLOCK_K, kv_len)
  pad_q, pad_k = -q_len % bq, -kv_len % bk
  q = _pad_seq(q_BxSxHxK * jnp.asarray(head_dim**-0.5, q_BxSxHxK.dtype), pad_q)
  positions = (
    _pad_seq(mask.q_pos_BxS, pad_q, -1),
    _pad_seq(mask.kv_pos_BxT, pad_k, _NO_KEY),
    _pad_seq(mask.key_ok_BxT, pad_k, False),
  )
  return q, positions, bq, bk, pad_k


def chunked_attention(
  q_BxSxHxK: jax.Array,
  k_BxTxHxK: jax.Array,
  v_BxTxHxK: jax.Array,
  mask: AttentionMask,
  block_q: int | None = None,
  block_k: int | None = None,
) -> jax.Array:
  """Same result as dense masked attention, O(S * block) memory. Returns [B, S, H, K].

  Block sizes default to `DEFAULT_BLOCK_Q/K`; S and T need not be multiples of them.
  """
  q, positions, bq, bk, pad_k = _padded_inputs(
    q_BxSxHxK, k_BxTxHxK.shape[1], mask, block_q, block_k
  )
  k, v = _pad_seq(k_BxTxHxK, pad_k), _pad_seq(v_BxTxHxK, pad_k)
  return _flash(q, k, v, *positions, bq, bk)[:, : q_BxSxHxK.shape[1]]


# ------------------------------------------------------------------ blocks


def _block(x, index, size: int, axis: int = 1):
  """Block number `index` (traced) of `size` along `axis`, read in place."""
  return jax.lax.dynamic_slice_in_dim(x, index * size, size, axis=axis)


def _write_block(x, value, index, size: int, axis: int = 1):
  """x with block number `index` of `size` along `axis` replaced by `value` (in place)."""
  return jax.lax.dynamic_update_slice_in_dim(x, value.astype(x.dtype), index * size, axis)


def _block_kind(q_pos_Bxq, kv_pos_Bxk, key_ok_Bxk):
  """0: the causal mask hides the whole block (every key after every query); 1: it hides
  nothing (every key usable and at or before every query: no mask to build, the common
  case for a cross-attend's prefix); 2: partly masked."""
  hidden = jnp.min(kv_pos_Bxk) > jnp.max(q_pos_Bxq)
  full = (jnp.max(kv_pos_Bxk) <= jnp.min(q_pos_Bxq)) & jnp.all(key_ok_Bxk)
  return jnp.where(hidden, 0, jnp.where(full, 1, 2))


def _scores(q_BxqxHxK, k_BxkxHxK, q_pos_Bxq, kv_pos_Bxk, key_ok_Bxk, masked: bool = True):
  """float32 scores [B, H, q, k] of one block; with `masked`, hidden entries are -inf."""
  s = jnp.einsum('bqhd,bkhd->bhqk', q_BxqxHxK, k_BxkxHxK, preferred_element_type=jnp.float32)
  if not masked:
    return s
  return jnp.where(allowed(q_pos_Bxq, kv_pos_Bxk, key_ok_Bxk)[:, None], s, -jnp.inf)


# ------------------------------------------------------------------ forward and backward


def _flash_forward(q, k, v, q_pos, kv_pos, key_ok, block_q: int, block_k: int):
  """Online softmax over key blocks, per query block: (out [B, S, H, K], lse [B, H, S])."""
  batch, q_len, heads, head_dim = q.shape
  num_k = k.shape[1] // block_k

  def query_block(i):
    q_i, q_pos_i = _block(q, i, block_q), _block(q_pos, i, block_q)

    def key_block(j, carry):
      k_j, v_j = _block(k, j, block_k), _block(v, j, block_k)
      kv_pos_j, key_ok_j = _block(kv_pos, j, block_k), _block(key_ok, j, block_k)

      def visit(carry, masked: bool = True):
        m, denom, acc = carry
        s = _scores(q_i, k_j, q_pos_i, kv_pos_j, key_ok_j, masked)
        m_new = jnp.maximum(m, s.max(-1))
        p = jnp.exp(s - m_new[..., None])
        correction = jnp.exp(m - m_new)
        pv = jnp.einsum(
          'bhqk,bkhd->bhqd', p.astype(v_j.dtype), v_j, preferred_element_type=jnp.float32
        )
        return m_new, denom * correction + p.sum(-1), acc * correction[..., None] + pv

      branches = (lambda c: c, functools.partial(visit, masked=False), visit)
      return jax.lax.switch(_block_kind(q_pos_i, kv_pos_j, key_ok_j), branches, carry)

    # -1e30 rather than -inf: a row whose keys so far are all hidden keeps exp(m - m_new) = 1.
    m0 = jnp.full((batch, heads, block_q), -1e30, jnp.float32)
    denom0 = jnp.zeros((batch, heads, block_q), jnp.float32)
    acc0 = jnp.zeros((batch, heads, block_q, head_dim), jnp.float32)
    m, denom, acc = jax.lax.fori_loop(0, num_k, key_block, (m0, denom0, acc0))
    seen = denom > 0  # false only for padded queries
    safe = jnp.where(seen, denom, 1.0)
    out_BxqxHxK = (acc / safe[..., None]).transpose(0, 2, 1, 3).astype(q.dtype)
    return out_BxqxHxK, jnp.where(seen, m + jnp.log(safe), jnp.inf)

  num_q = q_len // block_q
  if num_q == 1:
    return query_block(0)
  out_b, lse_b = jax.lax.map(query_block, jnp.arange(num_q))
  out = jnp.moveaxis(out_b, 0, 1).reshape(q.shape)
  return out, jnp.moveaxis(lse_b, 0, 2).reshape(batch, heads, q_len)


def _flash_backward(
  q, k, v, q_pos, kv_pos, key_ok, out, lse, d_out, block_q: int, block_k: int, finish, acc0
):
  """FlashAttention-2 backward. Outer loop over key blocks, inner over query blocks; each
  key block's complete float32 (dk_j, dv_j) go to `acc = finish(j, dk_j, dv_j, acc)`.
  Returns (dq, acc)."""
  delta_BxHxS = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), -1)
  delta_BxHxS = delta_BxHxS.transpose(0, 2, 1)
  num_q, num_k = q.shape[1] // block_q, k.shape[1] // block_k

  def key_block(j, carry):
    dq, acc = carry
    k_j, v_j = _block(k, j, block_k), _block(v, j, block_k)
    kv_pos_j, key_ok_j = _block(kv_pos, j, block_k), _block(key_ok, j, block_k)

    def query_block(i, inner):
      dq, dk_j, dv_j = inner
      q_i, do_i, q_pos_i = (_block(x, i, block_q) for x in (q, d_out, q_pos))
      lse_i, delta_i = _block(lse, i, block_q, 2), _block(delta_BxHxS, i, block_q, 2)

      def visit(masked: bool):
        s = _scores(q_i, k_j, q_pos_i, kv_pos_j, key_ok_j, masked)
        p = jnp.exp(s - lse_i[..., None])  # [B, H, q, k] float32
        f32 = dict(preferred_element_type=jnp.float32)
        dv = jnp.einsum('bhqk,bqhd->bkhd', p.astype(do_i.dtype), do_i, **f32)
        dp = jnp.einsum('bqhd,bkhd->bhqk', do_i, v_j, **f32)
        ds = (p * (dp - delta_i[..., None])).astype(q_i.dtype)
        dq_i = jnp.einsum('bhqk,bkhd->bqhd', ds, k_j, **f32)
        return dq_i, jnp.einsum('bhqk,bqhd->bkhd', ds, q_i, **f32), dv

      def skip():
        return jnp.zeros(q_i.shape, jnp.float32), jnp.zeros_like(dk_j), jnp.zeros_like(dv_j)

      branches = (skip, functools.partial(visit, masked=False), functools.partial(visit, True))
      dq_i, dk, dv = jax.lax.switch(_block_kind(q_pos_i, kv_pos_j, key_ok_j), branches)
      dq = _write_block(dq, _block(dq, i, block_q) + dq_i, i, block_q)
      return dq, dk_j + dk, dv_j + dv

    zeros = jnp.zeros(k_j.shape, jnp.float32)
    dq, dk_j, dv_j = jax.lax.fori_loop(0, num_q, query_block, (dq, zeros, zeros))
    return dq, finish(j, dk_j, dv_j, acc)

  return jax.lax.fori_loop(0, num_k, key_block, (jnp.zeros(q.shape, jnp.float32), acc0))


# ------------------------------------------------------------------ attention over k, v


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _flash(q, k, v, q_pos, kv_pos, key_ok, block_q: int, block_k: int):
  """Attention over [B, S, H, K] / [B, T, H, K] inputs, S and T whole blocks; q pre-scaled."""
  return _flash_forward(q, k, v, q_pos, kv_pos, key_ok, block_q, block_k)[0]


def _flash_fwd_rule(q, k, v, q_pos, kv_pos, key_ok, block_q, block_k):
  out, lse = _flash_forward(q, k, v, q_pos, kv_pos, key_ok, block_q, block_k)
  return out, (q, k, v, q_pos, kv_pos, key_ok, out, lse)


def _flash_bwd_rule(block_q, block_k, residuals, d_out):
  q, k, v = residuals[:3]

  def finish(j, dk_j, dv_j, dkv):
    return tuple(_write_block(g, gj, j, block_k) for g, gj in zip(dkv, (dk_j, dv_j), strict=True))

  dkv0 = (jnp.zeros(k.shape, k.dtype), jnp.zeros(v.shape, v.dtype))
  dq, (dk, dv) = _flash_backward(*residuals, d_out, block_q, block_k, finish, dkv0)
  return dq.astype(q.dtype), dk, dv, None, None, None


_flash.defvjp(_flash_fwd_rule, _flash_bwd_rule)


# ------------------------------------------------------------------ keys/values projected from x


def projected_chunked_attention(
  q_BxSxHxK: jax.Array,
  x_BxTxD: jax.Array,
  kv_params: dict,
  mask: AttentionMask,
  *,
  rotary: tuple[float, float, str] | None,
  dtype=jnp.float32,
  layer_norm_epsilon: float = 1e-6,
  block_q: int | None = None,
  block_k: int | None = None,
) -> jax.Array:
  """Attention of q over keys/values made from x, O(S * block) memory beyond x, k and v.

  kv_params = {'ln': LayerNorm params, 'key': ..., 'value': DenseGeneral (D -> [H, K])
  params}: k = rotary(LN(x) W_k + b_k), v = LN(x) W_v + b_v, as `blocks.AttentionBlock`
  computes them, with `rotary` = (fraction, max_wavelength, convention) or None and the
  LayerNorm's `layer_norm_epsilon`. Returns [B, S, H, K].
  """
  q, positions, bq, bk, pad_k = _padded_inputs(q_BxSxHxK, x_BxTxD.shape[1], mask, block_q, block_k)
  x = _pad_seq(x_BxTxD, pad_k)
  static = (bq, bk, rotary, jnp.dtype(dtype), float(layer_norm_epsilon))
  return _projected_flash(q, x, kv_params, *positions, *static)[:, : q_BxSxHxK.shape[1]]


def _layer_norm(params, x, dtype, epsilon):
  layer_norm = nn.LayerNorm(epsilon=epsilon, dtype=dtype, param_dtype=jnp.float32, parent=None)
  return layer_norm.apply({'params': params}, x)


def _project(params, h_BxTxD, dtype):
  """Dense D -> [H, K] in `dtype`, as flax's DenseGeneral computes it."""
  kernel, bias = params['kernel'].astype(dtype), params['bias'].astype(dtype)
  return jnp.einsum('btd,dhk->bthk', h_BxTxD.astype(dtype), kernel) + bias


def _rotate(x_BxTxHxK, positions_BxT, rotary):
  return x_BxTxHxK if rotary is None else apply_rotary(x_BxTxHxK, positions_BxT, *rotary)


def _keys_values(params, x, kv_pos, rotary, dtype, epsilon):
  h = _layer_norm(params['ln'], x, dtype, epsilon)
  k = _rotate(_project(params['key'], h, dtype), kv_pos, rotary)
  return k, _project(params['value'], h, dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9, 10))
def _projected_flash(q, x, params, q_pos, kv_pos, key_ok, block_q, block_k, rotary, dtype, eps):
  k, v = _keys_values(params, x, kv_pos, rotary, dtype, eps)
  return _flash_forward(q, k, v, q_pos, kv_pos, key_ok, block_q, block_k)[0]


def _projected_fwd_rule(q, x, params, q_pos, kv_pos, key_ok, block_q, block_k, rotary, dtype, eps):
  k, v = _keys_values(params, x, kv_pos, rotary, dtype, eps)
  out, lse = _flash_forward(q, k, v, q_pos, kv_pos, key_ok, block_q, block_k)
  return out, (q, x, params, k, v, q_pos, kv_pos, key_ok, out, lse)


def _projected_bwd_rule(block_q, block_k, rotary, dtype, eps, residuals, d_out):
  q, x, params, k, v, q_pos, kv_pos, key_ok, out, lse = residuals
  f32 = dict(preferred_element_type=jnp.float32)

  def finish(j, dk_j, dv_j, acc):
    """dk_j, dv_j -> through rotary (its transpose: the rotation by -angle), the two dense
    projections and the LayerNorm, into dx's block j and the parameter gradients."""
    dx, grads = acc
    x_j, kv_pos_j = _block(x, j, block_k), _block(kv_pos, j, block_k)
    h_j, ln_vjp = jax.vjp(lambda p, x: _layer_norm(p, x, dtype, eps), params['ln'], x_j)
    dk_j = _rotate(dk_j, -kv_pos_j, rotary).astype(dtype)
    dv_j = dv_j.astype(dtype)
    dh_j = jnp.einsum('bthk,dhk->btd', dk_j, params['key']['kernel'].astype(dtype), **f32)
    dh_j += jnp.einsum('bthk,dhk->btd', dv_j, params['value']['kernel'].astype(dtype), **f32)
    d_ln, dx_j = ln_vjp(dh_j.astype(h_j.dtype))
    step = {'ln': d_ln}
    for name, d_j in (('key', dk_j), ('value', dv_j)):
      step[name] = {
        'kernel': jnp.einsum('btd,bthk->dhk', h_j, d_j, **f32),
        'bias': jnp.sum(d_j.astype(jnp.float32), axis=(0, 1)),
      }
    grads = jax.tree.map(lambda g, s: g + s.astype(g.dtype), grads, step)
    return _write_block(dx, dx_j, j, block_k), grads

  acc0 = (jnp.zeros(x.shape, x.dtype), jax.tree.map(jnp.zeros_like, params))
  dq, (dx, d_params) = _flash_backward(
    q, k, v, q_pos, kv_pos, key_ok, out, lse, d_out, block_q, block_k, finish, acc0
  )
  return dq.astype(q.dtype), dx, d_params, None, None, None


_projected_flash.defvjp(_projected_fwd_rule, _projected_bwd_rule)
