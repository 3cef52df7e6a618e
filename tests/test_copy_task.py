"""Pins perceiver_ar_vl/data/copy_task.py and data/copy_settings.py: the aligned (original)
copy task's cropped, left-padded rows, the source distances evaluation reads, and the
curriculum over the copy length (its formulas, determinism, exact resume, validation)."""

import math

import numpy as np
import pytest
from helpers import tiny_config

from perceiver_ar_vl import config_lib, data, errors
from perceiver_ar_vl.data import copy_settings, copy_task

WINDOW = 33  # W = M + 1 bytes per training row


def aligned(mode='copy', length=20, min_crop=5, **more):
  return data.make_dataset(
    {
      'name': 'copy',
      'copy_mode': mode,
      'copy_length': length,
      'copy_min_crop': min_crop,
      'copy_vocab': 6,
      **more,
    },
    WINDOW,
  )


def follows_the_copy_rule(example, length, mode):
  """Whether `example` (a prefix of an example of `length` bytes) repeats its first half."""
  half = (length + 1) // 2
  for k in range(half, len(example)):
    source = k - half if mode == 'copy' else 2 * half - 1 - k
    if example[k] != example[source]:
      return False
  return True


def is_a_stream_window(row, length):
  """Whether `row` is a window of copy examples of `length` bytes back to back at some
  phase: every second-half byte whose source lies in the row equals it."""
  half = (length + 1) // 2
  i = np.arange(len(row))
  for phase in range(length):
    copies = i[((i + phase) % length >= half) & (i >= half)]
    if np.array_equal(row[copies], row[copies - half]):
      return True
  return False


@pytest.mark.parametrize('mode', ['copy', 'mirror'])
def test_aligned_rows_are_one_cropped_example_after_left_padding(mode):
  ds = aligned(mode)
  rows = ds.train_batch(step=2, batch_size=64, seed=0)
  assert rows.shape == (64, WINDOW) and rows.dtype == np.int32
  valid = rows >= 0
  crops = valid.sum(1)
  # Left padding, then the example up to the row's end.
  np.testing.assert_array_equal(valid, np.arange(WINDOW)[None] >= WINDOW - crops[:, None])
  assert np.all(rows[~valid] == data.PAD)
  assert crops.min() >= 5 and crops.max() <= 20 and len(set(crops)) > 5  # c ~ U[5, 20]
  symbols = set(range(ord('a'), ord('a') + 6))
  for row, c in zip(rows, crops, strict=True):
    example = row[WINDOW - c :]
    assert set(example) <= symbols
    assert follows_the_copy_rule(example, 20, mode)
  other = 'mirror' if mode == 'copy' else 'copy'
  assert not all(follows_the_copy_rule(r[r >= 0], 20, other) for r in rows)
  np.testing.assert_array_equal(rows, ds.train_batch(2, 64, 0))  # a pure function of the step
  assert not np.array_equal(rows, ds.train_batch(3, 64, 0))
  parts = [ds.train_batch(2, 64, 0, process_index=p, process_count=4) for p in range(4)]
  np.testing.assert_array_equal(np.concatenate(parts), rows)


def test_the_streamed_task_is_unchanged_by_default():
  """copy_min_crop = 0 draws today's rows: windows of the stream, no padding."""
  ds = data.make_dataset({'name': 'copy', 'copy_length': 10}, WINDOW)
  rows = ds.train_batch(0, 8, 0)
  assert rows.min() >= ord('a') and not data.rows_have_padding({'name': 'copy'})
  assert data.rows_have_padding({'name': 'copy', 'copy_min_crop': 3})


@pytest.mark.parametrize('min_crop', [0, 4])
@pytest.mark.parametrize('mode', ['copy', 'mirror'])
def test_source_distances_point_at_equal_earlier_bytes(mode, min_crop):
  ds = data.make_dataset(
    {'name': 'copy', 'copy_mode': mode, 'copy_length': 15, 'copy_min_crop': min_crop}, WINDOW
  )
  for split in ('validation', 'test'):
    examples = ds.split_bytes(split)
    distances = ds.source_distances(split)
    assert distances.shape == examples.shape == ((64, 15) if min_crop else (64 * 15,))
    examples, distances = examples.reshape(64, 15), distances.reshape(64, 15)
    k = np.arange(15)
    assert np.all((distances == 0) == (k < 8)[None])  # the ceil(15/2) random bytes
    assert np.all(distances <= k[None])  # the source lies in the same example
    sources = np.take_along_axis(examples, k[None] - distances, axis=1)
    np.testing.assert_array_equal(sources, examples)
    want = 8 if mode == 'copy' else 2 * (k - 8) + 1
    np.testing.assert_array_equal(distances[:, 8:], np.broadcast_to(want, (64, 15))[:, 8:])


