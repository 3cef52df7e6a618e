"""Pins perceiver_ar_vl/training/workdir_lock.py: two launches on one workdir never both train.

The lock: two processes. A `launch.py` run is frozen (SIGSTOP) while it holds its workdir; a
second launch on that workdir stops at once with one `error:` line naming the first, touching
nothing, and the first then finishes. A lock whose holder was SIGKILLed does not block; without
fcntl (Windows) training runs unlocked, with a warning.
"""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from helpers import REPO, TINY_LAUNCH_ARGS, launch_command, launch_env

from perceiver_ar_vl.training import workdir_lock

STEPS = 4
TIMEOUT_S = 120


def _holder_pid(workdir) -> int | None:
  """The pid the workdir's lock file names (None while it is missing or being written)."""
  try:
    with open(workdir_lock.lock_path(str(workdir))) as f:
      return json.load(f)['pid']
  except (OSError, ValueError, KeyError):
    return None


def _snapshot(workdir) -> dict[str, tuple[int, int]]:
  """{path: (size, mtime)} of everything under `workdir`."""
  found = {}
  for root, _, names in os.walk(workdir):
    for name in names:
      stat = os.stat(os.path.join(root, name))
      found[os.path.join(root, name)] = (stat.st_size, stat.st_mtime_ns)
  return found


def test_a_second_launch_on_a_live_runs_workdir_stops_at_once(tmp_path):
  workdir = str(tmp_path / 'run')
  command = launch_command(
    f'--config={REPO}/configs/curriculum.py:smoke',
    f'--workdir={workdir}',
    *TINY_LAUNCH_ARGS,
    f'--config.train.steps={STEPS}',
    '--config.train.checkpoint_every=2',
  )
  log_path = tmp_path / 'first.log'
  with open(log_path, 'w') as log:
    first = subprocess.Popen(
      command, stdout=log, stderr=subprocess.STDOUT, env=launch_env(), cwd=REPO
    )
  try:
    deadline = time.monotonic() + TIMEOUT_S
    while _holder_pid(workdir) != first.pid:
      assert first.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
      time.sleep(0.001)
    first.send_signal(signal.SIGSTOP)  # holds the lock, frozen in the middle of its run
    try:
      before = _snapshot(workdir)
      started = time.monotonic()
      second = subprocess.run(
        command, capture_output=True, text=True, env=launch_env(), cwd=REPO, timeout=TIMEOUT_S
      )
      took = time.monotonic() - started
      assert _snapshot(workdir) == before  # nothing of the first run touched
    finally:
      first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=TIMEOUT_S) == 0, log_path.read_text()[-3000:]
  finally:
    if first.poll() is None:
      first.kill()
      first.wait()

  assert second.returncode == 2 and 'Traceback' not in second.stderr
  lines = [line for line in second.stderr.splitlines() if line.startswith('error:')]
  assert lines == [second.stderr.strip().splitlines()[-1]]
  assert lines[0].startswith(
    f'error: {workdir} is being trained by process {first.pid} on host {socket.gethostname()} '
    '(since '
  )
  assert lines[0].endswith('wait for it to finish, stop it, or use another --workdir.')
  assert f'step 1/{STEPS}' not in second.stderr and took < 60  # it trained nothing, waited not
  # The first run finished as if alone, and left its lock file empty.
  assert f'step {STEPS}/{STEPS}' in log_path.read_text()
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
  assert os.path.getsize(workdir_lock.lock_path(workdir)) == 0


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
  workdir = str(tmp_path / 'run')
  code = (
    'import sys, time\n'
    'from perceiver_ar_vl.training import workdir_lock\n'
    'workdir_lock.acquire(sys.argv[1])\n'
    "print('locked', flush=True)\n"
    'time.sleep(600)\n'
  )
  holder = subprocess.Popen(
    [sys.executable, '-c', code, workdir], stdout=subprocess.PIPE, text=True, env=launch_env()
  )
  try:
    assert holder.stdout.readline() == 'locked\n'
    with pytest.raises(workdir_lock.WorkdirBusyError, match=f'by process {holder.pid} on host'):
      workdir_lock.acquire(workdir)
  finally:
    holder.kill()  # SIGKILL: no cleanup runs
    holder.wait()
    holder.stdout.close()
  assert _holder_pid(workdir) == holder.pid  # its details stay, its lock does not
  with workdir_lock.held(workdir):
    assert _holder_pid(workdir) == os.getpid()
  assert os.path.getsize(workdir_lock.lock_path(workdir)) == 0


def test_without_fcntl_training_runs_unlocked_with_a_warning(tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(workdir_lock, 'fcntl', None)  # as on Windows
  with caplog.at_level(logging.WARNING), workdir_lock.held(str(tmp_path)):
    pass
  assert 'is not locked against a second training run' in caplog.text
  assert not os.path.exists(workdir_lock.lock_path(str(tmp_path)))
