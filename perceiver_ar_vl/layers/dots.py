"""Matmuls in a low-precision compute dtype (bfloat16, float16) that accumulate in float32,
forward and backward: `accumulating_einsum`, and `accumulating_dot_general` for flax's
`nn.Dense(dot_general=...)`.

Why: XLA:CPU (jax 0.10.2) runs a bf16 x bf16 dot on its fast library path (YNNPACK, which
uses the AVX512-BF16 / AMX instructions where the CPU has them) only when the dot's result is
float32. A dot whose result is bf16 falls back to a generic loop that is slower than the
float32 matmul (2048^3 on a 2-core Xeon with AMX: bf16 -> bf16 about 0.8x the f32 rate,
bf16 -> f32 4-5x it; `benchmarks/vs_lucidrains.py` prints both). Autodiff alone would
also give the backward pass bf16-output dots (the transpose of a dot keeps its output dtype).
So each dot here asks for a float32 result and rounds it once to the compute dtype, and its
custom backward does the same for the two transposed dots. In float32 nothing changes: the
plain `lax.dot_general` / `jnp.einsum` runs.

On GPU and TPU a bf16 dot already accumulates in float32 inside the library and its bf16
result is the fast path, so there the plain dot runs (`accumulates` is False); only the
attention scores of low-precision queries and keys, which are float32 on every backend, use
`accumulating_einsum` everywhere (its backward then keeps the inputs' dtype).
"""

from __future__ import annotations

import functools
import string

import jax
import jax.numpy as jnp
from jax import lax

LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def accumulates(a: jax.Array, b: jax.Array) -> bool:
  """Whether a dot of `a` and `b` takes the float32-accumulating path: both in the same
  low-precision dtype, on the CPU backend (module docstring)."""
  return (
    a.dtype == b.dtype and jnp.dtype(a.dtype) in LOW_PRECISION and jax.default_backend() == 'cpu'
  )


def accumulating_einsum(spec: str, a: jax.Array, b: jax.Array, out_dtype=None) -> jax.Array:
  """einsum(spec, a, b) accumulated in float32 and rounded once to `out_dtype` (default: the
  inputs' dtype), with a backward pass whose two dots do the same (into a's and b's dtypes).
  Every index of an input must appear in the other input or the output (a plain contraction,
  as dot_general computes)."""
  inputs, out = spec.split('->')
  spec_a, spec_b = inputs.split(',')
  if not set(spec_a) <= set(spec_b + out) or not set(spec_b) <= set(spec_a + out):
    raise ValueError(f'accumulating_einsum needs a plain contraction, got {spec!r}.')
  out_dtype = jnp.dtype(out_dtype or jnp.result_type(a, b))
  return _einsum(spec, out_dtype, a, b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _einsum(spec, out_dtype, a, b):
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32).astype(out_dtype)


def _einsum_fwd(spec, out_dtype, a, b):
  return _einsum(spec, out_dtype, a, b), (a, b)


def _einsum_bwd(spec, out_dtype, residuals, g):
  del out_dtype
  a, b = residuals
  inputs, out = spec.split('->')
  spec_a, spec_b = inputs.split(',')
  g = g.astype(jnp.result_type(a, b))
  da = _contraction(out, g, spec_b, b, spec_a).astype(a.dtype)
  db = _contraction(spec_a, a, out, g, spec_b).astype(b.dtype)
  return da, db


def _contraction(spec_x: str, x: jax.Array, spec_y: str, y: jax.Array, out: str) -> jax.Array:
  """einsum(f'{spec_x},{spec_y}->{out}', x, y) accumulated in float32, on the CPU with x's
  contracted axes moved last first: XLA:CPU's library path takes a bf16 dot whose left operand
  contracts a leading axis only sometimes, and its fallback (DotThunk) has no bf16 x bf16 ->
  f32. Elsewhere the dot library takes any layout, so XLA places the axes itself."""
  kept = [c for c in spec_x if c in out]
  order = kept + [c for c in spec_x if c not in out]
  if order != list(spec_x) and accumulates(x, y):
    x = lax.optimization_barrier(jnp.transpose(x, [spec_x.index(c) for c in order]))
    spec_x = ''.join(order)
  return jnp.einsum(f'{spec_x},{spec_y}->{out}', x, y, preferred_element_type=jnp.float32)


_einsum.defvjp(_einsum_fwd, _einsum_bwd)


def dot_general_spec(lhs_ndim: int, rhs_ndim: int, dimension_numbers) -> str:
  """The einsum spec of `lax.dot_general` with these dimension numbers (output: batch, then
  lhs free, then rhs free axes, as dot_general orders them)."""
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  letters = iter(string.ascii_letters)
  lhs, rhs = [''] * lhs_ndim, [''] * rhs_ndim
  for i, j in [
    *zip(lhs_batch, rhs_batch, strict=True),
    *zip(lhs_contract, rhs_contract, strict=True),
  ]:
    lhs[i] = rhs[j] = next(letters)
  lhs = [c or next(letters) for c in lhs]
  rhs = [c or next(letters) for c in rhs]
  out = [lhs[i] for i in lhs_batch]
  out += [c for i, c in enumerate(lhs) if i not in (*lhs_batch, *lhs_contract)]
  out += [c for i, c in enumerate(rhs) if i not in (*rhs_batch, *rhs_contract)]
  return f'{"".join(lhs)},{"".join(rhs)}->{"".join(out)}'


def accumulating_dot_general(
  lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kwargs
) -> jax.Array:
  """`lax.dot_general`, through `accumulating_einsum` where `accumulates(lhs, rhs)` and no
  result type is asked for: what flax's Dense layers take as `dot_general`."""
  if preferred_element_type is not None or precision is not None or not accumulates(lhs, rhs):
    return lax.dot_general(
      lhs,
      rhs,
      dimension_numbers,
      precision,
      preferred_element_type=preferred_element_type,
      **kwargs,
    )
  return accumulating_einsum(dot_general_spec(lhs.ndim, rhs.ndim, dimension_numbers), lhs, rhs)
