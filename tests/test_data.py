"""Tests for perceiver_ar_vl/data: make_dataset (datasets.py), the copy task, the byte
sources (sources.py) and the tfds builders (builders.py)."""

import dataclasses
import hashlib
import shutil
import urllib.error
import zipfile

import ml_collections
import numpy as np
import pytest

from perceiver_ar_vl import data
from perceiver_ar_vl.config_choices import SPLITS
from perceiver_ar_vl.data import builders, sources

# Records of 1000 bytes, so the small test files span many records and crops cross them.
RECORD_BYTES = 1000


def _write(path, num_bytes, seed):
  content = np.random.default_rng(seed).integers(0, 256, num_bytes, dtype=np.uint8).tobytes()
  path.write_bytes(content)
  return content


def _text_config(tmp_path, path, heldout=''):
  return {
    'name': 'text_file',
    'path': str(path),
    'heldout_path': str(heldout),
    'data_dir': str(tmp_path / 'tfds'),
    'record_bytes': RECORD_BYTES,
  }


def _is_substring(row, content):
  return row.astype(np.uint8).tobytes() in content


def test_text_file_splits_are_90_5_5_slices_of_the_file(tmp_path):
  content = _write(tmp_path / 'book.txt', 20_000, seed=0)
  ds = data.make_dataset(_text_config(tmp_path, tmp_path / 'book.txt'), window=65)
  assert [ds.num_bytes(s) for s in SPLITS] == [18_000, 1_000, 1_000]
  assert ds.split_bytes('train').tobytes() == content[:18_000]
  assert ds.split_bytes('validation').tobytes() == content[18_000:19_000]
  assert ds.split_bytes('test').tobytes() == content[19_000:]
  assert ds.split_bytes('test').dtype == np.uint8
  with pytest.raises(ValueError, match='Unknown split'):
    ds.split_bytes('valid')


def test_heldout_path_trains_on_all_and_halves_the_heldout_file(tmp_path):
  train = _write(tmp_path / 'a.txt', 5_000, seed=1)
  heldout = _write(tmp_path / 'b.txt', 3_001, seed=2)
  ds = data.make_dataset(_text_config(tmp_path, tmp_path / 'a.txt', tmp_path / 'b.txt'), 33)
  assert ds.split_bytes('train').tobytes() == train
  assert ds.split_bytes('validation').tobytes() == heldout[:1_500]
  assert ds.split_bytes('test').tobytes() == heldout[1_500:]


def test_comma_separated_paths_concatenate_in_order(tmp_path):
  parts = [_write(tmp_path / f'{i}.txt', 4_321 + i, seed=i) for i in range(3)]
  paths = ', '.join(str(tmp_path / f'{i}.txt') for i in range(3))
  ds = data.make_dataset(_text_config(tmp_path, paths), 33)
  whole = b''.join(parts)
  train, valid, _ = sources.text_split_sizes(len(whole))
  assert ds.split_bytes('train').tobytes() == whole[:train]
  assert ds.split_bytes('validation').tobytes() == whole[train : train + valid]


def test_config_dict_and_missing_files_give_clear_errors(tmp_path):
  config = ml_collections.ConfigDict(
    {
      'name': 'text_file',
      'path': str(tmp_path / 'nope.txt'),
      'heldout_path': '',
      'data_dir': str(tmp_path),
    }
  )
  with pytest.raises(FileNotFoundError, match=r'data\.path.*nope\.txt'):
    data.make_dataset(config, 65)
  _write(tmp_path / 'a.txt', 5_000, seed=0)
  with pytest.raises(FileNotFoundError, match=r'data\.heldout_path.*missing\.txt'):
    data.make_dataset(_text_config(tmp_path, tmp_path / 'a.txt', tmp_path / 'missing.txt'), 65)
  with pytest.raises(ValueError, match='text_file needs'):
    data.make_dataset(_text_config(tmp_path, ''), 65)


def test_file_too_short_for_window(tmp_path):
  _write(tmp_path / 'a.txt', 20_000, seed=0)  # validation / test: 1000 bytes
  with pytest.raises(ValueError, match='too short'):
    data.make_dataset(_text_config(tmp_path, tmp_path / 'a.txt'), window=1_025)


