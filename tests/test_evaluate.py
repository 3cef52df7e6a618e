"""Pins perceiver_ar_vl/evaluation/ (evaluate.py, windows.py, copy_metrics.py): every target
scored once, against a slow reference; separate examples scored in their own windows; the copy
task's copy / fresh bits against a numpy reference."""

import json
import logging
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tensorboard_scalars, tiny_config

from perceiver_ar_vl import data, models, sampling, training
from perceiver_ar_vl.evaluation import evaluate
from perceiver_ar_vl.evaluation import windows as eval_windows
from perceiver_ar_vl.models.base import LanguageModel
from perceiver_ar_vl.runs import run_files

M = 16


@pytest.mark.parametrize('length', [2, 5, 16, 17, 40, 41])
@pytest.mark.parametrize('per_window', [1, 3, 8, 16])
def test_every_target_is_scored_exactly_once(length, per_window):
  stream = np.arange(length)  # byte value == stream index, so targets name themselves
  windows, input_mask, weights = evaluate.block_windows(stream, M, per_window)
  targets = windows[:, M + 1 - per_window :]  # what the last `per_window` slots predict
  counts = np.bincount(targets[weights > 0], minlength=length)
  assert counts[0] == 0 and np.all(counts[1:] == 1)
  # Masked inputs are exactly the left padding; unmasked inputs are the stream's bytes.
  assert np.all(windows[:, :M][~input_mask] == 0)


def slow_reference_bits(model, params, stream, n, mode):
  """Per-target float64 scoring: each target gets its own model call, no weights."""
  length = len(stream)
  per_window = n if mode == 'blocks' else 1
  ends = list(range(1 + per_window, length + 1, per_window))
  if not ends or ends[-1] < length:
    ends.append(length)
  nll, scored, by_position = [], set(), {}
  apply = jax.jit(model.apply, static_argnames='num_latents')
  for e in ends:
    inputs = [int(stream[i]) if i >= 0 else 0 for i in range(e - 1 - M, e - 1)]
    mask = np.array([i >= 0 for i in range(e - 1 - M, e - 1)])
    logits = apply(
      params, jnp.asarray([inputs]), num_latents=n, input_mask=jnp.asarray(mask[None])
    )[0]
    for t in range(e - per_window, e):
      if t < 1 or t in scored:
        continue
      scored.add(t)
      slot = n - (e - t)
      row = np.asarray(logits[slot], np.float64)
      log_z = np.log(np.exp(row - row.max()).sum()) + row.max()
      nll.append(log_z - row[stream[t]])
      quarter = (M - n + slot) // (M // 4) * (M // 4)  # the target's window position, binned
      by_position.setdefault(f'[{quarter},{quarter + M // 4})', []).append(nll[-1])
  assert scored == set(range(1, length))
  return float(np.mean(nll)) / math.log(2), {
    k: float(np.mean(v)) / math.log(2) for k, v in by_position.items()
  }


@pytest.fixture(scope='module')
def tiny_model():
  model = models.PerceiverAR(
    num_layers=2, num_heads=2, d_model=16, mlp_dim=32, max_context=M, dropout_rate=0.0
  )
  params = jax.jit(model.init, static_argnames='num_latents')(
    jax.random.PRNGKey(0), jnp.zeros((1, M), jnp.int32), num_latents=1
  )
  params = jax.tree.map(
    lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params
  )
  return model, params


@pytest.mark.parametrize('n,mode', [(4, 'blocks'), (7, 'blocks'), (16, 'blocks'), (4, 'stride1')])
def test_bits_per_byte_matches_slow_per_target_reference(tiny_model, n, mode):
  model, params = tiny_model
  stream = np.random.default_rng(0).integers(0, 256, 45).astype(np.uint8)
  got = evaluate.bits_per_byte(model, params, stream, num_latents=n, batch_size=3, mode=mode)
  assert got['num_targets'] == 44
  want_bits, want_by_position = slow_reference_bits(model, params, stream, n, mode)
  assert got['bits'] == pytest.approx(want_bits, rel=1e-5)
  assert got['bits_by_position'] == pytest.approx(want_by_position, rel=1e-5)


def test_a_long_evaluation_says_how_far_it_is(tiny_model, monkeypatch, caplog):
  model, params = tiny_model
  stream = np.random.default_rng(1).integers(0, 256, 100).astype(np.uint8)
  quiet = evaluate.bits_per_byte(model, params, stream, num_latents=4, batch_size=2)
  monkeypatch.setattr(evaluate, 'PROGRESS_SECONDS', 0.0)  # every batch is "long"
  caplog.set_level(logging.INFO, logger='absl')
  loud = evaluate.bits_per_byte(model, params, stream, num_latents=4, batch_size=2, label='x')
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith('Evaluating x')]
  assert lines[0].startswith('Evaluating x: 2 of 25 windows,') and len(lines) == 12
  assert loud['bits'] == pytest.approx(quiet['bits'], rel=1e-6)  # read more often, same sums


