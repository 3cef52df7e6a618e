"""The host side of a training run: batches put on the device ahead of their step, the
device scalars of the latent counts, and the SIGTERM/SIGINT stop that every process agrees
on (the compiled steps: `training.compiled_steps`; what the run reports: `training.progress`).
`training.run.train` strings these together; each piece is usable (and tested) alone.
"""

from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from perceiver_ar_vl import parallel


class StopSignal:
  """Records SIGTERM/SIGINT so the loop can checkpoint and exit cleanly; a second signal
  stops at once (KeyboardInterrupt), for a Ctrl-C that should not wait for the next step.

  A process started with SIGINT ignored (`nohup`, a shell's background job) keeps ignoring
  it, as Python itself does: a Ctrl-C meant for the terminal's foreground job does not stop
  the run. SIGTERM always asks for a stop. The handlers found are restored on exit."""

  def __init__(self):
    self.received: str | None = None  # the signal's name
    self.number = 0  # its number (0: none), what processes exchange
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      if sig == signal.SIGINT and signal.getsignal(sig) == signal.SIG_IGN:
        continue  # started ignoring Ctrl-C (nohup, a background job): keep ignoring it
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if self.received:
      raise KeyboardInterrupt(f'a second stop signal ({signal.Signals(signum).name})')
    self.received = signal.Signals(signum).name
    self.number = int(signum)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class StopVote:
  """Decides, identically on every process, after which step a signalled run stops.

  A signal reaches one process (a preempted host, Ctrl-C in one terminal). Stopping on its own,
  that process would enter the checkpoint save (a collective) while the others run the next
  step's all-reduce, and the job would hang. So with several processes every step adds an
  all-gather of each process's signal over the mesh: dispatched asynchronously and read one step
  later, it gives every process the same answer after the same step, and the host never waits
  for the step it just dispatched (the stop comes one step after the signal). A single process
  needs no vote: it stops after the step during which the signal came.
  """

  def __init__(self, stop: StopSignal, mesh: Mesh):
    self._stop = stop
    self._mesh = mesh
    self._process_of = [device.process_index for device in mesh.devices.flat]
    self._gather = jax.jit(lambda codes: codes, out_shardings=parallel.replicated(mesh))
    self._ballot: jax.Array | None = None  # the all-gather dispatched after the previous step

  def after_step(self) -> str | None:
    """None to go on; otherwise why to stop, e.g. 'SIGTERM on process 1'."""
    if jax.process_count() == 1:
      return self._stop.received
    previous, self._ballot = self._ballot, self._dispatch()
    if previous is None:
      return None
    codes = np.asarray(previous.addressable_data(0))
    voters = sorted({(self._process_of[i], int(c)) for i, c in enumerate(codes) if c})
    return ', '.join(f'{signal.Signals(c).name} on process {p}' for p, c in voters) or None

  def _dispatch(self) -> jax.Array:
    """Starts the all-gather of every device's copy of its process's signal number."""
    local = np.full((jax.local_device_count(),), self._stop.number, np.int32)
    codes = jax.make_array_from_process_local_data(parallel.batch_sharded(self._mesh), local)
    return self._gather(codes)


class DeviceBatches:
  """The training batches, put on the device by a background thread up to `depth` steps
  before the step that takes them, in order.

  The step then never waits for the host to build or transfer its batch. The thread ends when
  the batches do, on `close` (also on leaving a `with` block, e.g. at a stop or an exception),
  and an error it meets is raised by `__next__` in the training loop.
  """

  _END = object()

  def __init__(self, host_batches: Iterator[np.ndarray], mesh: Mesh, depth: int = 2):
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._closed = threading.Event()
    self._thread = threading.Thread(
      target=self._fill, args=(host_batches, mesh), name='device_batches', daemon=True
    )
    self._thread.start()

  def _fill(self, host_batches: Iterator[np.ndarray], mesh: Mesh) -> None:
    try:
      for rows in host_batches:
        if not self._put(parallel.global_batch(rows, mesh)):
          return
      self._put(self._END)
    except BaseException as e:  # raised again by __next__, in the training loop
      self._put(e)

  def _put(self, item: Any) -> bool:
    """Queues `item` once there is room; False if closed meanwhile."""
    while not self._closed.is_set():
      try:
        self._queue.put(item, timeout=0.05)
        return True
      except queue.Full:
        pass
    return False

  def __iter__(self) -> DeviceBatches:
    return self

  def __next__(self) -> jax.Array:
    item = self._queue.get()
    if item is self._END:
      raise StopIteration
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self) -> None:
    self._closed.set()
    self._thread.join(timeout=60)

  def __enter__(self) -> DeviceBatches:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class DeviceInts:
  """Replicated int32 device scalars, one transfer per distinct value (the latent counts)."""

  def __init__(self, mesh: Mesh):
    self._sharding = parallel.replicated(mesh)
    self._arrays: dict[int, jax.Array] = {}

  def __call__(self, value: int) -> jax.Array:
    if value not in self._arrays:
      self._arrays[value] = jax.device_put(np.int32(value), self._sharding)
    return self._arrays[value]
