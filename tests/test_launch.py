"""Pins the command line on bad input: launch.py and `python -m perceiver_ar_vl.experiments`
print one line `error: <what to change>` and exit with status 2, with no traceback; a real
bug keeps its traceback; long and empty sampling prompts work.

Every case is a subprocess (a few seconds of imports each), so the whole table runs at once
in a thread pool, while the shared tiny run (conftest.trained_launch_run) trains for the
cases that need a checkpoint; each test then only checks its own result.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import subprocess

import pytest
from helpers import REPO, TINY_LAUNCH_ARGS, launch_command, launch_env

SMOKE = '--config=configs/curriculum.py:smoke'
EXPERIMENTS = 'perceiver_ar_vl.experiments'


@dataclasses.dataclass(frozen=True)
class Case:
  """One command and what its last stderr line must say.

  `args` may hold {data} (a folder of small text files), {workdir} (a fresh, empty workdir)
  and {run} (the trained tiny run's workdir). launch.py cases get `--config` (unless given),
  `--workdir={workdir}` (unless given) and helpers.TINY_LAUNCH_ARGS before `args`; with
  `as_typed` only `--workdir` is added, as a user types eval and sample for a workdir.
  """

  args: tuple[str, ...]
  phrase: str  # must appear in the `error: ...` line
  module: str = ''  # '' = launch.py
  interpreter_flags: tuple[str, ...] = ()  # for python itself, e.g. ('-X', 'importtime')
  as_typed: bool = False

  @property
  def needs_run(self) -> bool:
    return any('{run}' in a for a in self.args)


def launch(*args: str, phrase: str) -> Case:
  return Case(args, phrase)


CASES = {
  # Flags and config keys (reported while flags parse).
  'config_file_missing': launch('--config=configs/nope.py', phrase='no such config file'),
  'unknown_preset': launch(
    '--config=configs/curriculum.py:tiny', phrase="Unknown preset 'tiny'; choose one of"
  ),
  'unknown_config_key': launch('--config.train.stepz=3', phrase="unknown config key 'stepz'"),
  'override_does_not_parse': launch(
    '--config.train.steps=1.5', phrase='does not parse: train.steps takes an int'
  ),
  'stray_positional_argument': launch('foo', phrase="unexpected argument 'foo'"),
  'processes_without_coordinator': launch(
    '--num_processes=2', phrase='--num_processes and --process_id need --coordinator_address'
  ),
  'unknown_jax_flag': launch(
    '--jax_bogus_flag', phrase="Unknown command line flag 'jax_bogus_flag'"
  ),
  # Config values (config_lib.validate, before any JAX work).
  'unknown_strategy': launch(
    '--config.latents.strategy=random', phrase="Unknown latents.strategy='random'"
  ),
  'unknown_model_type': launch('--config.model.type=rnn', phrase="Unknown model.type='rnn'"),
  'unknown_activation': launch(
    '--config.model.activation=swish', phrase="Unknown model.activation='swish'"
  ),
  'latents_above_window': launch(
    '--config.latents.max=40', phrase='latents.max=40 exceeds the window'
  ),
  'buckets_unsorted': launch('--config.latents.buckets=(16,8)', phrase='strictly increasing'),
  'buckets_too_small': launch(
    '--config.latents.buckets=(4,8)', phrase='No bucket can hold 16 latents'
  ),
  'steps_zero': launch('--config.train.steps=0', phrase='train.steps must be >= 1'),
  'batch_negative': launch('--config.train.batch_size=-2', phrase='train.batch_size must be >= 1'),
  'log_every_zero': launch('--config.train.log_every=0', phrase='train.log_every must be >= 1'),
  'checkpoint_every_zero': launch(
    '--config.train.checkpoint_every=0', phrase='train.checkpoint_every must be >= 1'
  ),
  'batch_vs_grad_accum': launch(
    '--config.train.batch_size=4',
    '--config.train.grad_accum_steps=3',
    phrase='divisible by train.grad_accum_steps=3',
  ),
  'batch_vs_devices': launch(  # conftest simulates 2 CPU devices
    '--config.train.batch_size=3', phrase='divisible by the number of devices (2)'
  ),
  'eval_num_latents_above_window': launch(
    '--mode=eval', '--config.eval.num_latents=33', phrase='eval.num_latents=33 must be in [1,'
  ),
  'eval_sweep_zero': launch(
    '--mode=eval', '--config.eval.latents_sweep=(0,8)', phrase='eval.latents_sweep holds 0'
  ),
  'eval_step_not_a_step': launch(
    '--mode=eval', '--config.eval.checkpoint_step=bestest', phrase="eval.checkpoint_step='bestest'"
  ),
  'sample_temperature_negative': launch(
    '--mode=sample', '--config.sample.temperature=-0.5', phrase='sample.temperature=-0.5'
  ),
  'sample_top_k_negative': launch(
    '--mode=sample', '--config.sample.top_k=-1', phrase='sample.top_k=-1 must be >= 0'
  ),
  'sample_top_p_zero': launch(
    '--mode=sample', '--config.sample.top_p=0.0', phrase='sample.top_p=0.0 must be in (0, 1]'
  ),
  # Data files (checked before anything is prepared).
  'data_path_missing': launch(
    '--config.data.name=text_file',
    '--config.data.path={data}/missing.txt',
    phrase='data.path: no such file',
  ),
  'data_path_directory': launch(
    '--config.data.name=text_file', '--config.data.path={data}', phrase='is a directory'
  ),
  'data_path_empty': launch(
    '--config.data.name=text_file', '--config.data.path={data}/empty.txt', phrase='is empty'
  ),
  'data_shorter_than_window': launch(
    '--config.data.name=text_file',
    '--config.data.path={data}/short.txt',
    phrase='too short for the window; give at least',
  ),
  # Workdirs and checkpoints.
  'eval_without_checkpoints': launch('--mode=eval', phrase='No checkpoint in'),
  'sample_without_checkpoints': launch('--mode=sample', phrase='No checkpoint in'),
  'eval_step_not_saved': launch(
    '--mode=eval',
    '--workdir={run}',
    '--config.eval.checkpoint_step=7',
    phrase='No checkpoint at step 7',
  ),
  'eval_best_without_scores': launch(  # 'best' parses on the command line, then finds none
    '--mode=eval',
    '--workdir={run}',
    '--config.eval.checkpoint_step=best',
    phrase='carries a validation score, so none is the best',
  ),
  'eval_other_model_shape': launch(
    '--mode=eval',
    '--workdir={run}',
    '--config.model.d_model=32',
    phrase='was written by a different model: params/',
  ),
  'resume_other_model_shape': launch(
    '--workdir={run}',
    '--config.train.steps=4',
    '--config.model.mlp_dim=32',
    phrase='params/cross_attend/mlp/fc_in/bias has shape (16,) there but (32,)',
  ),
  # Eval and sample from the workdir's config.json (no --config).
  'eval_workdir_changes_model': Case(
    ('--mode=eval', '--workdir={run}', '--config.model.d_model=32'),
    '--config.model.d_model: ',
    as_typed=True,
  ),
  'sample_workdir_changes_data': Case(
    ('--mode=sample', '--workdir={run}', '--config.data.copy_length=8'),
    '--config.data.copy_length: ',
    as_typed=True,
  ),
  'eval_workdir_without_config_json': Case(('--mode=eval',), 'No config.json in', as_typed=True),
  'train_without_config': Case((), '--config is needed to train', as_typed=True),
  # The experiment runner.
  'experiments_unknown_run': Case(
    ('--out={workdir}', '--runs=fixed_256,bogus'), "unknown run 'bogus'", EXPERIMENTS
  ),
  'experiments_strategies_alias': Case(  # --strategies: the older name of --runs
    ('--out={workdir}', '--strategies=fixed_256,bogus'), "unknown run 'bogus'", EXPERIMENTS
  ),
  'experiments_negative_steps': Case(
    ('--out={workdir}', '--steps=-3'), '--steps=-3 must be >= 0', EXPERIMENTS
  ),
}

LONG_PROMPT = 'The quick brown fox jumps over the lazy dog, twice.'  # 51 bytes > window 32
SAMPLE = ('--mode=sample', '--workdir={run}', '--config.sample.cached=false')
# Commands that must succeed (or show a traceback), checked by the tests below the table.
OTHER_RUNS = {
  'long_prompt': launch(*SAMPLE, f'--config.sample.prompt={LONG_PROMPT}', phrase=''),
  'empty_prompt': launch(*SAMPLE, '--config.sample.prompt=', phrase=''),
  'planted_bug': launch('--config={data}/buggy_config.py', phrase=''),
  # A config file that counts its runs, with an override, for a workdir without checkpoints.
  'counted_config': launch(
    '--config={data}/counted_config.py', '--mode=sample', '--config.sample.length=3', phrase=''
  ),
  # A bad setting, with python's import log: it must stop before JAX is imported.
  'activation_import_log': Case(
    ('--config.model.activation=swish',),
    "Unknown model.activation='swish'",
    interpreter_flags=('-X', 'importtime'),
  ),
  'jax_log_compiles': launch('--config.train.steps=2', '--jax_log_compiles', phrase=''),
  # The trained run's model overrides (TINY_LAUNCH_ARGS) come from its config.json.
  'eval_from_workdir': Case(
    (
      '--mode=eval',
      '--workdir={run}',
      '--config.eval.splits=("test",)',
      '--config.model.attention_impl=einsum',
    ),
    '',
    as_typed=True,
  ),
  'sample_from_workdir': Case(
    ('--mode=sample', '--workdir={run}', '--config.sample.prompt=abc'), '', as_typed=True
  ),
}

# A config file whose training function has a bug: not a user error, so a traceback.
COUNTED_CONFIG = """
import os

from perceiver_ar_vl import config_lib


def get_config(arg=None):
  with open(os.path.join(os.path.dirname(__file__), 'counted_config.runs'), 'a') as f:
    f.write('run\\n')
  return config_lib.strategy_config('curriculum', 'smoke')
"""

BUGGY_CONFIG = """
from perceiver_ar_vl import config_lib, training


def _broken_train(config, workdir):
  raise ZeroDivisionError('planted bug')


training.train = _broken_train  # launch.py calls training.train


def get_config(arg=None):
  return config_lib.strategy_config('curriculum', 'smoke')
"""


def command(case: Case, data: str, workdir: str, run: str) -> list[str]:
  args = [a.format(data=data, workdir=workdir, run=run) for a in case.args]
  if case.module:
    python, *rest = launch_command(*args, module=case.module)
  elif case.as_typed:
    given = any(a.startswith('--workdir') for a in args)
    python, *rest = launch_command(*args, *([] if given else [f'--workdir={workdir}']))
  else:
    names = {a.split('=', 1)[0] for a in args}
    config = [a for a in args if a.startswith('--config=')] or [SMOKE]  # must come first
    base = config + ([] if '--workdir' in names else [f'--workdir={workdir}'])
    # A repeated tuple override would extend the tuple: the case's own value replaces TINY's.
    tiny = [a for a in TINY_LAUNCH_ARGS if a.split('=', 1)[0] not in names]
    python, *rest = launch_command(
      *base, *tiny, *[a for a in args if not a.startswith('--config=')]
    )
  return [python, *case.interpreter_flags, *rest]


@pytest.fixture(scope='session')
def results(tmp_path_factory, trained_launch_run):
  """{case name: CompletedProcess} for CASES and OTHER_RUNS, run concurrently."""
  data = tmp_path_factory.mktemp('launch_data')
  (data / 'empty.txt').write_bytes(b'')
  (data / 'short.txt').write_bytes(b'0123456789abcdef' * 16)  # validation split: 13 bytes
  (data / 'buggy_config.py').write_text(BUGGY_CONFIG)
  (data / 'counted_config.py').write_text(COUNTED_CONFIG)
  cases = {**CASES, **OTHER_RUNS}

  def run_case(name: str) -> subprocess.CompletedProcess:
    case = cases[name]
    run = trained_launch_run.result() if case.needs_run else ''
    workdir = str(tmp_path_factory.mktemp(f'workdir_{name}'))
    return subprocess.run(
      command(case, str(data), workdir, run),
      capture_output=True,
      text=True,
      env=launch_env(),
      cwd=REPO,
      timeout=300,
    )

  # Cases that wait for the trained run go last, so they never hold every worker idle.
  order = sorted(cases, key=lambda name: cases[name].needs_run)
  with concurrent.futures.ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
    futures = {name: pool.submit(run_case, name) for name in order}
    return {name: future.result() for name, future in futures.items()}


def last_line(text: str) -> str:
  lines = [line for line in text.splitlines() if line.strip()]
  return lines[-1] if lines else ''


@pytest.mark.parametrize('name', list(CASES))
def test_user_error_is_one_line_and_status_2(results, name):
  result = results[name]
  line = last_line(result.stderr)
  assert result.returncode == 2, result.stderr[-3000:]
  assert line.startswith('error: '), result.stderr[-3000:]
  assert CASES[name].phrase in line, line
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert [s for s in result.stderr.splitlines() if s.startswith('error: ')] == [line]


def test_long_prompt_is_cropped_to_the_window_with_a_notice(results):
  result = results['long_prompt']
  assert result.returncode == 0, result.stderr[-3000:]
  notice = [s for s in result.stderr.splitlines() if s.startswith('note: ')]
  assert notice == [
    f'note: the prompt has {len(LONG_PROMPT)} bytes, more than the window of 32; '
    'sampling from its last 32 bytes.'
  ]
  text = result.stdout.rstrip('\n')
  assert text.startswith(LONG_PROMPT[-32:]) and not text.startswith(LONG_PROMPT)


def test_empty_prompt_samples_from_nothing(results):
  result = results['empty_prompt']
  assert result.returncode == 0, result.stderr[-3000:]
  assert len(result.stdout.rstrip('\n').encode('utf-8', errors='surrogateescape')) >= 1
  assert '\0' not in result.stdout


def test_a_config_file_runs_once(results, tmp_path_factory):
  """Flags that parse load the config file once (absl), overrides included; it is run again
  only to explain a mistake."""
  result = results['counted_config']
  assert result.returncode == 2 and 'No checkpoint in' in last_line(result.stderr)
  data = os.path.dirname(result.args[2].split('=', 1)[1])
  with open(os.path.join(data, 'counted_config.runs')) as f:
    assert f.read().splitlines() == ['run']


def test_a_real_bug_keeps_its_traceback(results):
  result = results['planted_bug']
  assert result.returncode not in (0, 2)
  assert 'Traceback' in result.stderr and 'ZeroDivisionError: planted bug' in result.stderr
  assert not any(s.startswith('error: ') for s in result.stderr.splitlines())


def test_a_bad_setting_stops_before_jax_is_imported(results):
  result = results['activation_import_log']
  assert result.returncode == 2, result.stderr[-3000:]
  assert OTHER_RUNS['activation_import_log'].phrase in last_line(result.stderr)
  imported = [
    line.rsplit('|', 1)[1].strip()
    for line in result.stderr.splitlines()
    if line.startswith('import time:') and '|' in line
  ]
  assert 'perceiver_ar_vl.config_lib' in imported  # the log is there
  assert not [m for m in imported if m.split('.')[0] in ('jax', 'jaxlib', 'flax')]


def test_jax_flags_are_accepted(results):
  result = results['jax_log_compiles']
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Finished tracing' in result.stderr or 'Compiling' in result.stderr
  assert 'step 2/2' in result.stderr


def test_eval_and_sample_read_the_workdirs_config(results):
  """The run was trained with model overrides (helpers.TINY_LAUNCH_ARGS) that these commands
  do not repeat: without its config.json they would restore into the default model."""
  evaluated, sampled = results['eval_from_workdir'], results['sample_from_workdir']
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert '| test | 16 |' in evaluated.stdout, evaluated.stdout  # latents.max=16 of the run
  assert sampled.returncode == 0, sampled.stderr[-3000:]
  assert sampled.stdout.startswith('abc') and len(sampled.stdout.rstrip('\n')) == 3 + 4


def test_a_failed_resume_keeps_the_runs_config(results, trained_launch_run):
  assert results['resume_other_model_shape'].returncode == 2
  with open(os.path.join(trained_launch_run.result(), 'config.json')) as f:
    assert json.load(f)['model']['mlp_dim'] == 16  # not the rejected config's 32