def test_max_bytes_limits_the_scored_prefix(tiny_model):
  model, params = tiny_model
  stream = np.random.default_rng(1).integers(0, 256, 100).astype(np.uint8)
  a = evaluate.bits_per_byte(model, params, stream, num_latents=4, max_bytes=30)
  b = evaluate.bits_per_byte(model, params, stream[:30], num_latents=4)
  assert a == b and a['num_targets'] == 29


def test_eval_after_restore_reproduces_the_logged_validation_figure(tmp_path, capsys):
  config = tiny_config('uniform', steps=8)
  config.train.eval_max_bytes = 300
  summary = training.train(config, str(tmp_path))
  logged = [
    r['validation_bits_per_byte']
    for r in run_files.read_jsonl(str(tmp_path / 'metrics.jsonl'))
    if 'validation_bits_per_byte' in r
  ]
  assert logged[-1] == pytest.approx(summary['validation_bits'], rel=1e-6)

  config.eval.update(max_bytes=300, splits=('validation', 'test'), latents_sweep=(4, 32))
  report = evaluate.evaluate(config, str(tmp_path))
  rows = {(r['split'], r['num_latents']): r for r in report['results']}
  assert sorted(rows) == [
    ('test', 4),
    ('test', 16),
    ('test', 32),
    ('validation', 4),
    ('validation', 16),
    ('validation', 32),
  ]
  assert rows['validation', 16]['bits'] == pytest.approx(logged[-1], rel=1e-6)
  assert all(r['num_targets'] == 299 for r in rows.values())
  for r in rows.values():  # the copy task says what was learned: copies and fresh bytes
    assert r['copy_targets'] + r['fresh_targets'] == 299
    mixed = r['copy_bits'] * r['copy_targets'] + r['fresh_bits'] * r['fresh_targets']
    assert mixed / 299 == pytest.approx(r['bits'], rel=1e-6)  # float32 sums on the device
    assert sum(d['count'] for d in r['bits_by_distance']) == r['copy_targets']
  with open(os.path.join(tmp_path, 'eval.json')) as f:
    assert json.load(f)['checkpoint_step'] == 8
  assert '| validation | 32 |' in capsys.readouterr().out
  curves = tensorboard_scalars(tmp_path / 'tensorboard')  # beside the training curves
  (point,) = curves['eval_blocks/test/latents_4/bits_per_byte']
  assert point == (8, pytest.approx(rows['test', 4]['bits'], rel=1e-6))
  assert curves['eval_blocks/validation/latents_32/copy_bits'][0][0] == 8
  assert 'loss' in curves

  # Several windows in one evaluation: the copy task's examples follow each window.
  config.eval.update(windows=(24, 32), latents_sweep=(), splits=('validation',))
  report = evaluate.evaluate(config, str(tmp_path))
  assert [(r['window'], r['num_targets']) for r in report['results']] == [(24, 47), (32, 63)]
  assert '| validation | 24 | 16 |' in capsys.readouterr().out  # a window column
  assert 'eval_blocks/validation/window_24/latents_16/bits_per_byte' in tensorboard_scalars(
    tmp_path / 'tensorboard'
  )
  assert report['results'][1]['bits'] != report['results'][0]['bits']

  text = sampling.sample_from_workdir(config, str(tmp_path))
  assert text.startswith(config.sample.prompt)
  assert len(text.encode('utf-8', errors='surrogateescape')) >= len(config.sample.prompt) + 1
  assert text == sampling.sample_from_workdir(config, str(tmp_path))  # seeded


def test_bad_latent_count_is_a_clear_error(tiny_model):
  model, params = tiny_model
  with pytest.raises(ValueError, match='num_latents=17'):
    evaluate.bits_per_byte(model, params, np.zeros(10, np.uint8), num_latents=17)


# --------------------------------------------------- separate examples and the copy metrics

TABLE = np.random.default_rng(11).normal(size=(256, 256)).astype(np.float32)


class PreviousByteModel(LanguageModel):
  """A stub scorer: each slot's logits are TABLE[its own input byte], so a target's nats
  depend only on (the byte before it, the target): numpy computes every one."""

  def window_logits(self, tokens_BxM, num_latents, bucket, input_mask=None, deterministic=True):
    return jnp.asarray(TABLE)[tokens_BxM[:, tokens_BxM.shape[1] - bucket :]]


def reference_copy_metrics(examples, distances):
  """float64 numpy: every target after the first byte of each example (rows of `examples`),
  predicted from the byte before it; bits overall, on copies, on fresh bytes, by distance bin."""
  table = TABLE.astype(np.float64)
  log_z = np.log(np.exp(table).sum(1))
  nats, kinds, right = [], [], []
  for example, dist in zip(examples, distances, strict=True):
    for t in range(1, len(example)):
      nats.append(log_z[example[t - 1]] - table[example[t - 1], example[t]])
      kinds.append(int(dist[t]))
      right.append(np.argmax(table[example[t - 1]]) == example[t])
  nats, kinds, right = np.array(nats), np.array(kinds), np.array(right)
  bits = lambda sel: nats[sel].mean() / math.log(2)
  bins = np.where(kinds > 0, np.floor(np.log2(np.maximum(kinds, 1))) + 1, 0)
  by_distance = [
    {
      'distance': f'[{2 ** (k - 1)},{2**k})',
      'bits': bits(bins == k),
      'count': int((bins == k).sum()),
    }
    for k in range(1, int(bins.max()) + 1)
    if (bins == k).any()
  ]
  return {
    'bits': bits(slice(None)),
    'num_targets': len(nats),
    'copy_bits': bits(kinds > 0),
    'copy_accuracy': right[kinds > 0].mean(),
    'fresh_bits': bits(kinds == 0),
    'copy_targets': int((kinds > 0).sum()),
    'fresh_targets': int((kinds == 0).sum()),
    'bits_by_distance': by_distance,
  }


