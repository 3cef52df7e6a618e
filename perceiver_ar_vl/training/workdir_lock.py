"""One training run per workdir: `<workdir>/train.lock`, held while a process trains there.

Two launches on one workdir would both write its checkpoints, metrics and config, and each
would delete what it takes for the other's unfinished saves. So `held(workdir)` takes an
exclusive `flock` on the lock file before training writes or cleans anything in the workdir,
and writes the holder's pid, host and start time into it; a second process finds the lock
taken and stops at once with one line (`WorkdirBusyError`) naming the holder, touching nothing.

The kernel releases a flock when its holder dies, SIGKILL included: a killed run leaves the
file (with the dead holder's details) but no lock, and the rerun takes it. A finished run
empties the file. The file itself is never deleted (a process could lock a deleted file while
another creates a new one: both would train).

Several processes (`jax.distributed`) train one run in one workdir: only process 0 locks, and
tells the others whether it could (a collective), so a second multi-process launch stops on
every process. The lock holds across hosts as far as the filesystem's flock does (local disks
and NFSv4 do). Where there is no `fcntl` (Windows) or the filesystem refuses flock, training
runs unlocked, with a warning.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator

import jax
import numpy as np
from absl import logging

from perceiver_ar_vl import errors

try:
  import fcntl
except ImportError:  # Windows: no flock
  fcntl = None

LOCK_FILE = 'train.lock'


class WorkdirBusyError(errors.UserError):
  """Another live process is training in the workdir."""


def lock_path(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), LOCK_FILE)


def _holder(fd: int, workdir: str) -> str:
  """'process 12345 on host h (since 2026-01-01 12:00:00)' from the lock file, or what is
  known when the holder has not written it yet."""
  try:
    info = json.loads(os.pread(fd, 4096, 0).decode() or '{}')
    return f'process {info["pid"]} on host {info["host"]} (since {info["since"]})'
  except (OSError, ValueError, KeyError, TypeError):
    return f'another process (it holds {lock_path(workdir)})'


def acquire(workdir: str) -> int | None:
  """Locks `workdir` for this process: the lock file's descriptor, to pass to `release`
  (None without fcntl). Raises WorkdirBusyError when a live process holds it."""
  if fcntl is None:
    logging.warning('No fcntl here: %s is not locked against a second training run.', workdir)
    return None
  os.makedirs(workdir, exist_ok=True)
  fd = os.open(lock_path(workdir), os.O_RDWR | os.O_CREAT, 0o644)  # never truncated unlocked
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = _holder(fd, workdir)
    os.close(fd)
    raise WorkdirBusyError(
      f'{workdir} is being trained by {holder}; wait for it to finish, stop it, or use '
      'another --workdir.'
    ) from None
  except OSError as e:  # a filesystem without flock (some FUSE mounts)
    os.close(fd)
    logging.warning('Cannot lock %s (%s): training there unlocked.', lock_path(workdir), e)
    return None
  since = time.strftime('%Y-%m-%d %H:%M:%S %Z')
  info = {'pid': os.getpid(), 'host': socket.gethostname(), 'since': since}
  os.ftruncate(fd, 0)  # a killed holder's details
  os.pwrite(fd, json.dumps(info).encode(), 0)
  return fd


def release(fd: int | None) -> None:
  """Empties the lock file and releases the lock (closing the descriptor)."""
  if fd is None:
    return
  with contextlib.suppress(OSError):
    os.ftruncate(fd, 0)
  os.close(fd)  # releases the flock


@contextlib.contextmanager
def held(workdir: str) -> Iterator[None]:
  """Holds `workdir`'s lock (process 0 of a multi-process run for all of them) for the block;
  raises WorkdirBusyError on every process when another run holds it."""
  fd, failed = None, None
  if jax.process_index() == 0:
    try:
      fd = acquire(workdir)
    except Exception as e:  # re-raised below, once the other processes heard of it
      failed = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    locked = multihost_utils.broadcast_one_to_all(np.int32(failed is None))
    if failed is None and not int(locked):
      raise WorkdirBusyError(
        f'Process 0 could not lock {workdir} (its log says why: most likely another run is '
        'training there); wait for that run, stop it, or use another --workdir.'
      )
  if failed is not None:
    raise failed
  try:
    yield
  finally:
    release(fd)
