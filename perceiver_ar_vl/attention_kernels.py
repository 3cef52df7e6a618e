"""Attention kernels behind one function, `dot_product_attention`, and the masks they share.

A mask is never passed around as a dense [B, S, T] boolean: `AttentionMask` holds the query
positions, key positions and a per-key usability flag, and each kernel builds the part of the
mask it needs from them. Every model's mask has the same form,

    query at position p sees the key at position t  <=>  t <= p  and  (key usable or t == p),

(the "or t == p" keeps every row non-empty, so a padded query never produces NaN).

Kernels (`model.attention_impl`):
  * ``'einsum'``  — plain einsum/softmax, the numerical reference; materialises [B, H, S, T].
  * ``'xla'``     — `jax.nn.dot_product_attention`, XLA implementation (dense, fused softmax).
  * ``'cudnn'``   — `jax.nn.dot_product_attention` through cuDNN flash attention (GPU, bf16/fp16).
  * ``'chunked'`` — memory-efficient attention (Rabe & Staats 2021; the FlashAttention-2
    loop order): an online softmax over key blocks, one query block at a time, with a
    `custom_vjp` whose backward recomputes each block's scores from the saved log-sum-exp.
    Memory O(S * block) instead of O(S * T); blocks that the causal mask hides entirely are
    skipped in both passes.
  * ``'auto'``    — `select_impl` picks one of the above per backend and shape.
"""

from __future__ import annotations

import functools
from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

AttentionImpl = Literal['auto', 'einsum', 'xla', 'cudnn', 'chunked']
ATTENTION_IMPLS = ('auto', 'einsum', 'xla', 'cudnn', 'chunked')

# 'auto' uses a dense kernel while the score tensor [B, H, S, T] of one layer has at most this
# many elements (2^22: 16 MiB in float32), the chunked kernel above it. On the CPU the chunked
# kernel is already as fast as the dense ones at the seed model's M = N = 1024 and faster beyond
# (`python benchmarks/context_scaling.py --kernels`); the dense einsum wins only on small shapes
# such as the :cpu preset's, where the loop's fixed cost shows.
AUTO_DENSE_MAX_SCORES = 1 << 22
# cuDNN gets the mask as a [B, 1, S, T] bias: keep that bias below this many elements.
AUTO_CUDNN_MAX_BIAS = 1 << 27
DEFAULT_BLOCK_Q = 1024
DEFAULT_BLOCK_K = 1024

_NO_KEY = np.iinfo(np.int32).max  # position of a padding key: after every query


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


def select_impl(
  backend: str, dtype, batch: int, num_heads: int, q_len: int, kv_len: int, head_dim: int
) -> str:
  """The kernel that `'auto'` runs for these shapes on `backend` ('cpu', 'gpu', 'tpu').

  * GPU, bf16/fp16, head_dim a multiple of 8 up to 128, and a [B, 1, S, T] mask bias of at
    most `AUTO_CUDNN_MAX_BIAS` elements: ``'cudnn'`` (flash attention);
  * otherwise a score tensor [B, H, S, T] of at most `AUTO_DENSE_MAX_SCORES` elements: a
    dense kernel, ``'einsum'`` on the CPU (measured faster there), ``'xla'`` elsewhere;
  * otherwise ``'chunked'`` (memory O(S * block), what long windows need).
  """
  half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  if (
    backend == 'gpu'
    and half
    and head_dim % 8 == 0
    and head_dim <= 128
    and batch * q_len * kv_len <= AUTO_CUDNN_MAX_BIAS
  ):
    return 'cudnn'
  if batch * num_heads * q_len * kv_len <= AUTO_DENSE_MAX_SCORES:
    return 'einsum' if backend == 'cpu' else 'xla'
  return 'chunked'


def resolve_impl(impl: str, q_BxSxHxK: jax.Array, k_BxTxHxK: jax.Array) -> str:
  """`impl`, with ``'auto'`` replaced by `select_impl`'s choice for the current backend."""
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f'Unknown attention_impl {impl!r}; choose one of {ATTENTION_IMPLS}.')
  if impl != 'auto':
    return impl
  batch, q_len, heads, head_dim = q_BxSxHxK.shape
  return select_impl(
    jax.default_backend(), q_BxSxHxK.dtype, batch, heads, q_len, k_BxTxHxK.shape[1], head_dim
  )


