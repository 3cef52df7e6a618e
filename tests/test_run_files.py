"""Pins perceiver_ar_vl/runs/run_files.py: a workdir's small files, written atomically, with the
metrics of steps a resumed run does again dropped (end to end: tests/test_resume.py)."""

import json
import os

from perceiver_ar_vl.runs import run_files


def test_write_atomically_replaces_the_file_and_leaves_no_temporary(tmp_path):
  path = str(tmp_path / 'run.json')
  run_files.write_atomically(path, 'old')
  run_files.write_atomically(path, 'new')
  assert open(path).read() == 'new' and os.listdir(tmp_path) == ['run.json']


def test_metrics_after_the_resumed_step_and_a_cut_line_are_dropped(tmp_path):
  path = tmp_path / run_files.METRICS_FILE
  lines = [json.dumps({'step': s, 'loss': 1.0 / s}) for s in range(1, 6)]
  path.write_text('\n'.join(lines) + '\n{"step": 6, "lo')  # a kill cut the last line short
  run_files.drop_metrics_after(str(tmp_path), 3)
  assert [r['step'] for r in run_files.read_jsonl(str(path))] == [1, 2, 3]
  before = path.read_text()
  run_files.drop_metrics_after(str(tmp_path), 3)  # nothing to drop: left as it is
  assert path.read_text() == before
  run_files.drop_metrics_after(str(tmp_path / 'none'), 0)  # no metrics yet: nothing to do


def test_recorded_validation_bits_are_the_last_at_that_step(tmp_path):
  assert run_files.recorded_validation_bits(str(tmp_path), 4) is None
  records = [
    {'step': 4, 'loss': 2.0},
    {'step': 4, 'validation_bits_per_byte': 3.5},
    {'step': 4, 'validation_bits_per_byte': 3.25},
    {'step': 8, 'validation_bits_per_byte': 3.0},
  ]
  (tmp_path / run_files.METRICS_FILE).write_text(''.join(json.dumps(r) + '\n' for r in records))
  assert run_files.recorded_validation_bits(str(tmp_path), 4) == 3.25
  assert run_files.recorded_validation_bits(str(tmp_path), 2) is None


def test_summary_adds_each_invocations_seconds(tmp_path):
  run_files.write_summary({'final_step': 2}, str(tmp_path), 1.5)
  summary = {'final_step': 4}
  run_files.write_summary(summary, str(tmp_path), 2.0)
  assert summary['train_seconds'] == 3.5
  with open(tmp_path / run_files.SUMMARY_FILE) as f:
    assert json.load(f) == {'final_step': 4, 'train_seconds': 3.5}
  (tmp_path / run_files.SUMMARY_FILE).write_text('{"train_seconds": ')  # unreadable: no time
  run_files.write_summary({}, str(tmp_path), 1.0)
  with open(tmp_path / run_files.SUMMARY_FILE) as f:
    assert json.load(f)['train_seconds'] == 1.0
