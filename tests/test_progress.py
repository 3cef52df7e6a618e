"""Pins what a run reports while it runs (training/progress.py, runtime.py): throughput timed
over training steps only, the settings a run does not use as written, the profiler trace,
the startup report, the compilation cache setting and the W&B run id of a workdir."""

import gzip
import json
import os

import jax
import pytest
from helpers import tensorboard_scalars, tiny_config

from perceiver_ar_vl import config_lib, runtime, training
from perceiver_ar_vl.runs import metrics, run_files
from perceiver_ar_vl.training import progress


class FakeClock:
  def __init__(self):
    self.now = 100.0

  def __call__(self) -> float:
    return self.now


class Recorder:
  """A MetricWriter that keeps what it is given."""

  def __init__(self):
    self.records = []

  def write(self, step, scalars):
    self.records.append({'step': step, **scalars})


def test_throughput_counts_training_steps_only():
  """Compiling before the first step, the first step itself, validating and saving between
  steps: none of it lowers steps/s; compiling and saving are logged apart with the next
  flush."""
  config = tiny_config('fixed', steps=10)
  clock, writer = FakeClock(), Recorder()
  log = progress.MetricLog(writer, config, '/unused', clock=clock)
  step_metrics = {'loss': 1.0, 'bits_per_byte': 1.5}
  with log.paused('compile'):
    clock.now += 30.0  # compiling, before any step
  log.add(1, 16, 16, step_metrics)  # the clock starts when the first step has run
  for step in (2, 3):
    clock.now += 0.5
    log.add(step, 16, 16, step_metrics)
  with log.paused('checkpoint'):
    clock.now += 7.0
  with log.paused() as scoring:
    clock.now += 11.0
  assert scoring.seconds == 11.0
  log.flush(last_saved=0)
  first, *_, last = writer.records
  assert [r['step'] for r in writer.records] == [1, 2, 3]
  assert first['steps_per_sec'] == last['steps_per_sec'] == pytest.approx(2 / 1.0)
  assert first['target_tokens_per_sec'] == pytest.approx(2 * 4 * 16 / 1.0)  # batch 4, N 16
  assert last['compile_seconds'] == 30.0 and last['checkpoint_seconds'] == 7.0
  assert 'compile_seconds' not in first and 'eval_seconds' not in last  # unnamed: not logged
  # The next window starts its clock at its own first step.
  clock.now += 50.0
  log.add(4, 16, 16, step_metrics)
  clock.now += 0.25
  log.add(5, 16, 16, step_metrics)
  log.flush(last_saved=0)
  assert writer.records[-1]['steps_per_sec'] == pytest.approx(2 / 0.25)
  assert 'compile_seconds' not in writer.records[-1]


def test_settings_the_run_cannot_use_as_written_are_named():
  config = tiny_config('fixed', steps=20)
  config.train.update(warmup_steps=50, log_every=5, checkpoint_every=10, eval_every=0)
  (notice,) = progress.unused_settings(config)
  assert notice.startswith('train.warmup_steps=50 is not shorter than the run')
  assert 'warms up over 19 steps' in notice
  config.train.update(warmup_steps=5, log_every=40, checkpoint_every=30, eval_every=20)
  found = ' '.join(progress.unused_settings(config))
  assert 'train.log_every=40' in found and 'train.checkpoint_every=30' in found
  assert 'train.eval_every=20' in found and 'warmup' not in found
  config.train.update(log_every=5, checkpoint_every=10, eval_every=10)
  assert progress.unused_settings(config) == []


def test_a_run_logs_its_timings_apart_and_traces_the_steps_asked_for(tmp_path):
  config = tiny_config('fixed', steps=6)
  config.train.update(log_every=3, checkpoint_every=3, eval_every=3, profile_steps=(2, 3))
  training.train(config, str(tmp_path))
  records = run_files.read_jsonl(str(tmp_path / run_files.METRICS_FILE))
  timed = [r for r in records if 'compile_seconds' in r]
  assert [r['step'] for r in timed] == [3] and timed[0]['compile_seconds'] > 0
  assert [r['step'] for r in records if 'checkpoint_seconds' in r] == [6]  # saved at 3
  evals = [r for r in records if 'eval_seconds' in r]
  assert [r['step'] for r in evals] == [3] and 'validation_bits_per_byte' in evals[0]
  curves = tensorboard_scalars(tmp_path / metrics.TENSORBOARD_DIR)
  assert [step for step, _ in curves['loss']] == [1, 2, 3, 4, 5, 6]
  # The trace: one Perfetto file whose step annotations are steps 2 and 3.
  (trace,) = [
    os.path.join(root, name)
    for root, _, names in os.walk(tmp_path / progress.PROFILE_DIR)
    for name in names
    if name.endswith('perfetto_trace.json.gz')
  ]
  with gzip.open(trace) as f:
    events = json.load(f)
  events = events['traceEvents'] if isinstance(events, dict) else events
  steps = {int(e['args']['step_num']) for e in events if 'step_num' in e.get('args', {})}
  assert steps == {2, 3}


