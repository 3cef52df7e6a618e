"""Pins checkpoint keeping (perceiver_ar_vl/runs/checkpoint_keeping.py): train.keep_checkpoints,
keep_every and keep_best through orbax's preservation policies (a step is kept if any keeps
it), validation scored at each save with keep_best, and eval.checkpoint_step='best'.

The training run scripts its validation bits (run.validation_metrics is replaced), so which
step is the best is known; a SIGTERM stop in between checks that a resumed run keeps the
same steps, scores each save once and saves the stop's step unscored."""

import json
import os
import signal
import types

import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import tiny_config

from perceiver_ar_vl import training
from perceiver_ar_vl.evaluation import evaluate
from perceiver_ar_vl.runs import checkpoint_keeping, checkpoints, run_files
from perceiver_ar_vl.training import run

# Validation bits per byte at the scored saves of steps 4, 8 and 12, in that order.
SCRIPTED_BITS = (1.0, 3.0, 2.0)


def _committed(workdir) -> list[int]:
  return sorted(int(n) for n in os.listdir(checkpoints.checkpoint_dir(str(workdir))) if n.isdigit())


def test_a_step_is_kept_if_any_policy_keeps_it_and_best_is_the_lowest_bits(tmp_path, monkeypatch):
  config = tiny_config('fixed', steps=12)  # test_resume's run: its compiled step is cached
  config.train.update(checkpoint_every=4, keep_checkpoints=1, keep_every=8, keep_best=1)
  bits = iter(SCRIPTED_BITS)  # a further scoring (of the stop, or a second time) fails
  monkeypatch.setattr(
    run, 'validation_metrics', lambda *_: {'validation_bits_per_byte': next(bits)}
  )

  def sigterm_at_step_6(step):
    if step == 6:
      os.kill(os.getpid(), signal.SIGTERM)

  workdir = str(tmp_path / 'run')
  first = training.train(config, workdir, after_step=sigterm_at_step_6)
  # Step 6 (a stop, unscored) is the newest; step 4 the best scored one.
  assert first['final_step'] == 6 and _committed(workdir) == [4, 6]
  second = training.train(config, workdir)
  assert second['start_step'] == 6 and second['final_step'] == 12
  # 12: the newest; 8: a multiple of keep_every; 4: the lowest bits. Step 6 went.
  assert _committed(workdir) == [4, 8, 12]
  assert second['validation_bits'] == 2.0  # scored at the save of step 12, not again

  mngr = checkpoints.manager(workdir, create=False)
  try:
    assert checkpoint_keeping.scores(mngr) == {4: 1.0, 8: 3.0, 12: 2.0}
    assert checkpoints.resolve_step(mngr, 'best') == 4
    assert checkpoints.resolve_step(mngr, -1) == 12
  finally:
    mngr.close()
  records = run_files.read_jsonl(os.path.join(workdir, run_files.METRICS_FILE))
  scored = [
    (r['step'], r['validation_bits_per_byte']) for r in records if 'validation_bits_per_byte' in r
  ]
  assert scored == list(zip((4, 8, 12), SCRIPTED_BITS, strict=True))  # each save once

  config.eval.update(checkpoint_step='best', splits=('validation',), max_bytes=64)
  evaluate.evaluate(config, workdir)
  with open(os.path.join(workdir, 'eval.json')) as f:
    assert json.load(f)['checkpoint_step'] == 4


def test_best_without_a_scored_step_is_one_clear_error(tmp_path):
  mngr = checkpoints.manager(str(tmp_path), max_to_keep=2)
  try:
    checkpoints.save(mngr, 3, {'x': np.zeros(2)})
    mngr.wait_until_finished()
    with pytest.raises(checkpoints.CheckpointError) as raised:
      checkpoints.resolve_step(mngr, checkpoint_keeping.BEST)
  finally:
    mngr.close()
  message = str(raised.value)
  assert '\n' not in message and 'carries a validation score' in message
  assert 'train.keep_best=1' in message and '[3]' in message


def test_the_policies_keep_what_each_promises():
  """LatestN, EveryNSteps and BestN (lowest bits; unscored steps left to the others)."""
  bits = {2: 5.0, 4: 1.0, 6: None, 8: 3.0, 10: 2.0, 12: 4.0}
  infos = [
    types.SimpleNamespace(
      step=s, time=None, metrics=None if b is None else {checkpoint_keeping.METRIC: b}
    )
    for s, b in bits.items()
  ]
  context = ocp.checkpoint_managers.PreservationContext()

  def kept(**keep):
    policy = checkpoint_keeping.manager_options(**keep)['preservation_policy']
    flags = policy.should_preserve(infos, context=context)
    return [info.step for info, flag in zip(infos, flags, strict=True) if flag]

  assert kept(keep_checkpoints=2) == [10, 12]
  assert kept(keep_checkpoints=1, keep_every=4) == [4, 8, 12]
  assert kept(keep_checkpoints=1, keep_best=2) == [4, 10, 12]
  assert kept(keep_checkpoints=1, keep_every=8, keep_best=1) == [4, 8, 12]
