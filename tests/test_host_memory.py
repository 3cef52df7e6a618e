"""host_memory: glibc's malloc keeps freed blocks for reuse, unless the user tunes it."""

import os
import subprocess
import sys
import textwrap

import pytest

from perceiver_ar_vl import host_memory

# Allocates, fills and frees 256 MiB twice in a worker thread (as XLA:CPU's threads allocate a
# step's temporaries) and prints the page faults of the second round.
SCRIPT = textwrap.dedent("""
  import resource, threading
  import numpy as np
  import perceiver_ar_vl  # applies host_memory.keep_freed_memory()

  def work(faults):
    for _ in range(2):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      block = np.ones(1 << 25)
      del block
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

  faults = []
  thread = threading.Thread(target=work, args=(faults,))
  thread.start()
  thread.join()
  print(faults[1])
""")


def second_round_faults(**env) -> int:
  environ = {k: v for k, v in os.environ.items() if k != host_memory.OPT_OUT_ENV}
  out = subprocess.run(
    [sys.executable, '-c', SCRIPT],
    env={**environ, 'NUMPY_MADVISE_HUGEPAGE': '0', **env},  # count 4 KiB pages
    capture_output=True,
    text=True,
  )
  assert out.returncode == 0, out.stderr
  return int(out.stdout)


@pytest.mark.skipif(
  not sys.platform.startswith('linux') or host_memory.malloc_tuned_elsewhere(os.environ),
  reason='glibc on Linux, malloc not tuned by the environment',
)
def test_a_freed_block_is_reused_not_faulted_in_again():
  kept = second_round_faults()
  system = second_round_faults(**{host_memory.OPT_OUT_ENV: 'system'})
  pages = (1 << 28) // os.sysconf('SC_PAGE_SIZE')
  assert system > pages // 2  # the C library's default: a fresh mapping every time
  assert kept < pages // 50


@pytest.mark.parametrize(
  'environ, tuned',
  [
    ({}, False),
    ({'PATH': '/bin', 'GLIBC_TUNABLES': 'glibc.rtld.nns=2'}, False),
    ({'PERCEIVER_AR_VL_MALLOC': 'system'}, True),
    ({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=4'}, True),
    ({'MALLOC_ARENA_MAX': '2'}, True),
    ({'MALLOC_TRIM_THRESHOLD_': '0'}, True),
    ({'LD_PRELOAD': '/usr/lib/libtcmalloc_minimal.so.4'}, True),
  ],
)
def test_the_users_own_malloc_settings_win(environ, tuned):
  assert host_memory.malloc_tuned_elsewhere(environ) is tuned
  if tuned:
    assert host_memory.keep_freed_memory(environ) is False


def test_nothing_is_set_off_linux(monkeypatch):
  monkeypatch.setattr(sys, 'platform', 'darwin')
  assert host_memory.keep_freed_memory({}) is False
