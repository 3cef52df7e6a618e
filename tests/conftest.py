"""Test setup: CPU only, two simulated devices, float32 matmuls at full precision."""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
flags = os.environ.get('XLA_FLAGS', '')
if 'xla_force_host_platform_device_count' not in flags:
  os.environ['XLA_FLAGS'] = (flags + ' --xla_force_host_platform_device_count=2').strip()

import jax  # noqa: E402

jax.config.update('jax_default_matmul_precision', 'highest')

# Runs in one test session compile the same tiny programs many times: cache the executables.
_CACHE_DIR = os.path.join(os.environ.get('TMPDIR', '/tmp'), 'perceiver_ar_vl_test_jax_cache')
jax.config.update('jax_compilation_cache_dir', _CACHE_DIR)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