def test_crops_are_deterministic_contiguous_and_split_across_processes(tmp_path):
  content = _write(tmp_path / 'a.txt', 20_000, seed=3)
  ds = data.make_dataset(_text_config(tmp_path, tmp_path / 'a.txt'), window=257)
  train = content[:18_000]
  batch = ds.train_batch(step=7, batch_size=8, seed=5)
  assert batch.shape == (8, 257) and batch.dtype == np.int32
  np.testing.assert_array_equal(batch, ds.train_batch(7, 8, 5))
  assert not np.array_equal(batch, ds.train_batch(8, 8, 5))
  assert not np.array_equal(batch, ds.train_batch(7, 8, 6))
  assert all(_is_substring(row, train) for row in batch)
  assert len({row.tobytes() for row in batch}) == 8
  # Crops over many steps cover the split, reaching both ends (records 0 and 17).
  starts = [
    train.index(row.astype(np.uint8).tobytes())
    for step in range(50)
    for row in ds.train_batch(step, 8, 0)
  ]
  assert min(starts) < 1_000 and max(starts) > 18_000 - 257 - 1_000
  # Each process's rows are its slice of the global batch.
  parts = [ds.train_batch(7, 8, 5, process_index=p, process_count=4) for p in range(4)]
  assert all(p.shape == (2, 257) for p in parts)
  np.testing.assert_array_equal(np.concatenate(parts), batch)
  with pytest.raises(ValueError, match='multiple of'):
    ds.train_batch(7, 6, 5, process_index=0, process_count=4)
  with pytest.raises(ValueError, match='process_index'):
    ds.train_batch(7, 8, 5, process_index=4, process_count=4)


def test_in_memory_and_record_reads_give_the_same_rows(tmp_path):
  """A train split held in memory (one gather) and one read per row from its records draw
  the same offsets from the (seed, step) stream, so they give the same batches."""
  _write(tmp_path / 'a.txt', 20_000, seed=6)
  config = _text_config(tmp_path, tmp_path / 'a.txt')
  in_memory = data.make_dataset(config, window=257)
  from_records = data.make_dataset(config | {'in_memory_bytes': 0}, window=257)
  assert in_memory.train_in_memory and not from_records.train_in_memory
  assert not data.make_dataset(config | {'in_memory_bytes': 17_999}, 257).train_in_memory
  for step in (0, 1, 9):
    np.testing.assert_array_equal(
      in_memory.train_batch(step, 8, 2), from_records.train_batch(step, 8, 2)
    )
  np.testing.assert_array_equal(
    in_memory.train_batch(5, 8, 2, process_index=1, process_count=2),
    from_records.train_batch(5, 8, 2, process_index=1, process_count=2),
  )
  for bad in (-1, 1.5, '1'):
    with pytest.raises(ValueError, match='in_memory_bytes'):
      data.make_dataset(config | {'in_memory_bytes': bad}, 257)


def test_prefetched_train_batches_equal_train_batch(tmp_path):
  _write(tmp_path / 'a.txt', 20_000, seed=4)
  ds = data.make_dataset(_text_config(tmp_path, tmp_path / 'a.txt'), window=65)
  batches = list(ds.train_batches(3, 9, batch_size=4, seed=1, process_index=1, process_count=2))
  assert len(batches) == 6
  for step, batch in zip(range(3, 9), batches, strict=True):
    np.testing.assert_array_equal(batch, ds.train_batch(step, 4, 1, 1, 2))


def _prepared_files(tmp_path):
  """{path: modification time} of every prepared array_record file under tmp_path/tfds."""
  return {str(p): p.stat().st_mtime_ns for p in (tmp_path / 'tfds').rglob('*.array_record*')}


def test_prepared_files_are_reused_and_keyed_by_content(tmp_path):
  path = tmp_path / 'a.txt'
  _write(path, 20_000, seed=0)
  data.make_dataset(_text_config(tmp_path, path), 65)
  prepared = _prepared_files(tmp_path)
  assert prepared
  reused = data.make_dataset(_text_config(tmp_path, path), 65)  # must not regenerate
  assert reused.num_bytes('train') == 18_000
  assert _prepared_files(tmp_path) == prepared  # the same files, not rewritten
  new_content = _write(path, 30_000, seed=1)  # same path, new content -> new prepared copy
  changed = data.make_dataset(_text_config(tmp_path, path), 65)
  assert changed.split_bytes('train').tobytes() == new_content[:27_000]
  after = _prepared_files(tmp_path)
  assert set(prepared) < set(after)  # a second copy next to the first, which is untouched
  assert all(after[p] == t for p, t in prepared.items())
  other_records = data.make_dataset({**_text_config(tmp_path, path), 'record_bytes': 500}, 65)
  assert other_records.builder.builder_config.chunk_bytes == 500  # a third prepared copy
  np.testing.assert_array_equal(other_records.split_bytes('train'), changed.split_bytes('train'))


