"""FSDP (`train.fsdp`, parallel.state_shardings): parameters and optimizer state split over the
data axis train exactly like replicated ones, each device holds ~1/devices of them, and a
checkpoint written under 8 devices resumes under 2.

One subprocess with 8 simulated CPU devices (conftest fixes this process at 2) trains the same
tiny run replicated and with FSDP and prints JSON; this process then resumes the FSDP run's
step-4 checkpoint on its 2 devices and compares with the 8-device run's end.
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
from helpers import REPO, tiny_config

from perceiver_ar_vl import config_lib, parallel, training
from perceiver_ar_vl.runs import run_files, train_state

STEPS, EVERY, DEVICES = 8, 4, 8
PARAM_ATOL = 1e-3  # a tenth of one step's update at train.learning_rate=1e-2 (see below)
TIMEOUT_S = 240  # the subprocess; about 15 s on an idle 2-core CPU


def _config(fsdp: bool):
  c = tiny_config('fixed', steps=STEPS)
  c.train.update(batch_size=8, checkpoint_every=EVERY, fsdp=fsdp)
  return c


def _losses(workdir) -> dict[int, float]:
  path = os.path.join(workdir, run_files.METRICS_FILE)
  return {r['step']: r['loss'] for r in run_files.read_jsonl(path) if 'loss' in r}


def _params(config, workdir, step=-1) -> list[np.ndarray]:
  _, params, _ = train_state.restore_params(config, workdir, step)
  return [np.asarray(x) for x in jax.tree.leaves(params)]


# Runs in the 8-device subprocess: sys.argv[1] is the directory for the two workdirs.
_CHILD = r"""
import json, os, sys
sys.path.insert(0, os.path.join(sys.argv[2], 'tests'))
import jax
jax.config.update('jax_default_matmul_precision', 'highest')
import numpy as np
import test_fsdp
from perceiver_ar_vl import config_lib, parallel, training
from perceiver_ar_vl.runs import train_state

assert jax.device_count() == test_fsdp.DEVICES, jax.devices()
out = {}
for name, fsdp in (('replicated', False), ('fsdp', True)):
  workdir = os.path.join(sys.argv[1], name)
  training.train(test_fsdp._config(fsdp), workdir)
  out[name] = {'losses': test_fsdp._losses(workdir)}
rep = test_fsdp._params(test_fsdp._config(False), os.path.join(sys.argv[1], 'replicated'))
fsdp = test_fsdp._params(test_fsdp._config(True), os.path.join(sys.argv[1], 'fsdp'))
out['max_param_diff'] = max(float(np.abs(a - b).max()) for a, b in zip(rep, fsdp, strict=True))

# What device 0 holds of a fresh FSDP state (parameters and Adam moments), leaf by leaf.
config = test_fsdp._config(True)
mesh = parallel.make_mesh()
state = train_state.create_train_state(config, config_lib.create_model(config), mesh)
device0 = jax.devices()[0]
leaves = []
for leaf in jax.tree.leaves(state):
  held = sum(s.data.size for s in leaf.addressable_shards if s.device == device0)
  leaves.append({'size': int(leaf.size), 'held': int(held), 'spec': str(leaf.sharding.spec)})
out['leaves'] = leaves
print('RESULT ' + json.dumps(out))
"""


def test_fsdp_equals_replicated_shards_params_and_resumes_on_fewer_devices(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  others = [f for f in env.get('XLA_FLAGS', '').split() if 'device_count' not in f]
  env['XLA_FLAGS'] = ' '.join([*others, f'--xla_force_host_platform_device_count={DEVICES}'])
  env.pop('JAX_NUM_CPU_DEVICES', None)
  run = subprocess.run(
    [sys.executable, '-c', _CHILD, str(tmp_path), REPO],
    capture_output=True,
    text=True,
    env=env,
    cwd=REPO,
    timeout=TIMEOUT_S,
  )
  assert run.returncode == 0, run.stderr[-4000:]
  line = [x for x in run.stdout.splitlines() if x.startswith('RESULT ')][-1]
  out = json.loads(line[len('RESULT ') :])

  # (a) FSDP trains like replicated data parallelism, step for step.
  rep = {int(k): v for k, v in out['replicated']['losses'].items()}
  fsdp = {int(k): v for k, v in out['fsdp']['losses'].items()}
  assert sorted(rep) == sorted(fsdp) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([fsdp[s] for s in rep], list(rep.values()), rtol=1e-5, atol=1e-6)
  # Adam divides each gradient by its own scale, so reduction-order noise in near-zero
  # gradients moves parameters by up to ~lr/50 over 8 steps: the same gap (2e-4 at lr 1e-2)
  # separates replicated runs on 1 and 8 devices. A real error would be a whole step (1e-2).
  assert out['max_param_diff'] < PARAM_ATOL

  # (b) Each of the 8 devices holds 1/8 of every array but the scalars (step, Adam's count).
  leaves = out['leaves']
  big = [leaf for leaf in leaves if leaf['size'] >= DEVICES]
  assert big and all(leaf['held'] * DEVICES == leaf['size'] for leaf in big), big
  assert all(leaf['size'] == 1 for leaf in leaves if leaf not in big)
  total, held = sum(leaf['size'] for leaf in leaves), sum(leaf['held'] for leaf in leaves)
  assert held < 1.01 * total / DEVICES, (held, total)

  # (c) The 8-device FSDP checkpoint at step 4 resumes here, on 2 devices, and ends where the
  # 8-device run ended.
  assert jax.device_count() == 2
  resumed = tmp_path / 'resumed'
  shutil.copytree(tmp_path / 'fsdp', resumed)
  shutil.rmtree(resumed / 'checkpoints' / str(STEPS))
  config = _config(True)
  summary = training.train(config, str(resumed))
  assert summary['start_step'] == EVERY and summary['final_step'] == STEPS
  again = _losses(resumed)
  np.testing.assert_allclose(
    [again[s] for s in range(EVERY + 1, STEPS + 1)],
    [fsdp[s] for s in range(EVERY + 1, STEPS + 1)],
    rtol=1e-5,
    atol=1e-6,
  )
  for a, b in zip(
    _params(config, str(resumed)), _params(config, str(tmp_path / 'fsdp')), strict=True
  ):
    np.testing.assert_allclose(a, b, rtol=0, atol=PARAM_ATOL)


def test_fsdp_sharding_rule():
  """The largest dimension that the device count divides is split; otherwise replicated."""
  mesh = parallel.make_mesh()  # 2 devices
  spec = lambda shape: tuple(parallel.fsdp_sharding(mesh, shape).spec)
  assert spec((6, 16)) == (None, 'data')
  assert spec((16, 16)) == ('data', None)
  assert spec((3, 5)) == ()
  assert spec(()) == ()
  assert spec((1,)) == ()
  config = tiny_config('fixed')
  config.train.fsdp = True
  model = config_lib.create_model(config)
  shardings = train_state.train_state_shardings(config, model, mesh)
  assert tuple(shardings.step.spec) == ()
  assert any(tuple(s.spec) for s in jax.tree.leaves(shardings.params))
