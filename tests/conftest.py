"""Test setup: CPU only, two simulated devices, float32 matmuls at full precision."""

import atexit
import concurrent.futures
import os
import shutil
import subprocess
import tempfile

# CPU with two simulated devices whatever the shell exported (a GPU box's JAX_PLATFORMS, a
# device count of one's own): the suite's expectations are written for exactly this.
os.environ['JAX_PLATFORMS'] = 'cpu'
flags = ' '.join(
  flag
  for flag in os.environ.get('XLA_FLAGS', '').split()
  if not flag.startswith('--xla_force_host_platform_device_count')
)
flags += ' --xla_force_host_platform_device_count=2'
# The suite's programs are tiny, so compiling dominates its time: XLA's backend optimisations
# cost more than they save (measured: -31% CPU time on test_remat/precision/models; results
# equal). Every subprocess inherits this; set the flag yourself to test another level.
if 'xla_backend_optimization_level' not in flags:
  flags += ' --xla_backend_optimization_level=0'
# XLA:CPU's older elemental fusion emitters compile these programs in ~0.55x the time of the
# MLIR fusion emitters (measured: 0.92 s -> 0.54 s for a 3-layer train step), same results.
if 'xla_cpu_use_fusion_emitters' not in flags:
  flags += ' --xla_cpu_use_fusion_emitters=false'
os.environ['XLA_FLAGS'] = flags.strip()

# A test session compiles the same tiny programs many times, in this process and in every
# launch.py (or `python -c`) subprocess it starts: one persistent compilation cache, fresh
# for each session (nothing carries over from an earlier session or another checkout) and
# removed at its end. Set in the environment before jax is imported, so this process and
# every subprocess (which inherit os.environ) read it; JAX only writes it from process 0.
# Under pytest-xdist the workers inherit the controller's environment, so they share its cache
# (which the controller removes at the end).
if os.environ.get('PYTEST_XDIST_WORKER') and os.environ.get('JAX_COMPILATION_CACHE_DIR'):
  CACHE_DIR = os.environ['JAX_COMPILATION_CACHE_DIR']
else:
  CACHE_DIR = tempfile.mkdtemp(prefix='perceiver_ar_vl_jax_cache_')
  atexit.register(shutil.rmtree, CACHE_DIR, ignore_errors=True)
CACHE_ENV = {
  'JAX_COMPILATION_CACHE_DIR': CACHE_DIR,
  'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
  'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0',
}
os.environ.update(CACHE_ENV)

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update('jax_default_matmul_precision', 'highest')

# In case jax was imported before this file (the environment is read at import).
jax.config.update('jax_compilation_cache_dir', CACHE_DIR)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


@pytest.fixture(scope='session')
def trained_launch_run(tmp_path_factory):
  """A Future of the workdir of a 2-step `launch.py` run of `configs/curriculum.py:smoke`
  with helpers.TINY_LAUNCH_ARGS (checkpoint at step 2).

  It trains in a background subprocess from the moment a test asks for it, so a test can
  start other subprocesses meanwhile; `.result()` waits and raises if training failed.
  """
  from helpers import REPO, TINY_LAUNCH_ARGS, launch_command, launch_env

  workdir = tmp_path_factory.mktemp('trained_launch_run')
  command = launch_command(
    f'--config={REPO}/configs/curriculum.py:smoke',
    f'--workdir={workdir}',
    '--config.train.steps=2',
    *TINY_LAUNCH_ARGS,
  )

  def train() -> str:
    run = subprocess.run(
      command, capture_output=True, text=True, env=launch_env(), cwd=REPO, timeout=600
    )
    if run.returncode:
      raise RuntimeError(f'training the shared launch.py run failed:\n{run.stderr[-3000:]}')
    return str(workdir)

  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    yield pool.submit(train)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
  """pytest-xdist (`--dist loadgroup`): each test file runs on one worker, so its module
  fixtures and compiled programs are made once; the tests that use the shared trained
  launch.py run join one group, so it trains once."""
  for item in items:
    shared = 'trained_launch_run' in item.fixturenames
    item.add_marker(
      pytest.mark.xdist_group('trained_launch_run' if shared else item.module.__name__)
    )
