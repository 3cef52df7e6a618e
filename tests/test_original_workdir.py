"""`python -m perceiver_ar_vl.original`: one of the original's checkpoints as a workdir that
evaluation and sampling read like a trained run's (perceiver_ar_vl/original/workdir.py,
relabel.py, __main__.py).

The command runs once, as a subprocess, on tests/data/original_checkpoint.dill (the golden
checkpoint: a test-size rotary model, not a named sweep, so its kwargs are passed with
--kwargs), next to its error cases; the other conversions run in-process. The restored
models' logits are compared with from_haiku's on the same input, through the byte relabelling
(ids + 3, positions + 2), and without it.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess

import jax
import numpy as np
import pytest
from helpers import REPO, launch_command, launch_env

from perceiver_ar_vl import config_defaults, config_lib, errors, parallel, sampling, workdir_config
from perceiver_ar_vl.evaluation import evaluate
from perceiver_ar_vl.original import from_haiku, load_checkpoint, relabel, workdir
from perceiver_ar_vl.runs import checkpoints, train_state

DATA = os.path.join(os.path.dirname(__file__), 'data')
CHECKPOINT = os.path.join(DATA, 'original_checkpoint.dill')
GOLDEN = np.load(os.path.join(DATA, 'original_golden.npz'))
META = json.loads(bytes(GOLDEN['meta']).decode())
KWARGS = META['rotary_half_checkpoint']['kwargs']  # the golden checkpoint's model
SWEEP = 'random_mirrored_32'


def command(*args: str) -> subprocess.Popen:
  return subprocess.Popen(
    launch_command(*args, module='perceiver_ar_vl.original'),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=launch_env(),
    cwd=REPO,
  )


class Runs:
  """The command on the golden checkpoint and its error cases, started at once in the
  background (the in-process tests run meanwhile); `[case]` waits for one and gives
  (returncode, stdout, stderr, workdir)."""

  def __init__(self, root):
    used = root / 'used'
    (used / 'checkpoints' / '7').mkdir(parents=True)  # a committed step of some other run
    common = (f'--checkpoint={CHECKPOINT}', f'--kwargs={json.dumps(KWARGS)}')
    cases = {
      'converted': (root / 'converted', common + (f'--sweep={SWEEP}',)),
      'used_workdir': (used, common + (f'--sweep={SWEEP}',)),
      'missing_file': (root / 'missing', (f'--checkpoint={root}/nothing.dill', f'--sweep={SWEEP}')),
      'unknown_sweep': (root / 'unknown', common + ('--sweep=random_mirrored_64',)),
    }
    self.started = {
      name: (command(*args, f'--workdir={path}'), str(path)) for name, (path, args) in cases.items()
    }
    self.results: dict[str, tuple[int, str, str, str]] = {}

  def __getitem__(self, case: str) -> tuple[int, str, str, str]:
    if case not in self.results:
      process, path = self.started[case]
      stdout, stderr = process.communicate(timeout=300)
      self.results[case] = (process.returncode, stdout, stderr, path)
    return self.results[case]

  def close(self) -> None:
    """Stops the runs no test waited for."""
    for process, _ in self.started.values():
      if process.poll() is None:
        process.kill()
        process.communicate()


@pytest.fixture(scope='module', autouse=True)
def runs(tmp_path_factory):
  started = Runs(tmp_path_factory.mktemp('original_workdir'))
  yield started
  started.close()


def saved_config(path: str):
  """The workdir's config.json over the defaults: what evaluating or sampling a workdir reads."""
  return config_lib.validate(workdir_config.get_config(path))


def logits(model, variables, tokens, n, mask=None):
  """model.forward's logits of the last n positions (compiled: eager runs take seconds)."""
  mask = np.ones(tokens.shape, bool) if mask is None else mask
  forward = jax.jit(lambda v, t, m: model.forward(v, t, n, n, input_mask=m))
  return np.asarray(forward(variables, np.asarray(tokens, np.int32), mask))