# ------------------------------------------------------------------------ the curriculum


def curriculum(schedule, steps=100, low=6, high=30, fraction=0.5, stairs=4, min_crop=0):
  config = tiny_config('fixed', steps=steps)
  config.data.update(
    copy_length=high,
    copy_length_min=low,
    copy_length_schedule=schedule,
    copy_length_warmup_fraction=fraction,
    copy_length_stairs=stairs,
    copy_min_crop=min_crop,
  )
  return config_lib.validate(config)


def expected_length(schedule, step, steps=100, low=6, high=30, fraction=0.5, stairs=4):
  """The documented formulas, written out independently."""
  if schedule == 'staircase':
    k = min(stairs - 1, math.floor(step / (steps / stairs)))
    return low + round(k * (high - low) / (stairs - 1))
  progress = min(1.0, step / max(1, round(fraction * steps)))
  if schedule == 'linear':
    return round(low + progress * (high - low))
  stages = [low] + [p for p in (2, 4, 8, 16, 32, 64) if low < p < high] + [high]
  return stages[min(len(stages) - 1, int(progress * len(stages)))]


@pytest.mark.parametrize('schedule', ['linear', 'stepwise', 'staircase'])
def test_copy_length_follows_the_schedule(schedule):
  config = curriculum(schedule)
  lengths = [data.copy_length_at(config, s) for s in range(100)]
  assert lengths == [expected_length(schedule, s) for s in range(100)]
  assert lengths[0] == 6 and lengths[-1] == 30 and lengths == sorted(lengths)
  if schedule == 'linear':
    assert lengths[25] == 18 and lengths[50:] == [30] * 50
  if schedule == 'stepwise':
    assert sorted(set(lengths)) == [6, 8, 16, 30]
  if schedule == 'staircase':
    assert sorted(set(lengths)) == [6, 14, 22, 30] and lengths[24:26] == [6, 14]


def test_copy_length_without_a_curriculum_is_the_copy_length():
  config = tiny_config('fixed')
  assert [data.copy_length_at(config, s) for s in (0, 5, 23)] == [16] * 3
  config.data.copy_length = 0
  assert data.copy_length_at(config, 7) == config.model.max_context  # 0 = the window M


@pytest.mark.parametrize('min_crop', [0, 3])
def test_curriculum_rows_have_the_scheduled_length_and_resume_exactly(min_crop):
  config = curriculum('linear', steps=40, low=4, high=24, min_crop=min_crop)
  ds = data.make_dataset(config.data, WINDOW, seed=config.seed, total_steps=config.train.steps)
  for step in (0, 5, 30):
    length = data.copy_length_at(config, step)
    rows = ds.train_batch(step, 16, seed=3)
    if min_crop:  # one cropped example of the scheduled length per row
      crops = (rows >= 0).sum(1)
      assert crops.min() >= 3 and crops.max() <= length
      assert all(follows_the_copy_rule(r[r >= 0], length, 'copy') for r in rows)
    else:  # a window of a stream of examples of the scheduled length
      assert all(is_a_stream_window(r, length) for r in rows)
      assert step == 0 or not all(is_a_stream_window(r, 4) for r in rows)  # not step 0's L
  # Steps 0..11 uninterrupted, and in two invocations (a restart at step 5): the same rows.
  whole = list(ds.train_batches(0, 12, 16, seed=3))
  restarted = list(ds.train_batches(0, 5, 16, seed=3)) + list(ds.train_batches(5, 12, 16, 3))
  again = data.make_dataset(config.data, WINDOW, seed=config.seed, total_steps=config.train.steps)
  one_by_one = [again.train_batch(s, 16, 3) for s in range(12)]
  for a, b, c in zip(whole, restarted, one_by_one, strict=True):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_the_curriculum_steps_follow_train_steps():
  config = curriculum('linear', steps=100)
  config.train.steps = 60  # e.g. --config.train.steps=60: the curriculum counts the run's steps
  config_lib.validate(config)
  assert data.copy_length_at(config, 15) == round(6 + 15 / 30 * 24)
  ds = data.make_dataset(config.data, WINDOW, seed=config.seed, total_steps=60)
  assert all(
    is_a_stream_window(r, data.copy_length_at(config, 15)) for r in ds.train_batch(15, 8, 3)
  )
  assert not all(is_a_stream_window(r, 30) for r in ds.train_batch(15, 8, 3))


