"""The process a run lives in: JAX's persistent compilation cache, how CPU steps execute, the
startup report (what is running, on what) and absl's log level for library users.

The entry points (launch.py, the experiment CLI) and the library calls that run a model
(`training.train`, `evaluation.evaluate.evaluate`, `sampling.sample_from_workdir`) call
these; nothing else does.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import jax
import ml_collections
from absl import flags, logging
from jax.experimental.compilation_cache import compilation_cache

from perceiver_ar_vl import host_memory
from perceiver_ar_vl.layers import kernels

# `compile_cache_dir='auto'`: one cache per user, shared by every run and workdir.
AUTO = 'auto'
MIN_COMPILE_TIME_ENV = 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'  # the user's choice wins


def default_cache_dir() -> str:
  """`$XDG_CACHE_HOME/perceiver_ar_vl/jax` (`~/.cache/perceiver_ar_vl/jax` without it)."""
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'perceiver_ar_vl', 'jax')


def enable_compilation_cache(setting: str) -> str | None:
  """Turns JAX's persistent compilation cache on as `compile_cache_dir` says ('auto': the
  per-user `default_cache_dir()`; '': off; else that directory); returns the directory used.

  A directory set through JAX itself (`--jax_compilation_cache_dir`, the
  `JAX_COMPILATION_CACHE_DIR` variable, `jax.config.update`) wins over 'auto', so a cache the
  user chose is never replaced. A rerun then loads every compiled step from the cache instead
  of compiling it again (docs/performance.md, "Compilation cache").
  """
  chosen = jax.config.jax_compilation_cache_dir
  if setting == AUTO and chosen:
    return chosen
  directory = (default_cache_dir() if setting == AUTO else os.path.expanduser(setting)) or None
  if directory != chosen:
    jax.config.update('jax_compilation_cache_dir', directory)
    compilation_cache.reset_cache()  # a cache opened before is reopened at the next compile
  if directory and MIN_COMPILE_TIME_ENV not in os.environ:
    # JAX caches only programs that took >= 1 s to compile; a run's evaluation and state
    # set-up programs take less, and tracing them again is what a warm start still costs.
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  return directory


def configure_cpu_execution(setting: str) -> bool:
  """`cpu_execution`: 'inline' runs each compiled CPU program on the calling thread (JAX's
  `jax_cpu_enable_async_dispatch` off) and raises glibc's mmap/trim thresholds
  (`host_memory`), so a step's temporaries come from the main thread's malloc arena and the
  next step reuses them instead of mapping and page-faulting them in afresh; 'async' is JAX's
  default dispatch. Returns whether programs run inline.

  JAX reads the dispatch setting when it creates its CPU client, so this must run before
  anything uses a JAX device in the process (launch.py calls it first; `training.train`,
  `evaluate` and `sample_from_workdir` call it too, which is in time when they are the
  process's first JAX work). It starts no backend (safe before `jax.distributed.initialize`).
  Multi-device programs keep asynchronous dispatch; raised malloc thresholds stay raised.
  """
  inline = setting == 'inline'
  jax.config.update('jax_cpu_enable_async_dispatch', not inline)
  if inline:
    host_memory.keep_freed_memory()
  return inline


def show_info_logs() -> None:
  """Lets absl's INFO lines (progress, the startup report) through when the library runs
  without absl's flag parsing (a notebook, a script), where absl would show warnings only. A
  level the user set (`absl.logging.set_verbosity`) is kept."""
  import logging as std_logging

  untouched = logging.get_absl_logger().level == std_logging.NOTSET
  if not flags.FLAGS.is_parsed() and untouched:
    logging.set_verbosity(logging.INFO)


def attention_kernel(config: ml_collections.ConfigDict, rows_per_device: int) -> str:
  """The attention kernel the cross-attend runs at the largest latent count: the configured
  one, or what `'auto'` picks on this backend for these shapes."""
  m = config.model
  if m.attention_impl != 'auto':
    return m.attention_impl
  heads = m.num_cross_attend_heads or m.num_heads
  picked = kernels.select_impl(
    jax.default_backend(),
    m.dtype,
    rows_per_device,
    heads,
    config.latents.max,
    m.max_context,
    m.d_model // heads,
  )
  return f'{picked} (auto)'


def gpu_unused() -> bool:
  """Whether this machine has an NVIDIA GPU that JAX is not running on (a CPU-only jaxlib)."""
  has_gpu = shutil.which('nvidia-smi') is not None or os.path.exists('/dev/nvidia0')
  return has_gpu and jax.default_backend() == 'cpu'


def startup_report(config: ml_collections.ConfigDict, params: Any, cache_dir: str | None) -> str:
  """The block logged when a run starts: backend, devices, processes, parameters, compute
  dtype, attention kernel, compilation cache, cpu_execution and the versions behind the
  numbers."""
  import flax
  import jaxlib
  import optax

  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  count = sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(params))
  rows = max(config.train.batch_size // max(len(devices), 1), 1)
  lines = [
    f'backend {jax.default_backend()}: {len(devices)} device(s) ({", ".join(kinds)}), '
    f'{jax.local_device_count()} on this process',
    f'processes {jax.process_count()} (this is {jax.process_index()})',
    f'model {config.model.type}: {count:,} parameters, compute dtype {config.model.dtype}',
    f'attention kernel {attention_kernel(config, rows)}',
    f'compilation cache {cache_dir or "off"}',
    f'cpu_execution {config.cpu_execution}',
    f'jax {jax.__version__}, jaxlib {jaxlib.__version__}, flax {flax.__version__}, '
    f'optax {optax.__version__}',
  ]
  if gpu_unused():
    lines.append(
      'WARNING: this machine has an NVIDIA GPU but JAX runs on the CPU; install a CUDA '
      "jaxlib (pip install -e '.[cuda12]') to use it."
    )
  return 'Run:\n  ' + '\n  '.join(lines)
