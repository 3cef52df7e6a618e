"""layers.dots: float32-accumulating bf16 matmuls give autodiff's values and gradients, and
float32 matmuls are left exactly as they were."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from perceiver_ar_vl.layers import dots

SPECS = ['btd,dhk->bthk', 'bthk,hkd->btd', 'bhst,bthk->bshk', 'bshk,bthk->bhst']


def _operands(spec, dtype, seed=0):
  sizes = dict(b=2, t=5, s=5, d=6, h=3, k=4)
  rng = np.random.default_rng(seed)
  a_spec, b_spec = spec.split('->')[0].split(',')
  return [jnp.asarray(rng.normal(size=[sizes[c] for c in s]), dtype) for s in (a_spec, b_spec)]


@pytest.mark.parametrize('spec', SPECS)
def test_bf16_values_and_gradients_match_float32(spec):
  a, b = _operands(spec, jnp.bfloat16)
  loss = lambda f: lambda a, b: jnp.sum(jnp.sin(f(a, b).astype(jnp.float32)))
  ours = jax.jit(
    jax.value_and_grad(loss(lambda a, b: dots.accumulating_einsum(spec, a, b)), (0, 1))
  )
  ref = jax.value_and_grad(
    loss(lambda a, b: jnp.einsum(spec, a.astype(jnp.float32), b.astype(jnp.float32))), (0, 1)
  )
  (value, grads), (ref_value, ref_grads) = ours(a, b), ref(a, b)
  assert grads[0].dtype == grads[1].dtype == jnp.bfloat16
  np.testing.assert_allclose(value, ref_value, rtol=2e-2, atol=5e-2)
  for g, r in zip(grads, ref_grads, strict=True):
    np.testing.assert_allclose(np.float32(g), r, rtol=3e-2, atol=5e-2)


def test_dot_general_spec_and_float32_path_unchanged():
  a, b = _operands('btd,dhk->bthk', jnp.float32)
  numbers = (((2,), (0,)), ((), ()))
  spec = dots.dot_general_spec(3, 3, numbers)
  np.testing.assert_allclose(jnp.einsum(spec, a, b), lax.dot_general(a, b, numbers), rtol=1e-5)
  assert not dots.accumulates(a, b)
  np.testing.assert_array_equal(
    dots.accumulating_dot_general(a, b, numbers), lax.dot_general(a, b, numbers)
  )
  a16, b16 = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
  out = dots.accumulating_dot_general(a16, b16, numbers)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.float32(out), lax.dot_general(a, b, numbers), rtol=2e-2, atol=3e-2)