# ----------------------------------------------------------------------------- enwik8


@pytest.fixture
def small_enwik8(tmp_path):
  """A 10,000-byte stand-in for enwik8 (split 9000 / 500 / 500), as `enwik8.zip`, and the
  spec that describes it (its SHA-1; fetching copies the archive, as a download would)."""
  content = _write(tmp_path / 'enwik8', 10_000, seed=8)
  archive = tmp_path / 'archive' / 'enwik8.zip'
  archive.parent.mkdir()
  with zipfile.ZipFile(archive, 'w', zipfile.ZIP_DEFLATED) as z:
    z.write(tmp_path / 'enwik8', 'enwik8')
  spec = sources.Enwik8Spec(
    sha1=hashlib.sha1(content).hexdigest(),
    split_bytes=(9_000, 500, 500),
    fetch=lambda url, dest: shutil.copy(archive, dest),
  )
  return content, archive, spec


def _enwik8_config(tmp_path, path):
  return {
    'name': 'enwik8',
    'path': str(path),
    'data_dir': str(tmp_path / 'tfds'),
    'record_bytes': RECORD_BYTES,
  }


def test_enwik8_builder_reads_the_archive_and_the_raw_file(tmp_path, small_enwik8):
  content, archive, spec = small_enwik8
  for i, path in enumerate([archive, tmp_path / 'enwik8']):
    config = {**_enwik8_config(tmp_path, path), 'data_dir': str(tmp_path / f'tfds{i}')}
    ds = data.make_dataset(config, window=129, enwik8=spec)
    assert ds.split_bytes('train').tobytes() == content[:9_000]
    assert ds.split_bytes('validation').tobytes() == content[9_000:9_500]
    assert ds.split_bytes('test').tobytes() == content[9_500:]
    assert all(_is_substring(row, content[:9_000]) for row in ds.train_batch(0, 4, 0))
  prepared = tmp_path / 'tfds0' / 'enwik8_bytes'
  assert list(prepared.glob('*/1.0.0/*train.array_record*'))


def test_enwik8_rejects_corrupt_or_unknown_archives(tmp_path, small_enwik8):
  _, archive, spec = small_enwik8
  corrupt = tmp_path / 'bad' / 'enwik8.zip'
  corrupt.parent.mkdir()
  corrupt.write_bytes(archive.read_bytes()[:100])
  with pytest.raises(sources.SourceError, match='not a valid zip'):
    data.make_dataset(_enwik8_config(tmp_path, corrupt), 129, enwik8=spec)
  other = tmp_path / 'other.zip'
  with zipfile.ZipFile(other, 'w') as z:
    z.writestr('enwik9', b'x' * 10_000)
  with pytest.raises(sources.SourceError, match="without a member 'enwik8'"):
    data.make_dataset(_enwik8_config(tmp_path, other), 129, enwik8=spec)
  short = tmp_path / 'enwik8_short'
  short.write_bytes(b'x' * 9_999)
  with pytest.raises(sources.SourceError, match='expected 10,000'):
    data.make_dataset(_enwik8_config(tmp_path, short), 129, enwik8=spec)
  with pytest.raises(FileNotFoundError, match=r'data\.path'):
    data.make_dataset(_enwik8_config(tmp_path, tmp_path / 'absent.zip'), 129, enwik8=spec)


def test_enwik8_offline_without_path_says_how_to_pass_it(tmp_path, small_enwik8):
  def offline(url, dest):
    raise urllib.error.URLError('[Errno -3] Temporary failure in name resolution')

  spec = dataclasses.replace(small_enwik8[2], fetch=offline)
  with pytest.raises(
    sources.DownloadError,
    match=r'could not download .*--config\.data\.path=/path/to/enwik8\.zip',
  ):
    data.make_dataset(_enwik8_config(tmp_path, ''), 129, enwik8=spec)


def test_enwik8_download_is_checksum_verified(tmp_path, small_enwik8):
  content, _, spec = small_enwik8
  with pytest.raises(sources.DownloadError, match='checksum'):
    data.make_dataset(
      _enwik8_config(tmp_path, ''), 129, enwik8=dataclasses.replace(spec, sha1='0' * 40)
    )
  assert not (tmp_path / 'tfds' / 'downloads' / 'enwik8.zip').exists()  # bad file removed
  ds = data.make_dataset(_enwik8_config(tmp_path, ''), 129, enwik8=spec)
  assert ds.split_bytes('test').tobytes() == content[9_500:]
  assert (tmp_path / 'tfds' / 'downloads' / 'enwik8.zip').exists()


