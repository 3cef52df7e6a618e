"""Kill safety: a run killed at any moment and started again ends exactly like one never
interrupted; a damaged newest checkpoint is skipped with a warning, never silently.

The SIGKILL test runs `launch.py` as a subprocess: killed during its first checkpoint write,
between two saves and during a later write, each time rerun with the same command. The
in-process tests damage checkpoints of a finished run by hand.
"""

import logging
import os
import re
import shutil
import signal
import subprocess
import time

import pytest
from helpers import REPO, TINY_LAUNCH_ARGS, launch_command, launch_env, tiny_config

from perceiver_ar_vl import errors, training
from perceiver_ar_vl.runs import checkpoints, run_files, train_state

STEPS, EVERY = 16, 4
KILL_ARGS = (
  *TINY_LAUNCH_ARGS,
  f'--config.train.steps={STEPS}',
  f'--config.train.checkpoint_every={EVERY}',
  '--config.train.keep_checkpoints=2',
)
TIMEOUT_S = 120  # one launch.py run; a few seconds once its programs are in the session's
# compilation cache (conftest.py, passed on by launch_env)


def _start(workdir, log_path) -> subprocess.Popen:
  command = launch_command(
    f'--config={REPO}/configs/curriculum.py:smoke', f'--workdir={workdir}', *KILL_ARGS
  )
  with open(log_path, 'w') as log:
    return subprocess.Popen(
      command,
      stdout=log,
      stderr=subprocess.STDOUT,
      env=launch_env(),
      cwd=REPO,
      stdin=subprocess.DEVNULL,
    )


def _read(path) -> str:
  with open(path) as f:
    return f.read()


def _committed(workdir) -> list[int]:
  directory = checkpoints.checkpoint_dir(str(workdir))
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return sorted(int(name) for name in names if name.isdigit())


def _logged_steps(log_path) -> list[int]:
  """The training steps that one run's own log reports, in order."""
  return [int(m) for m in re.findall(rf'step (\d+)/{STEPS} ', _read(log_path))]


def _kill_when(proc: subprocess.Popen, ready, log_path) -> None:
  """SIGKILLs `proc` as soon as `ready()` holds (polled every millisecond)."""
  deadline = time.monotonic() + TIMEOUT_S
  while not ready():
    if proc.poll() is not None:
      pytest.fail(f'the run ended (status {proc.returncode}) before the kill:\n{_read(log_path)}')
    if time.monotonic() > deadline:
      proc.kill()
      pytest.fail(f'no kill point within {TIMEOUT_S} s:\n{_read(log_path)[-3000:]}')
    time.sleep(0.001)
  proc.send_signal(signal.SIGKILL)
  proc.wait()


def _records(workdir) -> tuple[dict[int, float], list[float]]:
  """({step: loss}, [validation bits]) from metrics.jsonl; a step logged twice fails."""
  records = run_files.read_jsonl(os.path.join(workdir, run_files.METRICS_FILE))
  losses = [(r['step'], r['loss']) for r in records if 'loss' in r]
  assert len(losses) == len(dict(losses)), 'a step was logged twice'
  return dict(losses), [
    r['validation_bits_per_byte'] for r in records if 'validation_bits_per_byte' in r
  ]