def test_profile_steps_must_lie_in_the_run():
  config = tiny_config('fixed', steps=6)
  for bad in ((0, 2), (3, 2), (2, 7), (1, 2, 3)):
    config.train.profile_steps = bad
    with pytest.raises(ValueError, match=r'train.profile_steps=.* must be \(\) or'):
      config_lib.validate(config)


def test_startup_report_says_what_runs():
  config = tiny_config('fixed', steps=6)
  params = {'a': jax.numpy.zeros((3, 4)), 'b': jax.numpy.zeros(5)}
  report = runtime.startup_report(config, params, '/some/cache')
  assert f'backend {jax.default_backend()}: {jax.device_count()} device(s)' in report
  assert 'perceiver_ar: 17 parameters, compute dtype float32' in report
  assert 'attention kernel einsum (auto)' in report  # tiny shapes on the CPU
  assert 'compilation cache /some/cache' in report and f'jax {jax.__version__}' in report
  assert 'cpu_execution inline' in report
  config.model.attention_impl = 'chunked'
  assert 'attention kernel chunked\n' in runtime.startup_report(config, params, None)


@pytest.fixture
def cache_setting():
  """JAX's compilation cache settings as the test found them, restored after it."""
  keys = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs')
  before = {key: getattr(jax.config, key) for key in keys}
  yield
  for key, value in before.items():
    jax.config.update(key, value)


def test_the_compilation_cache_setting(cache_setting, tmp_path, monkeypatch):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  chosen = jax.config.jax_compilation_cache_dir  # the suite's own (conftest.py)
  assert chosen and runtime.enable_compilation_cache('auto') == chosen  # the user's wins
  jax.config.update('jax_compilation_cache_dir', None)
  assert runtime.enable_compilation_cache('auto') == str(tmp_path / 'xdg/perceiver_ar_vl/jax')
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / 'xdg/perceiver_ar_vl/jax')
  assert runtime.enable_compilation_cache(str(tmp_path / 'mine')) == str(tmp_path / 'mine')
  assert runtime.enable_compilation_cache('') is None
  assert jax.config.jax_compilation_cache_dir is None


def test_a_workdir_keeps_one_wandb_run(tmp_path):
  ids = iter(['first', 'second'])
  assert metrics.wandb_run_id(str(tmp_path), lambda: next(ids)) == 'first'
  assert metrics.wandb_run_id(str(tmp_path), lambda: next(ids)) == 'first'  # resumed
  assert (tmp_path / metrics.WANDB_ID_FILE).read_text().strip() == 'first'
  (tmp_path / 'other').mkdir()
  assert metrics.wandb_run_id(str(tmp_path / 'other'), lambda: next(ids)) == 'second'


def test_library_users_see_progress_unless_they_chose_a_level(monkeypatch):
  """Without absl's flag parsing (a notebook) INFO lines are let through; a level the user
  set stays."""
  from types import SimpleNamespace

  from absl import logging

  logger = logging.get_absl_logger()
  unparsed = SimpleNamespace(FLAGS=SimpleNamespace(is_parsed=lambda: False))
  monkeypatch.setattr(runtime, 'flags', unparsed)
  monkeypatch.setattr(logger, 'level', 0)  # NOTSET: absl as imported
  before = logging.get_verbosity()
  try:
    runtime.show_info_logs()
    assert logging.get_verbosity() == logging.INFO
    logging.set_verbosity(logging.ERROR)  # the user's choice
    runtime.show_info_logs()
    assert logging.get_verbosity() == logging.ERROR
  finally:
    logging.set_verbosity(before)


def test_train_sets_cpu_execution_before_it_starts_jax(monkeypatch, tmp_path):
  """JAX reads the dispatch setting when it starts its CPU client, which the workdir lock
  does (jax.process_index): train() must set it before taking the lock."""
  seen = []

  def held(workdir):
    seen.append(jax.config.values['jax_cpu_enable_async_dispatch'])
    raise RuntimeError('stop here')

  monkeypatch.setattr(training.run.workdir_lock, 'held', held)
  jax.config.update('jax_cpu_enable_async_dispatch', True)
  try:
    with pytest.raises(RuntimeError, match='stop here'):
      training.train(tiny_config('fixed', steps=2), str(tmp_path))
  finally:
    runtime.configure_cpu_execution('inline')
  assert seen == [False]
