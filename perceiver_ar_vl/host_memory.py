"""Host memory: glibc's malloc keeps the blocks XLA:CPU frees, for the next step to reuse.

Why: XLA:CPU allocates each execution's temporary buffers with malloc, about 1 GiB for the
seed model's train step (M 1024, N 256, batch 8). glibc serves a block that large with a fresh
`mmap` (above its mmap threshold, and always from a thread other than the main one, whose arena
heaps hold at most 64 MiB) and unmaps it when freed, so every step page-faults its
temporaries in again: ~265,000 minor faults and ~0.45 s of system time per seed-model step on
2 cores. With one arena and mmap/trim thresholds above any step's temporaries, freed blocks
stay in the process and the next step reuses them (0 faults; the step 1.08x faster,
docs/performance.md). The cost: the process keeps its peak heap resident instead of returning
it to the system between steps.

`keep_freed_memory()` runs when the package is imported, which is before JAX starts the
threads that allocate (a thread keeps the arena it first allocated from, so a later call does
not reach them). It does nothing off Linux/glibc, where the environment already tunes malloc
(`GLIBC_TUNABLES` naming glibc.malloc, `MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`,
`MALLOC_TRIM_THRESHOLD_`, a preloaded tcmalloc, jemalloc or mimalloc), or with
`PERCEIVER_AR_VL_MALLOC=system`.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping

OPT_OUT_ENV = 'PERCEIVER_AR_VL_MALLOC'  # 'system': leave malloc as the C library sets it
# mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
INT_MAX = 2**31 - 1
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_THRESHOLD, INT_MAX), (M_TRIM_THRESHOLD, INT_MAX))
TUNING_ENV = ('MALLOC_ARENA_MAX', 'MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_')
OTHER_ALLOCATORS = ('tcmalloc', 'jemalloc', 'mimalloc')


def malloc_tuned_elsewhere(environ: Mapping[str, str]) -> bool:
  """Whether the user chose how malloc behaves (or another allocator) in `environ`."""
  return (
    environ.get(OPT_OUT_ENV, '') == 'system'
    or 'glibc.malloc' in environ.get('GLIBC_TUNABLES', '')
    or any(name in environ for name in TUNING_ENV)
    or any(name in environ.get('LD_PRELOAD', '') for name in OTHER_ALLOCATORS)
  )


def keep_freed_memory(environ: Mapping[str, str] = os.environ) -> bool:
  """Sets glibc's malloc to one arena and no mmap/trim of blocks below 2 GiB (module
  docstring); returns whether it did."""
  if not sys.platform.startswith('linux') or malloc_tuned_elsewhere(environ):
    return False
  try:
    libc = ctypes.CDLL(None)
  except OSError:
    return False
  if not (hasattr(libc, 'gnu_get_libc_version') and hasattr(libc, 'mallopt')):
    return False  # another C library (musl) without these parameters
  return all(libc.mallopt(option, value) == 1 for option, value in SETTINGS)
