"""Data parallelism over every device of every process: one Mesh, batch on the 'data' axis.

JAX implements pmap on top of jit + shard_map; we use `jax.jit` over a `Mesh` with
`NamedSharding` directly. Parameters and optimizer state are replicated; each process feeds
only its own rows of the global batch (`jax.make_array_from_process_local_data`).
"""

from __future__ import annotations

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from perceiver_ar_vl import errors

DATA_AXIS = 'data'


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


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
  """The global batch is split evenly over every device: raises UserError if it cannot be."""
  devices = mesh.devices.size
  if global_batch % devices:
    raise errors.UserError(
      f'train.batch_size={global_batch} must be divisible by the number of '
      f'devices ({devices}), which share it evenly; use a multiple of {devices}.'
    )


def global_batch(local_rows: np.ndarray, mesh: Mesh) -> jax.Array:
  """This process's rows [global_batch / process_count, ...] as one global sharded array."""
  return jax.make_array_from_process_local_data(batch_sharded(mesh), local_rows)