def inverse(ids: np.ndarray, num_classes: int) -> np.ndarray:
  """Our id of each of the original's ids."""
  ours = np.full(num_classes, -1)
  ours[ids[ids >= 0]] = np.nonzero(ids >= 0)[0]
  return ours


def test_norelabel_keeps_the_ids(tmp_path):
  config, step = workdir.write_workdir(CHECKPOINT, str(tmp_path), SWEEP, KWARGS, byte_data=False)
  assert (step, config.model.vocab_size, config.model.position_origin) == (1234, 256, 'window')
  model, variables, _ = train_state.restore_params(saved_config(str(tmp_path)), str(tmp_path))
  reference, reference_variables = from_haiku(load_checkpoint(CHECKPOINT), **KWARGS)
  tokens = GOLDEN['rotary_half_checkpoint/tokens']
  want = logits(reference, reference_variables, tokens, 4)
  got = logits(model, variables, tokens, 4)
  assert np.abs(got[..., :32] - want).max() < 1e-5


def test_parameters_of_another_model_name_kwargs(tmp_path):
  with pytest.raises(errors.UserError, match=f'not hold a model of sweep {SWEEP}.*--kwargs') as e:
    workdir.write_workdir(CHECKPOINT, str(tmp_path), SWEEP)  # the golden model is not the sweep's
  assert '\n' not in str(e.value) and not os.listdir(tmp_path)


def test_absolute_positions_start_at_the_originals_first_byte(tmp_path):
  """The golden sinusoidal model as a checkpoint: our example's byte k (position 0 onwards)
  reads the original's position k + 2, as after PAD and SOS in the original's windows."""
  name, kwargs = 'sinusoidal', META['sinusoidal']['kwargs']
  params: dict = {}
  for key in GOLDEN.files:
    if key.startswith(f'{name}/params/'):
      module, leaf = key[len(f'{name}/params/') :].rsplit('/', 1)
      params.setdefault(module, {})[leaf] = GOLDEN[key]
  path = tmp_path / 'checkpoint.dill'
  path.write_bytes(pickle.dumps({'global_step': np.int64(5), 'params': params, 'state': {}}))
  config, _ = workdir.write_workdir(str(tmp_path), str(tmp_path / 'w'), SWEEP, kwargs)
  assert config.model.position_encoding == 'absolute' and not config.sample.cached
  model, variables, _ = train_state.restore_params(
    saved_config(str(tmp_path / 'w')), str(tmp_path / 'w')
  )
  reference, reference_variables = from_haiku(params, **kwargs)
  ours_of = inverse(relabel.original_ids(kwargs['num_classes']), kwargs['num_classes'])
  window = kwargs['max_context_length']
  x = np.random.default_rng(0).integers(3, kwargs['num_classes'], (2, window - 2))
  original = np.concatenate([np.tile([0, 2], (2, 1)), x], 1)  # PAD, SOS, then the example
  mask = np.arange(window)[None].repeat(2, 0) >= 2
  want = logits(reference, reference_variables, original, 10, mask)
  got = logits(model, variables, ours_of[original], 10, mask)
  assert np.abs(got[..., ours_of] - want).max() < 1e-5
  unshifted = logits(reference, reference_variables, x, 10)  # the example from position 0
  assert np.abs(got[..., ours_of] - unshifted).max() > 1e-3


def test_find_checkpoint_takes_the_highest_step(tmp_path):
  for step in (900, 1234, 60):
    directory = tmp_path / 'models' / 'latest' / f'step_{step}_2022-06-01T00:00:00'
    directory.mkdir(parents=True)
    (directory / 'checkpoint.dill').write_bytes(b'')
  found = workdir.find_checkpoint(str(tmp_path))
  assert 'step_1234_' in found and found.endswith('checkpoint.dill')
  assert workdir.find_checkpoint(found) == found
  assert workdir.find_checkpoint(os.path.dirname(found)) == found


