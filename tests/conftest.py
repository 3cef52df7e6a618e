"""Test setup: CPU only, two simulated devices, float32 matmuls at full precision."""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
flags = os.environ.get('XLA_FLAGS', '')
if 'xla_force_host_platform_device_count' not in flags:
  os.environ['XLA_FLAGS'] = (flags + ' --xla_force_host_platform_device_count=2').strip()

import jax  # noqa: E402

jax.config.update('jax_default_matmul_precision', 'highest')
