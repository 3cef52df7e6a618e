"""Data parallelism over every device of every process: one Mesh, batch on the 'data' axis.

JAX implements pmap on top of jit + shard_map; we use `jax.jit` over a `Mesh` with
`NamedSharding` directly. Parameters and optimizer state are replicated, or with
`train.fsdp=True` sharded over the same 'data' axis (FSDP, `state_shardings`): each array
splits its largest dimension that the device count divides, and XLA all-gathers the
parameters where the step uses them and reduce-scatters their gradients. Each process feeds
only its own rows of the global batch (`jax.make_array_from_process_local_data`).

Work on files that every process shares (preparing a dataset, setting a checkpoint aside) runs
on process 0 while the others wait at a barrier (`process_0_first`, `barrier`).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from perceiver_ar_vl import errors

DATA_AXIS = 'data'
T = TypeVar('T')

# XLA:CPU runs each device's part of a multi-device program on a pool of max(cores, devices)
# threads, and the thread that launches a part waits while its device has 32 programs in
# flight. So with as many devices as cores (two simulated devices on two cores), a loop that
# dispatches more than ~32 programs without reading a result can leave one part of a
# collective waiting for a thread the other part's device holds: XLA aborts the process after
# 40 s ("Termination timeout for all reduce"). Loops over a multi-device CPU mesh keep fewer
# in flight (`InFlight`).
CPU_PROGRAMS_IN_FLIGHT = 8


def initialize_distributed(
  coordinator_address: str = '', num_processes: int = 0, process_id: int = -1
) -> None:
  """Joins JAX's multi-controller runtime; with no arguments JAX auto-detects the cluster
  (SLURM, Cloud TPU, Open MPI...). Call before any other JAX call, once per process."""
  kwargs = {}
  if coordinator_address:
    kwargs = dict(
      coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
  jax.distributed.initialize(**kwargs)
  logging.info(
    'Process %d of %d, %d local / %d global devices.',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


def make_mesh() -> Mesh:
  """A 1-D mesh over all global devices, named 'data'."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the data axis."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def fsdp_sharding(mesh: Mesh, shape: tuple[int, ...]) -> NamedSharding:
  """FSDP placement of one array: its largest dimension that the device count divides is
  split over the data axis (the first such on a tie); an array with none (a scalar, a
  small vector) is replicated."""
  devices = mesh.devices.size
  dims = [i for i, size in enumerate(shape) if size % devices == 0 and size >= devices]
  if devices == 1 or not dims:
    return replicated(mesh)
  dim = max(dims, key=lambda i: (shape[i], -i))
  spec = [None] * len(shape)
  spec[dim] = DATA_AXIS
  return NamedSharding(mesh, PartitionSpec(*spec))


def state_shardings(tree: T, mesh: Mesh, fsdp: bool) -> T:
  """A NamedSharding for each array of `tree` (arrays or ShapeDtypeStructs): replicated,
  or with `fsdp` placed by `fsdp_sharding`. Optimizer moments have their parameter's shape,
  so they are split the same way."""
  if not fsdp:
    return jax.tree.map(lambda _: replicated(mesh), tree)
  return jax.tree.map(lambda leaf: fsdp_sharding(mesh, tuple(leaf.shape)), tree)


def check_batch_size(global_batch: int, mesh: Mesh, grad_accum_steps: int = 1) -> None:
  """The global batch splits evenly over every device, and each process's rows over the
  microbatches: the checks that need the devices (config_lib.validate checks the rest).
  Raises UserError if it cannot be."""
  devices = mesh.devices.size
  if global_batch % devices:
    raise errors.UserError(
      f'train.batch_size={global_batch} must be divisible by the number of '
      f'devices ({devices}), which share it evenly; use a multiple of {devices}.'
    )
  rows = global_batch // jax.process_count()
  if rows % grad_accum_steps:
    raise errors.UserError(
      f'train.batch_size={global_batch} over {jax.process_count()} processes leaves {rows} '
      f'rows per process, not divisible by train.grad_accum_steps={grad_accum_steps}; change '
      'either.'
    )


def global_batch(local_rows: np.ndarray, mesh: Mesh) -> jax.Array:
  """This process's rows [global_batch / process_count, ...] as one global sharded array."""
  return jax.make_array_from_process_local_data(batch_sharded(mesh), local_rows)


class InFlight:
  """Bounds how many programs a loop keeps in flight on a mesh of several local CPU devices
  (CPU_PROGRAMS_IN_FLIGHT says why): `add` each dispatched program's outputs; once more than
  `limit` are held it waits for the oldest. Elsewhere (one local device, an accelerator) it
  holds nothing and never waits, so the host runs as far ahead as JAX lets it."""

  def __init__(self, mesh: Mesh, limit: int = CPU_PROGRAMS_IN_FLIGHT):
    local = mesh.local_devices
    self.limit = limit if len(local) > 1 and local[0].platform == 'cpu' else 0
    self._outputs: collections.deque[Any] = collections.deque()

  def add(self, outputs: Any) -> None:
    if not self.limit:
      return
    self._outputs.append(outputs)
    if len(self._outputs) > self.limit:
      jax.block_until_ready(self._outputs.popleft())


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (which all must call, in the same
  order); a no-op in a single process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def process_0_first(work: Callable[[], T], what: str) -> T:
  """Runs `work` on process 0 while the other processes wait, then on the others.

  For work that writes a directory all processes share (a dataset being prepared): process 0
  writes it once, and the others find it done, so their `work` only reads (if the directory is
  not shared after all, they write their own copy). Every process must call this at the same
  point. If `work` fails on process 0, it raises there and the others raise a UserError naming
  `what` instead of waiting forever.
  """
  if jax.process_count() == 1:
    return work()
  from jax.experimental import multihost_utils

  failed = None
  if jax.process_index() == 0:
    try:
      result = work()
    except BaseException as e:  # re-raised below, after the others heard of it
      failed = e
  ok = multihost_utils.broadcast_one_to_all(np.int32(failed is None))
  if failed is not None:
    raise failed
  if not int(ok):
    raise errors.UserError(f'{what} failed on process 0; its log says why.')
  if jax.process_index() == 0:
    return result
  return work()
