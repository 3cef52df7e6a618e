"""Pins perceiver_ar_vl/experiments/__main__.py, the command line of the comparison: its flags,
a smoke report through the real entry point, JAX's flags, and a stopped run's exit."""

import os
import subprocess
import sys

from helpers import REPO, launch_command, launch_env

EXPERIMENTS = 'perceiver_ar_vl.experiments'

_CLI = r"""
import os, runpy, sys
sys.path.insert(0, os.path.join(sys.argv[1], 'tests'))
import test_experiments
from perceiver_ar_vl import training
from perceiver_ar_vl.experiments import runner
runner.experiment_config = test_experiments.tiny_experiment_config
if sys.argv[2] == 'stop':
  training.train = lambda config, workdir: {'final_step': 1, 'start_step': 0}
sys.argv = ['perceiver_ar_vl.experiments', *sys.argv[3:]]
runpy.run_module('perceiver_ar_vl.experiments', run_name='__main__', alter_sys=True)
"""


def test_command_line_help_and_a_smoke_report(tmp_path):
  """The real entry point: `--help` names the flags; a tiny smoke comparison writes its report
  (and accepts JAX's flags); a stopped run exits 0 without a result."""
  ok, stopped = tmp_path / 'ok', tmp_path / 'stopped'
  common = ['--preset=smoke', '--steps=2', '--runs=curriculum']
  procs = [
    subprocess.Popen(
      [sys.executable, '-c', _CLI, REPO, mode, *common, f'--out={out}', *extra],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=launch_env(),
      cwd=REPO,
    )
    for mode, out, extra in (('ok', ok, ['--jax_log_compiles']), ('stop', stopped, []))
  ]
  help_run = subprocess.run(
    launch_command('--help', module=EXPERIMENTS),
    capture_output=True,
    text=True,
    env=launch_env(),
    cwd=REPO,
    timeout=120,
  )
  (out, err), (_, stop_err) = [proc.communicate(timeout=300) for proc in procs]
  # absl's --help prints the flags and exits with status 1 (its usage exit), no error line.
  assert help_run.returncode == 1 and not help_run.stderr, help_run.stderr[-3000:]
  assert help_run.stdout.startswith('`python -m perceiver_ar_vl.experiments`')
  for flag in ('--runs', '--strategies', '--preset', '--budget', '--seeds', '--out'):
    assert flag in help_run.stdout, flag

  assert procs[0].returncode == 0, err[-3000:]
  assert '| steps | curriculum | 4..16 | 1 | 2 |' in out and os.path.getsize(ok / 'results.md')
  assert (
    f'Command: `python -m perceiver_ar_vl.experiments --preset=smoke --out={ok} '
    '--runs=curriculum --seeds=0 --budget=steps --steps=2`' in out
  )
  assert 'Finished tracing' in err  # --jax_log_compiles took effect

  assert procs[1].returncode == 0, stop_err[-3000:]
  assert 'stopped at step 1 of 2 (saved)' in stop_err and 'Traceback' not in stop_err
  assert not os.path.exists(stopped / 'runs' / 'curriculum' / 'seed0-2steps' / 'run.json')
