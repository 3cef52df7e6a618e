"""Multi-process training through JAX's multi-controller runtime (`jax.distributed`) on CPU.

Two `launch.py` processes with one CPU device each (2 global devices, cross-process
collectives over gloo) train the same run as one process with 2 simulated devices: the global
batch and the N schedule are identical by construction, so every step's loss, the checkpoints
and the final parameters must match. On the way, only one of the two gets SIGTERM: both stop
after the same step, save it together and exit, and the same command resumes them. Two
processes preparing one text file into one shared data_dir prepare it once.
"""

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from perceiver_ar_vl import config_lib
from perceiver_ar_vl.data import sources
from perceiver_ar_vl.runs import checkpoints, run_files, train_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, EVERY = 8, 4
# Tiny run: one latent bucket (N is drawn uniformly in [4, 8], all in bucket 8), so each
# process compiles one train_step; checkpoints at steps 4 and 8 (and where SIGTERM stops it).
OVERRIDES = {
  'train.steps': STEPS,
  'train.log_every': 1,
  'train.checkpoint_every': EVERY,
  'train.eval_max_bytes': 128,
  'model.max_context': 32,
  'model.num_heads': 2,
  'model.d_model': 16,
  'model.mlp_dim': 32,
  'latents.min': 4,
  'latents.max': 8,
  'latents.buckets': (8, 32),
  'eval.max_bytes': 128,
  'eval.latents_sweep': (8,),
}
TIMEOUT_S = 240  # for each group of processes; about 30 s on an idle 2-core CPU


def _stop_leftovers(procs) -> None:
  """Kills and reaps the processes of a test that are still running (after a failure)."""
  for proc in procs:
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(devices_per_process: int) -> dict:
  """CPU only, with `devices_per_process` host devices (conftest forces 2 for this process)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('JAX_NUM_CPU_DEVICES', None)
  flags = [
    f
    for f in env.get('XLA_FLAGS', '').split()
    if not f.startswith('--xla_force_host_platform_device_count')
  ]
  if devices_per_process > 1:
    flags.append(f'--xla_force_host_platform_device_count={devices_per_process}')
  env['XLA_FLAGS'] = ' '.join(flags)
  return env


def _launch(workdir, log_path, env, *extra_flags) -> subprocess.Popen:
  cmd = [
    sys.executable,
    os.path.join(REPO, 'launch.py'),
    f'--config={os.path.join(REPO, "configs", "uniform.py")}:smoke',
    f'--workdir={workdir}',
    *(f'--config.{key}={value}' for key, value in OVERRIDES.items()),
    *extra_flags,
  ]
  with open(log_path, 'w') as log:
    return subprocess.Popen(
      cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, stdin=subprocess.DEVNULL
    )


def _tail(path, chars: int = 3000) -> str:
  with open(path) as f:
    return f'--- {os.path.basename(path)} ---\n{f.read()[-chars:]}'


def _step_records(workdir) -> dict[int, dict]:
  path = os.path.join(workdir, run_files.METRICS_FILE)
  records = [r for r in run_files.read_jsonl(path) if 'loss' in r]
  by_step = {r['step']: r for r in records}
  assert len(by_step) == len(records), 'a step was written twice (more than one writer?)'
  return by_step


def _config():
  """The config launch.py builds from `configs/uniform.py:smoke` and OVERRIDES."""
  config = config_lib.strategy_config('uniform', 'smoke')
  config.update_from_flattened_dict(OVERRIDES)
  return config


def _wait_all(procs, logs) -> None:
  """Waits for `procs` (TIMEOUT_S in all), then checks that each exited 0."""
  started = time.monotonic()
  try:
    for proc in procs:
      proc.wait(timeout=max(TIMEOUT_S - (time.monotonic() - started), 1))
  except subprocess.TimeoutExpired:
    pytest.fail(
      f'Training did not finish within {TIMEOUT_S} s.\n' + '\n'.join(_tail(p) for p in logs)
    )
  finally:
    _stop_leftovers(procs)
  for proc, log in zip(procs, logs, strict=True):
    assert proc.returncode == 0, _tail(log)


def _launch_pair(workdir, logs) -> list[subprocess.Popen]:
  coordinator = f'--coordinator_address=127.0.0.1:{_free_port()}'
  return [
    _launch(workdir, logs[i], _env(1), coordinator, '--num_processes=2', f'--process_id={i}')
    for i in range(2)
  ]


def _signal_when_logged(proc: subprocess.Popen, log_path, text: str, signum: int) -> None:
  """Sends `signum` to `proc` once its log shows `text` (its stop handler is installed)."""
  deadline = time.monotonic() + TIMEOUT_S
  while text not in _read(log_path):
    if proc.poll() is not None or time.monotonic() > deadline:
      pytest.fail(f'{text!r} never logged before the signal.\n{_tail(log_path)}')
    time.sleep(0.01)
  proc.send_signal(signum)


def _read(path) -> str:
  with open(path) as f:
    return f.read()


def test_two_processes_stop_together_and_train_exactly_like_one_process(tmp_path):
  multi, single = tmp_path / 'multi', tmp_path / 'single'
  logs = [tmp_path / 'process_0.log', tmp_path / 'process_1.log', tmp_path / 'single.log']
  # The reference runs alongside: the pair often waits on each other, so this costs little.
  procs = [*_launch_pair(multi, logs), _launch(single, logs[2], _env(2))]
  try:
    _signal_when_logged(procs[1], logs[1], f'step 1/{STEPS} ', signal.SIGTERM)
  finally:
    _wait_all(procs, logs)

  # Only process 1 got SIGTERM; both stopped after the same step, saved it and exited 0.
  stops = [re.findall(r'Stopping after step (\d+) \((.*)\)', _read(log)) for log in logs[:2]]
  assert stops[0] == stops[1] and len(stops[0]) == 1, stops
  stop, why = int(stops[0][0][0]), stops[0][0][1]
  assert why == 'SIGTERM on process 1' and stop < STEPS
  assert max(_step_records(multi)) == stop

  # The same command resumes both from that step and finishes.
  resumed = [tmp_path / 'process_0.resumed.log', tmp_path / 'process_1.resumed.log']
  _wait_all(_launch_pair(multi, resumed), resumed)
  for log in resumed:
    assert f'Resumed from step {stop} ' in _read(log), _tail(log)

  # Each process joined the runtime and saw one local of two global devices.
  for i in range(2):
    assert f'Process {i} of 2, 1 local / 2 global devices.' in _read(logs[i]), _tail(logs[i])

  # Checkpoints (written jointly by both processes) at steps 4 and 8 and where they stopped.
  mngr = checkpoints.manager(str(multi), create=False)
  try:
    assert sorted(mngr.all_steps()) == sorted({stop, EVERY, STEPS})
  finally:
    mngr.close()

  # Only process 0 writes metrics: one record per step (the resumed run's from step
  # `stop` on), equal to the reference's.
  got, want = _step_records(multi), _step_records(single)
  assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
  steps = range(1, STEPS + 1)
  assert [got[s]['num_latents'] for s in steps] == [want[s]['num_latents'] for s in steps]
  assert len({got[s]['num_latents'] for s in steps}) > 1  # N varies from step to step
  for key in ('loss', 'grad_norm'):
    np.testing.assert_allclose(
      [got[s][key] for s in steps], [want[s][key] for s in steps], rtol=1e-5, atol=1e-6
    )
  bits = [
    [
      r['validation_bits_per_byte']
      for r in run_files.read_jsonl(os.path.join(w, run_files.METRICS_FILE))
      if 'validation_bits_per_byte' in r
    ]
    for w in (multi, single)
  ]
  assert len(bits[0]) == 1
  np.testing.assert_allclose(bits[0], bits[1], rtol=1e-5)

  # The multi-process checkpoint restores here and holds the reference's parameters.
  config = _config()
  _, params, step = train_state.restore_params(config, str(multi))
  _, ref_params, ref_step = train_state.restore_params(config, str(single))
  assert step == ref_step == STEPS and jax.tree.leaves(params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# Each process joins the runtime, builds the text_file dataset in the shared data_dir and prints
# a SHA-256 of every split it reads. Preparing is slowed down by a second so that two
# processes preparing at once would overlap (and both log 'Preparing').
PREPARE_SCRIPT = """
import hashlib, json, sys, time
import jax
from absl import logging
logging.set_verbosity(logging.INFO)
coordinator, process_id, path, data_dir = sys.argv[1:]
jax.distributed.initialize(coordinator, num_processes=2, process_id=int(process_id))
from perceiver_ar_vl import config_choices, data
from perceiver_ar_vl.data import builders
generate = builders.ByteFile._generate_examples  # the tfds builder's example generator
def slow_generate(*args):
  time.sleep(1.0)
  yield from generate(*args)