def test_standard_enwik8_config_checks_the_published_checksum():
  config = builders.enwik8_config((90_000_000, 5_000_000, 5_000_000), 64 * 1024)
  assert config.name == 'standard' and config.sha1 == sources.ENWIK8_SHA1
  assert sources.STANDARD_ENWIK8.size == 100_000_000 and sources.STANDARD_ENWIK8.standard
  assert sources.text_split_sizes(100_000_000) == (90_000_000, 5_000_000, 5_000_000)


# ----------------------------------------------------------------------------- copy task


def _copy_phase(row, length, mode):
  """The phase o in [0, length) at which `row` is a window of a copy-task stream, or None."""
  half = (length + 1) // 2
  for o in range(length):
    checks = []
    for i in range(len(row)):
      k = (i + o) % length  # index inside its example
      source = i - k + (k - half if mode == 'copy' else 2 * half - 1 - k)
      if k >= half and source >= 0:  # a second-half byte whose source lies in the row
        checks.append(row[i] == row[source])
    if len(checks) >= 8 and all(checks):
      return o
  return None


@pytest.mark.parametrize('window,length', [(65, 0), (64, 20), (65, 21)])
@pytest.mark.parametrize('mode', ['mirror', 'copy'])
def test_copy_task_rows_are_windows_of_the_copy_stream(mode, window, length):
  ds = data.make_dataset(
    {'name': 'copy', 'copy_mode': mode, 'copy_vocab': 16, 'copy_length': length}, window
  )
  batch = ds.train_batch(step=3, batch_size=4, seed=0)
  assert batch.shape == (4, window) and batch.dtype == np.int32
  phases = [_copy_phase(row, length or window - 1, mode) for row in batch]
  assert None not in phases and len(set(phases)) > 1  # random phases, structure holds
  other = 'mirror' if mode == 'copy' else 'copy'
  assert any(_copy_phase(row, length or window - 1, other) is None for row in batch)
  assert set(np.unique(batch)) <= set(range(ord('a'), ord('a') + 16))
  assert len(np.unique(batch)) > 8
  np.testing.assert_array_equal(batch, ds.train_batch(3, 4, 0))
  assert not np.array_equal(batch, ds.train_batch(4, 4, 0))
  parts = [ds.train_batch(3, 4, 0, process_index=p, process_count=2) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate(parts), batch)


def test_copy_task_eval_streams_are_fixed_and_distinct():
  ds = data.make_dataset({'name': 'copy', 'copy_mode': 'mirror'}, 33, seed=1)
  valid, test = ds.split_bytes('validation'), ds.split_bytes('test')
  assert valid.dtype == np.uint8 and len(valid) == ds.num_bytes('validation') == 64 * 32
  assert not np.array_equal(valid, test)
  again = data.make_dataset({'name': 'copy', 'copy_mode': 'mirror'}, 33, seed=1)
  np.testing.assert_array_equal(valid, again.split_bytes('validation'))
  examples = valid.reshape(64, 32)
  np.testing.assert_array_equal(examples[:, 16:], examples[:, 15::-1])
  copies = data.make_dataset({'name': 'copy'}, 33, seed=1).split_bytes('test').reshape(64, 32)
  np.testing.assert_array_equal(copies[:, 16:], copies[:, :16])  # default 'copy'


def test_bad_config_values_raise():
  with pytest.raises(ValueError, match=r"Unknown data.name 'wiki'.*enwik8.*text_file.*copy"):
    data.make_dataset({'name': 'wiki'}, 65)
  with pytest.raises(ValueError, match='copy_mode'):
    data.make_dataset({'name': 'copy', 'copy_mode': 'reverse'}, 65)
  with pytest.raises(ValueError, match='copy_vocab'):
    data.make_dataset({'name': 'copy', 'copy_vocab': 1}, 65)
  with pytest.raises(ValueError, match='copy_length'):
    data.make_dataset({'name': 'copy', 'copy_length': -3}, 65)
  with pytest.raises(ValueError, match='heldout_path'):
    data.make_dataset({'name': 'enwik8', 'heldout_path': 'x.txt'}, 65)
  with pytest.raises(ValueError, match='window'):
    data.make_dataset({'name': 'copy'}, 1)