def test_the_command_writes_a_complete_workdir(runs):
  code, stdout, stderr, path = runs['converted']
  assert code == 0, stderr[-2000:]
  assert f'--workdir={path} --mode=sample' in stdout and 'checkpoints/1234' in stdout
  assert 'a prompt of its first 7 comes back reversed' in stdout
  with open(os.path.join(path, 'config.json')) as f:
    written = json.load(f)

  def keys(tree, prefix=''):
    return {
      k
      for key, v in tree.items()
      for k in (keys(v, f'{prefix}{key}.') if isinstance(v, dict) else [prefix + key])
    }

  assert keys(written) == keys(config_defaults.base_config().to_dict())
  config = saved_config(path)
  assert (config.data.name, config.data.copy_mode, config.data.copy_length) == (
    'copy',
    'mirror',
    14,
  )
  assert (config.data.copy_vocab, config.model.vocab_size, config.train.steps) == (256, 259, 1234)
  assert (config.latents.strategy, config.latents.max) == ('fixed', 16)
  assert config.model.position_origin == 'first_byte' and config.sample.cached  # rotary
  assert train_state.checkpoint_step(path) == 1234


def test_restored_logits_equal_from_haikus(runs):
  path = runs['converted'][3]
  config = saved_config(path)
  model, variables, step = train_state.restore_params(config, path)
  assert step == 1234
  reference, reference_variables = from_haiku(load_checkpoint(CHECKPOINT), **KWARGS)
  ours_of = inverse(relabel.original_ids(KWARGS['num_classes']), KWARGS['num_classes'])
  # PAD, EOS, SOS after the bytes; the original's id b + 3 is byte b.
  assert list(ours_of[:5]) == [256, 257, 258, 0, 1] and ours_of[31] == 28
  tokens = GOLDEN['rotary_half_checkpoint/tokens']  # the original's ids
  for n in META['rotary_half_checkpoint']['latent_counts']:
    want = logits(reference, reference_variables, tokens, n)
    got = logits(model, variables, ours_of[tokens], n)
    assert np.abs(got[..., ours_of] - want).max() < 1e-5
    assert np.abs(got[..., : KWARGS['num_classes']] - want).max() > 1e-3  # ids do move
    assert np.all(np.delete(got, ours_of, axis=-1) == relabel.UNUSED_LOGIT)


def test_the_optimizer_state_is_fresh(runs):
  path = runs['converted'][3]
  config = saved_config(path)
  model = config_lib.create_model(config)
  abstract = train_state.abstract_train_state(config, model, parallel.make_mesh())
  mngr = checkpoints.manager(path, create=False)
  try:
    state = checkpoints.restore(mngr, abstract)
  finally:
    mngr.close()
  assert int(state.step) == 1234
  assert all(not np.any(np.asarray(leaf)) for leaf in jax.tree.leaves(state.opt_state))


def test_eval_and_sample_read_the_workdir(runs):
  path = runs['converted'][3]
  config = saved_config(path)
  config.eval.max_bytes = 128
  report = evaluate.evaluate(config, path)
  assert report['checkpoint_step'] == 1234
  assert {r['split'] for r in report['results']} == {'validation', 'test'}
  assert all(np.isfinite(r['bits']) for r in report['results'])
  config.sample.update(prompt='mirror', length=4)
  text = sampling.sample_from_workdir(config, path)
  assert text.startswith('mirror') and len(text) > len('mirror')


@pytest.mark.parametrize(
  'case,message',
  [
    ('used_workdir', 'already holds checkpoints'),
    ('missing_file', 'No checkpoint at'),
    ('unknown_sweep', "Unknown sweep 'random_mirrored_64'"),
  ],
)
def test_errors_are_one_line(runs, case, message):
  code, stdout, stderr, path = runs[case]
  lines = stderr.strip().splitlines()
  assert code == 2 and lines[-1].startswith('error: ') and message in lines[-1], stderr[-2000:]
  assert not os.path.exists(os.path.join(path, 'config.json'))