def dot_product_attention(
  q_BxSxHxK: jax.Array,
  k_BxTxHxK: jax.Array,
  v_BxTxHxK: jax.Array,
  mask: AttentionMask,
  impl: AttentionImpl = 'auto',
) -> jax.Array:
  """softmax(q k^T / sqrt(K)) v over the keys that `mask` allows. Returns [B, S, H, K]."""
  impl = resolve_impl(impl, q_BxSxHxK, k_BxTxHxK)
  if impl == 'chunked':
    return chunked_attention(q_BxSxHxK, k_BxTxHxK, v_BxTxHxK, mask)
  if impl == 'einsum':
    return einsum_attention(q_BxSxHxK, k_BxTxHxK, v_BxTxHxK, mask.dense())
  return jax.nn.dot_product_attention(
    q_BxSxHxK, k_BxTxHxK, v_BxTxHxK, mask=mask.dense()[:, None], implementation=impl
  )


def einsum_attention(
  q_BxSxHxK: jax.Array, k_BxTxHxK: jax.Array, v_BxTxHxK: jax.Array, mask_BxSxT: jax.Array
) -> jax.Array:
  """The reference: dense scores in float32, masked, softmax, weighted sum of values."""
  scale = q_BxSxHxK.shape[-1] ** -0.5
  logits_BxHxSxT = (
    jnp.einsum('bshk,bthk->bhst', q_BxSxHxK, k_BxTxHxK, preferred_element_type=jnp.float32) * scale
  )
  logits_BxHxSxT = jnp.where(mask_BxSxT[:, None], logits_BxHxSxT, jnp.finfo(jnp.float32).min)
  probs_BxHxSxT = jax.nn.softmax(logits_BxHxSxT, axis=-1).astype(v_BxTxHxK.dtype)
  return jnp.einsum('bhst,bthk->bshk', probs_BxHxSxT, v_BxTxHxK)


# ------------------------------------------------------------------ chunked (memory-efficient)


def chunked_attention(
  q_BxSxHxK: jax.Array,
  k_BxTxHxK: jax.Array,
  v_BxTxHxK: jax.Array,
  mask: AttentionMask,
  block_q: int | None = None,
  block_k: int | None = None,
) -> jax.Array:
  """Memory-efficient attention: same result as `einsum_attention`, O(S * block) memory.

  Queries are cut into blocks of `block_q`, keys into blocks of `block_k` (both padded up to
  a whole number of blocks: padded keys sit after every query and are never usable, padded
  queries are dropped from the result). Block sizes default to `DEFAULT_BLOCK_Q/K`.
  """
  batch, q_len, heads, head_dim = q_BxSxHxK.shape
  kv_len = k_BxTxHxK.shape[1]
  bq = min(block_q or DEFAULT_BLOCK_Q, q_len)
  bk = min(block_k or DEFAULT_BLOCK_K, kv_len)
  pad_q, pad_k = -q_len % bq, -kv_len % bk

  def heads_first(x_BxTxHxK, pad):  # [B, T, H, K] -> [B, H, T + pad, K]
    return jnp.pad(x_BxTxHxK, ((0, 0), (0, pad), (0, 0), (0, 0))).transpose(0, 2, 1, 3)

  q_BxHxSxK = heads_first(q_BxSxHxK * jnp.asarray(head_dim**-0.5, q_BxSxHxK.dtype), pad_q)
  k_BxHxTxK, v_BxHxTxK = heads_first(k_BxTxHxK, pad_k), heads_first(v_BxTxHxK, pad_k)
  q_pos_BxS = jnp.pad(mask.q_pos_BxS, ((0, 0), (0, pad_q)), constant_values=-1)
  kv_pos_BxT = jnp.pad(mask.kv_pos_BxT, ((0, 0), (0, pad_k)), constant_values=_NO_KEY)
  key_ok_BxT = jnp.pad(mask.key_ok_BxT, ((0, 0), (0, pad_k)), constant_values=False)
  out_BxHxSxK = _flash(q_BxHxSxK, k_BxHxTxK, v_BxHxTxK, q_pos_BxS, kv_pos_BxT, key_ok_BxT, bq, bk)
  return out_BxHxSxK[:, :, :q_len].transpose(0, 2, 1, 3)