def test_sigkill_anywhere_then_rerun_ends_like_an_uninterrupted_run(tmp_path):
  workdir = tmp_path / 'killed'
  unfinished = lambda: checkpoints.unfinished_saves(str(workdir))
  logs = [tmp_path / f'run_{i}.log' for i in range(4)]

  def saving(log_path, step: int) -> bool:
    """The run logging to `log_path` logged `step` and started saving it (or committed it:
    the kill then misses the write; the save follows the step's log line at once)."""
    return f'step {step}/{STEPS} ' in _read(log_path) and (
      f'{step}{checkpoints.UNFINISHED_MARKER}' in unfinished() or step in _committed(workdir)
    )

  # What each kill interrupts, and when it lands (the last run is not killed). A write of a
  # step that is not committed yet leaves `<step>.orbax-checkpoint-tmp`; the run after it
  # removes that directory before its own first save.
  plan = [
    ('the first checkpoint write', lambda: saving(logs[0], EVERY)),
    ('a later checkpoint write', lambda: saving(logs[1], 2 * EVERY)),
    ('training between two saves', lambda: any(s % EVERY for s in _logged_steps(logs[2]))),
  ]
  procs = [_start(tmp_path / 'reference', tmp_path / 'reference.log')]
  kills = []  # (what, unfinished writes left, committed steps left)
  try:
    for (what, ready), log_path in zip(plan, logs, strict=False):
      procs.append(_start(workdir, log_path))
      _kill_when(procs[-1], ready, log_path)
      kills.append((what, unfinished(), _committed(workdir)))
    procs.append(_start(workdir, logs[-1]))
    for proc, log_path in ((procs[-1], logs[-1]), (procs[0], tmp_path / 'reference.log')):
      assert proc.wait(timeout=TIMEOUT_S) == 0, _read(log_path)[-3000:]
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()

  # A kill mid-write left that write unfinished (a kill that missed the write by landing
  # after its commit is still a kill); the next run removed it and resumed from the newest
  # committed step, or started over when there was none.
  assert any(left for _, left, _ in kills), kills
  for (what, left, committed), next_log in zip(kills, logs[1:], strict=True):
    text = _read(next_log)
    if left:
      assert 'Removing unfinished checkpoint writes' in text and left[0] in text, what
    if committed:
      assert f'Resumed from step {committed[-1]} ' in text, what
    else:
      assert 'Resumed from step' not in text, what
  assert _logged_steps(logs[-1])[-1] == STEPS

  # Every step logged once, with the reference's loss; the same validation bits, exactly.
  got_losses, got_bits = _records(workdir)
  want_losses, want_bits = _records(tmp_path / 'reference')
  assert sorted(got_losses) == sorted(want_losses) == list(range(1, STEPS + 1))
  assert got_losses == want_losses
  assert got_bits == want_bits and len(want_bits) == 1
  assert _committed(workdir)[-1] == STEPS and not checkpoints.unfinished_saves(str(workdir))


# ------------------------------------------------------------------ damaged checkpoints


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  """(config, workdir, summary) of a finished 12-step tiny run with checkpoints at 8 and 12."""
  config = tiny_config('fixed', steps=12)
  config.train.update(checkpoint_every=4, keep_checkpoints=2)
  workdir = tmp_path_factory.mktemp('finished_run')
  return config, workdir, training.train(config, str(workdir))


def _truncate_arrays(step_dir) -> None:
  """Cuts every array data file of a checkpoint step in half (as a full disk would)."""
  files = [os.path.join(root, f) for root, _, names in os.walk(step_dir) for f in names]
  data = [f for f in files if f'{os.sep}d{os.sep}' in f]
  assert data
  for path in data:
    os.truncate(path, os.path.getsize(path) // 2)


def test_a_damaged_newest_step_is_skipped_with_a_warning(finished_run, tmp_path, caplog):
  config, finished, want = finished_run
  workdir = tmp_path / 'run'
  shutil.copytree(finished, workdir)
  ckpt = workdir / 'checkpoints'
  _truncate_arrays(ckpt / '12')
  shutil.copytree(ckpt / '8', ckpt / '16.orbax-checkpoint-tmp')  # a write that never finished

  with caplog.at_level(logging.WARNING):
    got = training.train(config, str(workdir))

  warnings = ' '.join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
  assert 'Skipping checkpoint step 12' in warnings and 'Resuming from step 8' in warnings
  assert '16.orbax-checkpoint-tmp' in warnings
  assert got['start_step'] == 8 and got['final_step'] == 12
  # Steps 9-12 done again give the same losses and validation bits as the first time.
  assert got['validation_bits'] == want['validation_bits']
  assert _records(workdir) == _records(finished)
  # The damaged step is kept aside, step 12 saved again, the unfinished write removed.
  assert (workdir / checkpoints.UNREADABLE_DIR / '12').is_dir()
  assert sorted(os.listdir(ckpt)) == ['12', '8']
  _, _, step = train_state.restore_params(config, str(workdir))
  assert step == 12


def test_no_intact_checkpoint_is_a_one_line_error_not_a_fresh_start(finished_run, tmp_path):
  config, finished, _ = finished_run
  workdir = tmp_path / 'run'
  shutil.copytree(finished, workdir)
  _truncate_arrays(workdir / 'checkpoints' / '12')
  shutil.rmtree(workdir / 'checkpoints' / '8' / 'default')
  with pytest.raises(errors.UserError) as raised:
    training.train(config, str(workdir))
  message = str(raised.value)
  assert isinstance(raised.value, checkpoints.CheckpointError) and '\n' not in message
  assert 'No intact checkpoint' in message and '[12, 8]' in message
  assert 'fresh --workdir' in message
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['12', '8']  # nothing moved or written