def check_against(got, want):
  for key in ('bits', 'copy_bits', 'fresh_bits', 'copy_accuracy'):
    assert got[key] == pytest.approx(want[key], rel=1e-6), key
  for key in ('num_targets', 'copy_targets', 'fresh_targets'):
    assert got[key] == want[key], key
  assert [(d['distance'], d['count']) for d in got['bits_by_distance']] == [
    (d['distance'], d['count']) for d in want['bits_by_distance']
  ]
  got_bits = [d['bits'] for d in got['bits_by_distance']]
  assert got_bits == pytest.approx([d['bits'] for d in want['bits_by_distance']], rel=1e-6)


@pytest.mark.parametrize('mode', ['copy', 'mirror'])
@pytest.mark.parametrize('n,eval_mode', [(4, 'blocks'), (16, 'blocks'), (1, 'stride1')])
def test_copy_metrics_are_exact_on_separate_examples(mode, n, eval_mode):
  """The aligned task: each example of L = 12 bytes scored in its own windows (its first byte
  unscored, nothing read from the example before), bits split by the source distance."""
  ds = data.make_dataset(
    {'name': 'copy', 'copy_mode': mode, 'copy_length': 12, 'copy_min_crop': 3}, M + 1
  )
  examples, distances = ds.split_bytes('test'), ds.source_distances('test')
  assert examples.shape == distances.shape == (64, 12)
  model = PreviousByteModel(max_context=M)
  got = evaluate.bits_per_byte(
    model, {}, examples, num_latents=n, batch_size=8, mode=eval_mode, source_distances=distances
  )
  check_against(got, reference_copy_metrics(examples, distances))
  # max_bytes cuts the examples in order, the last one mid-way.
  cut = evaluate.bits_per_byte(
    model, {}, examples, num_latents=n, max_bytes=12 * 5 + 7, source_distances=distances
  )
  rows = [examples[i, : 12 if i < 5 else 7] for i in range(6)]
  check_against(cut, reference_copy_metrics(rows, [distances[i] for i in range(6)]))


def test_recall_metrics_are_exact_and_the_queries_values_have_sources():
  """The recall task: [E, W] examples; its query values carry their pair's distance."""
  ds = data.make_dataset({'name': 'recall', 'recall_pairs': 2, 'recall_vocab': 4}, M + 1)
  examples, distances = ds.split_bytes('validation'), ds.source_distances('validation')
  t_E, t_L = np.nonzero(distances)
  np.testing.assert_array_equal(examples[t_E, t_L], examples[t_E, t_L - distances[t_E, t_L]])
  got = evaluate.bits_per_byte(
    PreviousByteModel(max_context=M), {}, examples, num_latents=8, source_distances=distances
  )
  want = reference_copy_metrics(examples, distances)
  check_against(got, want)
  assert 0 < want['copy_targets'] < want['fresh_targets']


def test_copy_metrics_of_a_stream_read_across_examples():
  """The streamed task: one stream, every target after byte 0 scored from the byte before it
  (the previous example's last byte for an example's first)."""
  ds = data.make_dataset({'name': 'copy', 'copy_mode': 'mirror', 'copy_length': 10}, M + 1)
  stream, distances = ds.split_bytes('validation'), ds.source_distances('validation')
  got = evaluate.bits_per_byte(
    PreviousByteModel(max_context=M), {}, stream, num_latents=8, source_distances=distances
  )
  check_against(got, reference_copy_metrics(stream[None], distances[None]))
  plain = evaluate.bits_per_byte(PreviousByteModel(max_context=M), {}, stream, num_latents=8)
  assert 'copy_bits' not in plain and plain['bits'] == pytest.approx(got['bits'], rel=1e-12)


def test_windows_of_separate_examples_never_cross_them():
  examples = np.arange(5 * 7).reshape(5, 7)  # byte value == stream index
  plan = eval_windows.plan_windows(examples, 3)
  windows, input_mask, weights = eval_windows.block_windows(
    plan.stream, M, 3, plan.ends, plan.first_new, plan.origins
  )
  targets = windows[:, M + 1 - 3 :][weights > 0]
  assert sorted(targets) == [i for i in range(35) if i % 7]  # each once, no first byte
  example_of_window = plan.origins // 7
  for w, mask, e in zip(windows, input_mask, example_of_window, strict=True):
    assert np.all(w[:M][mask] // 7 == e) and np.all(w[:M][~mask] == 0)
  assert plan.num_targets == 30