def _blocks(x, block: int, axis: int):
  """Splits `axis` into [n, block] and moves n to the front (the scan axis)."""
  shape = x.shape[:axis] + (x.shape[axis] // block, block) + x.shape[axis + 1 :]
  return jnp.moveaxis(x.reshape(shape), axis, 0)


def _unblocks(x, axis: int):
  """Inverse of `_blocks`."""
  x = jnp.moveaxis(x, 0, axis)
  return x.reshape(x.shape[:axis] + (-1,) + x.shape[axis + 2 :])


def _block_allowed(q_pos_Bxq, kv_pos_Bxk, key_ok_Bxk):
  """[B, 1, q, k] mask of one (query block, key block) pair."""
  q = q_pos_Bxq[:, None, :, None]
  k = kv_pos_Bxk[:, None, None, :]
  return (k <= q) & (key_ok_Bxk[:, None, None, :] | (k == q))


def _block_visible(q_pos_Bxq, kv_pos_Bxk):
  """False when the causal mask hides the whole block (every key after every query)."""
  return jnp.min(kv_pos_Bxk) <= jnp.max(q_pos_Bxq)


def _scores(q_BxHxqxK, k_BxHxkxK, q_pos_Bxq, kv_pos_Bxk, key_ok_Bxk):
  """Masked float32 scores [B, H, q, k] of one block; hidden entries are -inf."""
  s = jnp.einsum('bhqd,bhkd->bhqk', q_BxHxqxK, k_BxHxkxK, preferred_element_type=jnp.float32)
  return jnp.where(_block_allowed(q_pos_Bxq, kv_pos_Bxk, key_ok_Bxk), s, -jnp.inf)


def _forward_query_block(q_BxHxqxK, q_pos_Bxq, kb, vb, kv_pos_b, key_ok_b):
  """Online softmax over the key blocks for one query block: (out [B,H,q,K], lse [B,H,q])."""
  batch, heads, bq, head_dim = q_BxHxqxK.shape
  # -1e30 rather than -inf: a row whose keys so far are all hidden keeps exp(m - m_new) = 1.
  m0 = jnp.full((batch, heads, bq), -1e30, jnp.float32)
  denom0 = jnp.zeros((batch, heads, bq), jnp.float32)
  acc0 = jnp.zeros((batch, heads, bq, head_dim), jnp.float32)

  def body(carry, xs):
    k_j, v_j, kv_pos_j, key_ok_j = xs

    def visit(carry):
      m, denom, acc = carry
      s = _scores(q_BxHxqxK, k_j, q_pos_Bxq, kv_pos_j, key_ok_j)
      m_new = jnp.maximum(m, s.max(-1))
      p = jnp.exp(s - m_new[..., None])
      correction = jnp.exp(m - m_new)
      pv = jnp.einsum(
        'bhqk,bhkd->bhqd', p.astype(v_j.dtype), v_j, preferred_element_type=jnp.float32
      )
      return m_new, denom * correction + p.sum(-1), acc * correction[..., None] + pv

    visible = _block_visible(q_pos_Bxq, kv_pos_j)
    return jax.lax.cond(visible, visit, lambda c: c, carry), None

  (m, denom, acc), _ = jax.lax.scan(body, (m0, denom0, acc0), (kb, vb, kv_pos_b, key_ok_b))
  seen = denom > 0  # false only for padded queries
  out = acc / jnp.where(seen, denom, 1.0)[..., None]
  lse = jnp.where(seen, m + jnp.log(jnp.where(seen, denom, 1.0)), jnp.inf)
  return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _flash(q, k, v, q_pos, kv_pos, key_ok, block_q: int, block_k: int):
  """Attention over [B, H, S, K] / [B, H, T, K] inputs; q is already scaled."""
  return _flash_forward(q, k, v, q_pos, kv_pos, key_ok, block_q, block_k)[0]


def _flash_forward(q, k, v, q_pos, kv_pos, key_ok, block_q, block_k):
  kb, vb = _blocks(k, block_k, 2), _blocks(v, block_k, 2)
  kv_pos_b, key_ok_b = _blocks(kv_pos, block_k, 1), _blocks(key_ok, block_k, 1)
  qb, q_pos_b = _blocks(q, block_q, 2), _blocks(q_pos, block_q, 1)
  out_b, lse_b = jax.lax.map(
    lambda a: _forward_query_block(a[0], a[1], kb, vb, kv_pos_b, key_ok_b), (qb, q_pos_b)
  )
  out = _unblocks(out_b, 2).astype(q.dtype)
  return out, (q, k, v, q_pos, kv_pos, key_ok, out, _unblocks(lse_b, 2))


def _flash_fwd_rule(q, k, v, q_pos, kv_pos, key_ok, block_q, block_k):
  return _flash_forward(q, k, v, q_pos, kv_pos, key_ok, block_q, block_k)


def _flash_bwd_rule(block_q, block_k, residuals, d_out):
  """FlashAttention-2 backward: per query block, a scan over key blocks that recomputes the
  probabilities from the saved log-sum-exp; dq is carried, dk/dv summed over query blocks."""
  q, k, v, q_pos, kv_pos, key_ok, out, lse = residuals
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), -1)  # [B, H, S]
  kb, vb = _blocks(k, block_k, 2), _blocks(v, block_k, 2)
  kv_pos_b, key_ok_b = _blocks(kv_pos, block_k, 1), _blocks(key_ok, block_k, 1)
  q_blocks = tuple(_blocks(x, block_q, 2) for x in (q, d_out, lse, delta))
  q_blocks += (_blocks(q_pos, block_q, 1),)

  def per_query_block(dkv, xs):
    q_i, do_i, lse_i, delta_i, q_pos_i = xs

    def per_key_block(dq_i, ys):
      k_j, v_j, kv_pos_j, key_ok_j = ys

      def visit(dq_i):
        s = _scores(q_i, k_j, q_pos_i, kv_pos_j, key_ok_j)
        p = jnp.exp(s - lse_i[..., None])  # [B, H, q, k] float32
        dv_j = jnp.einsum(
          'bhqk,bhqd->bhkd', p.astype(do_i.dtype), do_i, preferred_element_type=jnp.float32
        )
        dp = jnp.einsum('bhqd,bhkd->bhqk', do_i, v_j, preferred_element_type=jnp.float32)
        ds = (p * (dp - delta_i[..., None])).astype(q_i.dtype)
        dq_i = dq_i + jnp.einsum('bhqk,bhkd->bhqd', ds, k_j, preferred_element_type=jnp.float32)
        dk_j = jnp.einsum('bhqk,bhqd->bhkd', ds, q_i, preferred_element_type=jnp.float32)
        return dq_i, (dk_j, dv_j)

      def skip(dq_i):
        zeros = jnp.zeros(k_j.shape, jnp.float32)
        return dq_i, (zeros, zeros)

      return jax.lax.cond(_block_visible(q_pos_i, kv_pos_j), visit, skip, dq_i)

    dq0 = jnp.zeros(q_i.shape, jnp.float32)
    dq_i, (dk_b, dv_b) = jax.lax.scan(per_key_block, dq0, (kb, vb, kv_pos_b, key_ok_b))
    dk, dv = dkv
    return (dk + _unblocks(dk_b, 2), dv + _unblocks(dv_b, 2)), dq_i

  dkv0 = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
  (dk, dv), dq_b = jax.lax.scan(per_query_block, dkv0, q_blocks)
  dq = _unblocks(dq_b, 2)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None, None


_flash.defvjp(_flash_fwd_rule, _flash_bwd_rule)