@pytest.mark.parametrize(
  'changes,match',
  [
    ({'copy_min_crop': 21}, r'copy_min_crop=21 exceeds the example length 20'),
    ({'copy_length': 40, 'copy_min_crop': 4}, r'copy_length=40 exceeds the window of 33'),
    ({'copy_length_min': 8}, r'copy_length_min=8 needs a curriculum'),
    ({'copy_length_schedule': 'linear'}, r'copy_length_min=0 to data.copy_length=20'),
    ({'copy_length_schedule': 'linear', 'copy_length_min': 30}, r'in \[2, 20\]'),
    (
      {'copy_length_schedule': 'linear', 'copy_length_min': 6, 'copy_min_crop': 8},
      r'in \[8, 20\]',
    ),
    (
      {'copy_length_schedule': 'stepwise', 'copy_length_min': 6, 'copy_length_warmup_fraction': 0},
      'copy_length_warmup_fraction=0',
    ),
    (
      {'copy_length_schedule': 'staircase', 'copy_length_min': 6, 'copy_length_stairs': 1},
      'copy_length_stairs must be an integer >= 2',
    ),
    ({'copy_length_schedule': 'steep'}, r"Unknown data.copy_length_schedule='steep'"),
    ({'copy_train_lengths': (8,)}, r'copy_train_lengths=\(8,\) must be'),
    ({'copy_train_lengths': (9, 8)}, r'copy_train_lengths=\(9, 8\) must be'),
    ({'copy_train_lengths': (4, 8), 'copy_min_crop': 4}, 'on the streamed task'),
  ],
)
def test_bad_copy_settings_are_one_line_errors(changes, match):
  config = tiny_config('fixed', steps=50)
  config.data.update({'copy_length': 20, **changes})
  with pytest.raises(errors.UserError, match=match) as raised:
    config_lib.validate(config)
  assert '\n' not in str(raised.value)
  with pytest.raises(errors.UserError, match=match):  # make_dataset checks the same
    data.make_dataset({**config.data.to_dict(), 'name': 'copy'}, WINDOW)


def test_training_rows_mix_copy_distances_drawn_per_example():
  """With copy_train_lengths (a, b), copies appear at many distances up to (b + 1) / 2 in
  one row (found by 6-byte matches over 256 symbols, which chance almost never makes), the
  rows are a pure function of the step, and evaluation keeps copy_length."""
  config = {'name': 'copy', 'copy_vocab': 256, 'copy_length': 40, 'copy_train_lengths': (8, 64)}
  ds = data.make_dataset(config, 400)
  rows = ds.train_batch(3, 4, seed=0)
  np.testing.assert_array_equal(rows, ds.train_batch(3, 4, seed=0))
  distances = set()
  for row in rows:
    for t in range(40, 394):
      for d in range(4, 33):
        if (row[t : t + 6] == row[t - d : t - d + 6]).all():
          distances.add(d)
  assert len(distances) >= 8 and max(distances) <= 32, distances
  assert ds.split_bytes('validation').shape == (64 * 40,)  # evaluation: L = copy_length


def test_copy_keys_on_another_dataset_are_errors():
  config = tiny_config('fixed')
  config.data.update(name='text_file', copy_min_crop=4)
  with pytest.raises(errors.UserError, match="only apply to data.name='copy'"):
    config_lib.validate(config)


def test_scheduled_length_is_the_settings_length_without_a_curriculum():
  settings = copy_settings.copy_settings({'name': 'copy', 'copy_length': 9}, WINDOW)
  assert copy_settings.scheduled_length(settings, 10**6) == 9
  assert copy_task.source_distances_of(4, 'mirror').tolist() == [0, 0, 1, 3]