builders.ByteFile._generate_examples = slow_generate
dataset = data.make_dataset({'name': 'text_file', 'path': path, 'data_dir': data_dir}, 33)
splits = config_choices.SPLITS
digests = {s: hashlib.sha256(dataset.split_bytes(s).tobytes()).hexdigest() for s in splits}
print('digests', json.dumps(digests))
"""


def test_two_processes_prepare_a_shared_dataset_once(tmp_path):
  text = np.random.default_rng(3).integers(97, 123, 4_000, dtype=np.uint8).tobytes()
  path, data_dir = tmp_path / 'text.txt', tmp_path / 'shared_tfds'
  path.write_bytes(text)
  coordinator = f'127.0.0.1:{_free_port()}'
  procs = [
    subprocess.Popen(
      [sys.executable, '-c', PREPARE_SCRIPT, coordinator, str(i), str(path), str(data_dir)],
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      env=_env(1),
      cwd=REPO,
    )
    for i in range(2)
  ]
  try:
    outputs = [proc.communicate(timeout=TIMEOUT_S)[0] for proc in procs]
  finally:
    _stop_leftovers(procs)
  for proc, output in zip(procs, outputs, strict=True):
    assert proc.returncode == 0, output[-3000:]

  # Process 0 prepared, process 1 waited and read the same files.
  preparing = [output.count('Preparing byte_file in') for output in outputs]
  assert preparing == [1, 0], outputs
  train, valid, _ = sources.text_split_sizes(len(text))
  want = {
    'train': text[:train],
    'validation': text[train : train + valid],
    'test': text[train + valid :],
  }
  want = {split: hashlib.sha256(part).hexdigest() for split, part in want.items()}
  for output in outputs:
    line = next(line for line in output.splitlines() if line.startswith('digests '))
    assert json.loads(line.removeprefix('digests ')) == want
  versions = list(data_dir.glob('byte_file/*/*'))
  assert [v.name for v in versions] == ['1.0.0'], versions  # no second or unfinished copy
