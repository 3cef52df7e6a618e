"""Pins parallel.InFlight: loops over the suite's two simulated CPU devices keep few programs
in flight, so XLA:CPU's collectives never wait for a thread that does not come."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from perceiver_ar_vl import parallel


class Outputs:
  """Stands for a program's outputs: records when `jax.block_until_ready` waits for it."""

  def __init__(self, name: str, waited: list[str]):
    self.name, self.waited = name, waited

  def block_until_ready(self):
    self.waited.append(self.name)
    return self


def test_in_flight_waits_for_the_oldest_beyond_its_limit_on_a_cpu_mesh():
  in_flight, waited = parallel.InFlight(parallel.make_mesh(), limit=3), []
  for i in range(6):
    in_flight.add(Outputs(f'step {i}', waited))
    assert waited == [f'step {j}' for j in range(i - 2)]  # at most 3 held: the oldest waited
  assert parallel.InFlight(parallel.make_mesh()).limit == parallel.CPU_PROGRAMS_IN_FLIGHT


def test_in_flight_never_waits_on_one_device():
  one_device = Mesh(np.asarray(jax.devices()[:1]), (parallel.DATA_AXIS,))
  in_flight, waited = parallel.InFlight(one_device), []
  for i in range(50):
    in_flight.add(Outputs(f'step {i}', waited))
  assert in_flight.limit == 0 and waited == []


def test_a_loop_of_collectives_over_two_cpu_devices_runs_to_its_end():
  """100 independent programs, each a few matmuls on the batch split between the two devices
  and a sum over the batch (an all-reduce), dispatched as an evaluation does. Without
  InFlight, XLA:CPU aborts this process after 40 s: a collective waits for a thread that its
  partner's device holds."""
  mesh = parallel.make_mesh()

  @functools.partial(jax.jit, out_shardings=parallel.replicated(mesh))
  def batch_sum(x_BxD, w_DxD):
    for _ in range(4):
      x_BxD = jnp.tanh(x_BxD @ w_DxD)
    return x_BxD.sum(0)

  x_BxD = jax.device_put(np.full((64, 512), 0.5, np.float32), parallel.batch_sharded(mesh))
  w_DxD = jax.device_put(np.full((512, 512), 1e-3, np.float32), parallel.replicated(mesh))
  in_flight, sums = parallel.InFlight(mesh), []
  for _ in range(100):
    sums.append(batch_sum(x_BxD, w_DxD))
    in_flight.add(sums[-1])
  expected = 0.5
  for _ in range(4):
    expected = np.tanh(512 * 1e-3 * expected)
  np.testing.assert_allclose(np.sum(jax.device_get(sums), axis=0), 100 * 64 * expected, rtol=1e-4)
