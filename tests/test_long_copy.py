"""configs/long_copy.py and benchmarks/long_copy.py: the presets validate, the benchmark
compares samples with the true sources, and a 16384-byte window trains and samples through
the chunked kernel without a [B, H, N, M] score tensor."""

import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO

from perceiver_ar_vl import config_lib, data, errors, training
from perceiver_ar_vl.experiments import step_cost
from perceiver_ar_vl.runs import run_files, train_state
from perceiver_ar_vl.sampling import sample

BENCHMARK = os.path.join(REPO, 'benchmarks', 'long_copy.py')


def load(path: str, name: str):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def long_copy(preset):
  return load(os.path.join(REPO, 'configs', 'long_copy.py'), 'long_copy_config').get_config(preset)


def benchmark_module():
  return load(BENCHMARK, 'long_copy_benchmark')


def test_presets_validate_and_say_their_distance():
  smoke, cpu = long_copy('smoke'), long_copy('cpu')
  for c in (smoke, cpu):
    config_lib.validate(c)
    assert c.data.name == 'copy'
  assert smoke.model.max_context <= 4096 and smoke.model.max_wavelength >= 1024
  assert not smoke.model.match_ngrams  # the plain model
  assert (cpu.model.max_context, cpu.data.copy_length // 2) == (131072, 65536)
  # Trained at a 1024-byte window with an 8-gram match head and no cross-attend rotary,
  # evaluated up to the full window.
  assert cpu.model.match_ngrams == (8,) and cpu.model.cross_attend_rotary_fraction == 0
  assert (cpu.window.schedule, cpu.window.min) == ('fixed', 1024)
  assert max(cpu.eval.windows) == 131072
  with pytest.raises(errors.UserError, match="takes a preset: one of \\('smoke', 'cpu'\\)"):
    long_copy('gpu')


@pytest.mark.parametrize('mode,aligned', [('copy', False), ('mirror', False), ('copy', True)])
def test_benchmark_targets_are_the_sources_of_the_second_halves(mode, aligned):
  c = long_copy('smoke')
  c.model.max_context = 64
  c.data.update(copy_length=32, copy_mode=mode, copy_min_crop=16 if aligned else 0)
  dataset = data.make_dataset(c.data, 65, c.seed)
  prompts, targets = benchmark_module().copy_prompts(dataset, 64, 3, 'validation')
  assert targets.shape == (3, 16)
  assert prompts.shape[1] == (16 if aligned else 64)
  first_halves = prompts[:, -16:]
  np.testing.assert_array_equal(targets, first_halves if mode == 'copy' else first_halves[:, ::-1])


N = 24  # latents: a size no other dimension has (head dim 16, d_model 32)


def tiny_long_window(window=16384):
  c = long_copy('smoke')
  c.model.update(max_context=window, max_wavelength=2.0 * window, d_model=32, mlp_dim=32)
  c.latents.update(min=N, max=N, buckets=(N,))
  c.data.copy_length = window
  c.train.update(steps=2, batch_size=2, checkpoint_every=2, log_every=1, eval_max_bytes=64)
  c.eval.update(max_bytes=64, batch_size=2)
  return c


def score_shapes(hlo: str, window: int) -> list[str]:
  """The array shapes in an HLO text with both a latent-sized and a window-sized dimension."""
  shapes = re.findall(r'\[([\d,]+)\]', hlo)
  return [s for s in shapes if {str(N), str(window)} <= set(s.split(','))]


def test_a_16k_window_trains_and_samples_without_a_score_tensor(tmp_path):
  c = tiny_long_window()
  m = c.model.max_context
  c.model.attention_impl = 'chunked'
  step, _ = step_cost.compiled_train_step(c, N)
  assert score_shapes(step.compiled.as_text(), m) == []
  dense, _ = step_cost.compiled_train_step(c, N, impl='einsum')
  assert score_shapes(dense.compiled.as_text(), m)  # the check can fail

  summary = training.train(c, str(tmp_path))
  assert summary['final_step'] == 2 and np.isfinite(summary['validation_bits'])
  final = [r for r in run_files.read_jsonl(f'{tmp_path}/metrics.jsonl') if r['step'] == 2]
  keys = set().union(*final)  # the first 64 validation bytes are all fresh: no copy_bits
  assert 'validation_fresh_bits' in keys and 'validation_copy_bits' not in keys
  model, variables, _ = train_state.restore_params(c, str(tmp_path))
  prompt = np.random.default_rng(0).integers(97, 113, (1, m)).astype(np.int32)
  cached = sample(model, variables, prompt, length=3, num_latents=N, temperature=0.0)
  uncached = sample(
    model, variables, prompt, length=3, num_latents=N, temperature=0.0, cached=False
  )
  np.testing.assert_array_equal(cached, uncached)


def test_benchmark_runs_on_a_trained_workdir(tmp_path):
  c = tiny_long_window(window=256)
  c.data.copy_length = 128
  training.train(c, str(tmp_path))
  result = subprocess.run(
    [sys.executable, BENCHMARK, f'--workdir={tmp_path}', '--bytes=4', '--uncached_bytes=2'],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  last = result.stdout.strip().splitlines()[-1]
  match = re.fullmatch(
    r'copied (\d+) of (\d+) bytes exactly \(([\d.]+)%\); cached ([\d.]+) bytes/s, '
    r'uncached ([\d.]+) bytes/s',
    last,
  )
  assert match, last
  assert int(match[2]) == 2 * 4 and int(match[1]) <= 8 and float(match[4]) > 0
