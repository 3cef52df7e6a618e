"""Host memory: glibc's malloc keeps large freed blocks for reuse instead of unmapping them.

Why: XLA:CPU allocates each execution's temporary buffers with malloc, about 1 GiB for the
seed model's train step (M 1024, N 256, batch 8). By default glibc serves a block above its
mmap threshold (at most 32 MiB) with a fresh `mmap` and unmaps it when freed, so every step
page-faulted its temporaries in again: ~265,000 minor faults and ~0.45 s of system time per
seed-model step on 2 cores. With the mmap and trim thresholds raised to 2 GiB, a freed block
stays in the process and the next step's allocation reuses it; the cost is that the process
keeps its peak heap resident between steps.

Only blocks allocated from the main thread's arena can be reused this way: glibc's other
arenas hold at most 64 MiB, so a larger block from any other thread is mapped afresh whatever
the thresholds. `runtime.configure_cpu_execution` therefore also runs CPU steps inline on the
calling thread (config key `cpu_execution`), which is what makes this pay. Measured limits: a
process's first one or two steps still fault (the heap settles), and in about one process in
six a 64 MiB test program kept faulting its block in every run (tests/test_host_memory.py);
eight processes of the `:cpu` model's train step all reused theirs.

Nothing is changed off Linux/glibc, or where the environment already tunes malloc
(`GLIBC_TUNABLES` naming glibc.malloc, `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`,
`MALLOC_ARENA_MAX`, a preloaded tcmalloc, jemalloc or mimalloc).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping

# mallopt(3) parameters (glibc's malloc.h) and the value both are raised to.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_BELOW_BYTES = 2**31 - 1  # mallopt takes an int
TUNING_ENV = ('MALLOC_ARENA_MAX', 'MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_')
OTHER_ALLOCATORS = ('tcmalloc', 'jemalloc', 'mimalloc')


def malloc_tuned_elsewhere(environ: Mapping[str, str]) -> bool:
  """Whether `environ` sets how malloc behaves, or preloads another allocator."""
  return (
    'glibc.malloc' in environ.get('GLIBC_TUNABLES', '')
    or any(name in environ for name in TUNING_ENV)
    or any(name in environ.get('LD_PRELOAD', '') for name in OTHER_ALLOCATORS)
  )


def keep_freed_memory(environ: Mapping[str, str] = os.environ) -> bool:
  """Raises glibc's mmap and trim thresholds to 2 GiB (module docstring); returns whether it
  did. Applies to allocations made from now on."""
  if not sys.platform.startswith('linux') or malloc_tuned_elsewhere(environ):
    return False
  try:
    libc = ctypes.CDLL(None)
  except OSError:
    return False
  if not (hasattr(libc, 'gnu_get_libc_version') and hasattr(libc, 'mallopt')):
    return False  # another C library (musl) without these parameters
  settings = ((M_MMAP_THRESHOLD, KEEP_BELOW_BYTES), (M_TRIM_THRESHOLD, KEEP_BELOW_BYTES))
  return all(libc.mallopt(option, value) == 1 for option, value in settings)
