"""Attention kernels behind one function, `dot_product_attention`, chosen in one place.

Masks arrive as `masks.AttentionMask` (positions and usable-key flags, never a dense [B, S, T]
boolean); each kernel builds the part it needs: the dense ones a [B or 1, S, T] mask, the
fused ones (`xla`, `cudnn`) structural arguments (`fused_mask_args`), the chunked one a mask
per block.

Kernels (`model.attention_impl`):
  * ``'einsum'``  — plain einsum/softmax, the numerical reference; materialises [B, H, S, T].
  * ``'xla'``     — `jax.nn.dot_product_attention`, XLA implementation (dense, fused softmax).
  * ``'cudnn'``   — `jax.nn.dot_product_attention` through cuDNN flash attention (GPU, bf16/fp16).
  * ``'chunked'`` — memory-efficient attention (Rabe & Staats 2021; the FlashAttention-2
    loop order): an online softmax over key blocks, one query block at a time, with a
    `custom_vjp` whose backward recomputes each block's scores from the saved log-sum-exp.
    Memory O(S * block) instead of O(S * T); see `layers/chunked.py`.
  * ``'auto'``    — `select_impl` picks one of the above per backend and shape.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from perceiver_ar_vl.config_choices import ATTENTION_IMPLS
from perceiver_ar_vl.layers.chunked import chunked_attention
from perceiver_ar_vl.layers.dots import LOW_PRECISION, accumulates, accumulating_einsum
from perceiver_ar_vl.layers.masks import AttentionMask

AttentionImpl = Literal['auto', 'einsum', 'xla', 'cudnn', 'chunked']

# 'auto' uses a dense kernel while the score tensor [B, H, S, T] of one layer has at most this
# many elements (2^22: 16 MiB in float32), the chunked kernel above it. On the CPU the chunked
# kernel is already as fast as the dense ones at the seed model's M = N = 1024 and faster beyond
# (`python benchmarks/context_scaling.py --kernels`); the dense einsum wins only on small shapes
# such as the :cpu preset's, where the loop's fixed cost shows.
AUTO_DENSE_MAX_SCORES = 1 << 22
# cuDNN gets the mask as a [B, 1, S, T] bias: keep that bias below this many elements.
AUTO_CUDNN_MAX_BIAS = 1 << 27


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
    q_BxSxHxK,
    k_BxTxHxK,
    v_BxTxHxK,
    implementation=impl,
    **fused_mask_args(mask, q_BxSxHxK.shape[1], k_BxTxHxK.shape[1]),
  )


def fused_mask_args(mask: AttentionMask, q_len: int, kv_len: int) -> dict:
  """`jax.nn.dot_product_attention` mask arguments for `mask` (the 'xla' and 'cudnn' paths).

  An aligned mask (queries at the last S of T positions) is causal by structure: `is_causal`
  when S == T, else `local_window_size=(T, T - S)` (key index <= query index + T - S; note
  `is_causal` alone is top-left aligned, wrong for S < T), which lets cuDNN skip hidden blocks.
  What structure cannot say (unusable keys) goes in a boolean mask [B or 1, 1, S, T] whose
  leading dimension is 1 whenever the mask is the same for every example.
  """
  args = {'mask': mask.dense()[:, None]}
  if mask.aligned:
    args.update(
      {'is_causal': True} if q_len == kv_len else {'local_window_size': (kv_len, kv_len - q_len)}
    )
  return args


def einsum_attention(
  q_BxSxHxK: jax.Array, k_BxTxHxK: jax.Array, v_BxTxHxK: jax.Array, mask_BxSxT: jax.Array
) -> jax.Array:
  """The reference: dense scores in float32, masked, softmax, weighted sum of values."""
  scale = q_BxSxHxK.shape[-1] ** -0.5
  logits_BxHxSxT = _scores_f32('bshk,bthk->bhst', q_BxSxHxK, k_BxTxHxK) * scale
  logits_BxHxSxT = jnp.where(mask_BxSxT[:, None], logits_BxHxSxT, jnp.finfo(jnp.float32).min)
  probs_BxHxSxT = jax.nn.softmax(logits_BxHxSxT, axis=-1).astype(v_BxTxHxK.dtype)
  if accumulates(probs_BxHxSxT, v_BxTxHxK):
    return accumulating_einsum('bhst,bthk->bshk', probs_BxHxSxT, v_BxTxHxK)
  return jnp.einsum('bhst,bthk->bshk', probs_BxHxSxT, v_BxTxHxK)


def _scores_f32(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
  """einsum(spec, a, b) with float32 output (softmax statistics stay float32) and, for
  bf16/fp16 inputs, a backward pass whose matmuls take the inputs' dtype (autodiff alone
  would multiply the float32 cotangent by the bf16 operand, an f32 x bf16 matmul),
  accumulated in float32 (`layers.dots`). Float32 inputs take the plain einsum."""
  if jnp.dtype(jnp.result_type(a, b)) in LOW_PRECISION:
    return accumulating_einsum(spec, a, b, jnp.float32)
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)
