"""tensorflow-datasets builders that store byte streams as fixed-size chunks (no TensorFlow).

Each split is a sequence of records `{'index': int64, 'bytes': bytes}`; record i holds bytes
[i * chunk_bytes, (i + 1) * chunk_bytes) of the split (the last record may be shorter). The
builders are prepared with `download_and_prepare(file_format='array_record')` and read with
random access through `builder.as_data_source()`, so a training crop reads only the one or
two records it overlaps.

  * `Enwik8`    the Hutter-prize file (first 90M bytes train, next 5M validation, last 5M
                test), from a local `enwik8` / `enwik8.zip` or downloaded from
                ENWIK8_URL with its SHA-1 checked.
  * `ByteFile`  any local files (concatenated in order), split 90/5/5 by length, or all for
                training with a held-out file split in halves into validation / test. Its
                config name carries a hash of the files' contents, so a changed file gets its
                own prepared copy.

With several processes (`jax.distributed`), `prepare` lets process 0 download and prepare while
the others wait, so a data_dir on a shared filesystem is written once.

Builders are defined outside a registered tfds package, so `_info` builds
`tfds.core.DatasetInfo(builder=self, ...)` directly (`dataset_info_from_configs` fails here),
and they skip the global tfds registry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import os
import re
import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from perceiver_ar_vl import errors
from perceiver_ar_vl.config_choices import SPLITS

# Record size of the prepared splits. Module-level so tests can shrink it (it enters the
# builder config, hence the prepared directory name).
CHUNK_BYTES = 64 * 1024

ENWIK8_URL = 'http://mattmahoney.net/dc/enwik8.zip'
ENWIK8_MEMBER = 'enwik8'
# SHA-1 of the uncompressed 100,000,000-byte file (published on mattmahoney.net/dc).
ENWIK8_SHA1 = '57b8363b814821dc9d47aa4d41f58733519076b2'
# (train, validation, test) byte counts; module-level so tests can use a small archive.
ENWIK8_SPLIT_BYTES = (90_000_000, 5_000_000, 5_000_000)
STANDARD_ENWIK8_SPLIT_BYTES = (90_000_000, 5_000_000, 5_000_000)

_READ_BYTES = 1 << 20


class DownloadError(errors.UserError, RuntimeError):
  """The enwik8 archive could not be downloaded or failed its checksum."""


class SourceError(errors.UserError):
  """A local source file is not what the dataset expects (format, member, size, checksum)."""


# ------------------------------------------------------------------------------------------
# Byte sources: a virtual concatenation of (possibly zipped) files with ranged reads.


@dataclasses.dataclass(frozen=True)
class _Segment:
  """One file (or zip member) of a byte source."""

  path: str
  size: int
  member: str | None = None  # zip member name, None for a plain file

  @contextlib.contextmanager
  def open(self) -> Iterator[BinaryIO]:
    if self.member is None:
      with open(self.path, 'rb') as f:
        yield f
    else:
      with zipfile.ZipFile(self.path) as archive, archive.open(self.member) as f:
        yield f  # seekable (decompresses up to the offset)


@dataclasses.dataclass(frozen=True)
class ByteSource:
  """Files read as one stream, in order."""

  segments: tuple[_Segment, ...]

  @property
  def size(self) -> int:
    return sum(s.size for s in self.segments)

  def iter_range(self, start: int, length: int, block: int) -> Iterator[bytes]:
    """Yields bytes [start, start + length) of the stream in blocks of `block` bytes.

    Every block has exactly `block` bytes except the last one.
    """
    if start < 0 or length < 0 or start + length > self.size:
      raise ValueError(f'Range [{start}, {start + length}) outside a source of {self.size} bytes.')
    pending = bytearray()
    offset = 0
    remaining = length
    for segment in self.segments:
      if remaining == 0:
        break
      lo = max(start - offset, 0)
      offset += segment.size
      if lo >= segment.size:
        continue
      take = min(segment.size - lo, remaining)
      try:
        with segment.open() as f:
          f.seek(lo)
          while take > 0:
            data = f.read(min(_READ_BYTES, take))
            if not data:
              raise SourceError(f'{segment.path} ended early (expected {segment.size} bytes).')
            take -= len(data)
            remaining -= len(data)
            pending += data
            while len(pending) >= block:
              yield bytes(pending[:block])
              del pending[:block]
      except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise SourceError(f'{segment.path} is a corrupt zip archive: {e}') from e
    if pending:
      yield bytes(pending)

  def sha1(self) -> str:
    h = hashlib.sha1()
    for data in self.iter_range(0, self.size, _READ_BYTES):
      h.update(data)
    return h.hexdigest()


def check_file(path: str, config_key: str = 'data.path') -> int:
  """The size of `path` in bytes after checking it is an existing, non-empty regular file.

  Raises:
    errors.MissingFileError: no such path, or a directory.
    errors.UserError: the file is empty.
  """
  hint = f'set --config.{config_key}=/path/to/file; separate several files with commas'
  if os.path.isdir(path):
    raise errors.MissingFileError(f'{config_key}: {path!r} is a directory, not a file ({hint}).')
  if not os.path.isfile(path):
    raise errors.MissingFileError(f'{config_key}: no such file {path!r} ({hint}).')
  size = os.path.getsize(path)
  if not size:
    raise errors.UserError(f'{config_key}: {path!r} is empty; give a file that holds text.')
  return size


def file_source(paths: Sequence[str], config_key: str = 'data.path') -> ByteSource:
  """Plain local files concatenated in order; errors name `config_key`."""
  segments = [
    _Segment(path=os.path.abspath(path), size=check_file(path, config_key)) for path in paths
  ]
  return ByteSource(tuple(segments))


def enwik8_source(path: str, expected_size: int) -> ByteSource:
  """`enwik8` (raw) or `enwik8.zip` (with an `enwik8` member) as a source of `expected_size`.

  Raises:
    errors.MissingFileError: `path` does not exist or is a directory.
    SourceError: not a zip archive although named .zip, no `enwik8` member, wrong size.
  """
  if not os.path.isfile(path):
    what = f'{path!r} is a directory' if os.path.isdir(path) else f'no such file {path!r}'
    raise errors.MissingFileError(
      f'data.path: {what}; pass --config.data.path=/path/to/enwik8.zip (or the unzipped enwik8).'
    )
  path = os.path.abspath(path)
  if zipfile.is_zipfile(path):
    try:
      with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if ENWIK8_MEMBER not in names:
          raise SourceError(
            f'{path} is a zip archive without a member {ENWIK8_MEMBER!r} '
            f'(members: {names[:10]}); expected the standard enwik8.zip.'
          )
        size = archive.getinfo(ENWIK8_MEMBER).file_size
    except zipfile.BadZipFile as e:
      raise SourceError(f'{path} is a corrupt zip archive: {e}') from e
    segment = _Segment(path=path, size=size, member=ENWIK8_MEMBER)
  elif path.lower().endswith('.zip'):
    raise SourceError(
      f'{path} is not a valid zip archive (corrupt or truncated download?); '
      f'expected the standard enwik8.zip from {ENWIK8_URL}.'
    )
  else:
    segment = _Segment(path=path, size=os.path.getsize(path))
  if segment.size != expected_size:
    raise SourceError(
      f'{path}: enwik8 has {segment.size:,} bytes, expected {expected_size:,}; '
      'this is not the standard enwik8 file.'
    )
  return ByteSource((segment,))


def _fetch_url(url: str, dest: str) -> None:
  """Downloads `url` to `dest` (plain urllib; tests replace this to simulate being offline)."""
  with urllib.request.urlopen(url, timeout=60) as response, open(dest, 'wb') as f:
    shutil.copyfileobj(response, f, _READ_BYTES)


def download_enwik8(download_dir: str) -> str:
  """Returns a local, checksum-verified enwik8.zip, downloading it into `download_dir` once.

  Raises:
    DownloadError: offline / HTTP failure, or the archive fails its SHA-1 check.
  """
  os.makedirs(download_dir, exist_ok=True)
  dest = os.path.join(download_dir, 'enwik8.zip')
  hint = (
    'download enwik8.zip yourself (e.g. `curl -O ' + ENWIK8_URL + '`) and pass '
    '--config.data.path=/path/to/enwik8.zip'
  )
  if not os.path.exists(dest):
    tmp = f'{dest}.{os.getpid()}.incomplete'  # never another process's partial download
    try:
      _fetch_url(ENWIK8_URL, tmp)
    except (OSError, urllib.error.URLError, ValueError) as e:
      if os.path.exists(tmp):
        os.remove(tmp)
      raise DownloadError(f'could not download {ENWIK8_URL} ({e}); {hint}.') from e
    os.replace(tmp, dest)
  try:
    digest = enwik8_source(dest, sum(ENWIK8_SPLIT_BYTES)).sha1()
  except SourceError as e:
    os.remove(dest)
    raise DownloadError(f'downloaded {ENWIK8_URL} is damaged ({e}); removed it; {hint}.') from e
  if digest != ENWIK8_SHA1:
    os.remove(dest)
    raise DownloadError(
      f'downloaded {ENWIK8_URL} failed its checksum (SHA-1 {digest}, expected '
      f'{ENWIK8_SHA1}); removed it; {hint}.'
    )
  return dest


# ------------------------------------------------------------------------------------------
# Builders.


class _ByteChunkBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared schema and example generation: a split is a range of a ByteSource, chunked."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Fixed-size byte chunks, records in order.'}

  def __init__(self, *, source: ByteSource | Callable[[], ByteSource] | None = None, **kwargs):
    """`source` is only needed to prepare; reading a prepared dataset works without it. A
    callable (e.g. one that downloads) is called only by the process that prepares."""
    self.source = source
    super().__init__(**kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # tfds' own lookup needs the optional `importlib_resources` package for a builder that
    # lives in an installed package; the checksums file it looks for is unused here.
    return epath.Path(inspect.getfile(cls))

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=self.__doc__,
      features=tfds.features.FeaturesDict(
        {
          'index': tfds.features.Scalar(np.int64),
          'bytes': tfds.features.Scalar(np.object_),  # raw bytes, decodes fast
        }
      ),
      disable_shuffling=True,  # record i must be chunk i
    )

  def _require_source(self) -> ByteSource:
    if self.source is None:
      raise RuntimeError(
        f'{self.name}/{self.builder_config.name} is not prepared and no source '
        'was given to prepare it.'
      )
    if callable(self.source):
      self.source = self.source()
    return self.source

  def _split_ranges(self, source: ByteSource) -> dict[str, tuple[ByteSource, int, int]]:
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    del dl_manager  # sources are local (downloads happen before, with a checksum)
    ranges = self._split_ranges(self._require_source())
    return {split: self._generate_examples(*ranges[split]) for split in SPLITS}

  def _generate_examples(self, source: ByteSource, start: int, length: int):
    chunk = self.builder_config.chunk_bytes
    for i, data in enumerate(source.iter_range(start, length, chunk)):
      yield i, {'index': i, 'bytes': data}


@dataclasses.dataclass(eq=False)
class Enwik8Config(tfds.core.BuilderConfig):
  """Split sizes (bytes) and record size; `sha1` (if set) is checked before preparing."""

  train_bytes: int = STANDARD_ENWIK8_SPLIT_BYTES[0]
  valid_bytes: int = STANDARD_ENWIK8_SPLIT_BYTES[1]
  test_bytes: int = STANDARD_ENWIK8_SPLIT_BYTES[2]
  chunk_bytes: int = CHUNK_BYTES
  sha1: str = ''


def enwik8_config(
  split_bytes: Sequence[int] | None = None, chunk_bytes: int | None = None
) -> Enwik8Config:
  """The config for given split sizes; the standard sizes get name 'standard' and a checksum."""
  split_bytes = tuple(int(b) for b in (split_bytes or ENWIK8_SPLIT_BYTES))
  chunk_bytes = int(chunk_bytes or CHUNK_BYTES)
  standard = split_bytes == STANDARD_ENWIK8_SPLIT_BYTES
  name = 'standard' if standard else 'bytes_{}_{}_{}'.format(*split_bytes)
  if chunk_bytes != 64 * 1024:
    name += f'_chunk_{chunk_bytes}'
  return Enwik8Config(
    name=name,
    train_bytes=split_bytes[0],
    valid_bytes=split_bytes[1],
    test_bytes=split_bytes[2],
    chunk_bytes=chunk_bytes,
    sha1=ENWIK8_SHA1 if standard else '',
  )


class Enwik8(_ByteChunkBuilder, skip_registration=True):
  """enwik8 (first 1e8 bytes of English Wikipedia, Mar 2006) as byte chunks; 90M/5M/5M."""

  name = 'enwik8_bytes'
  BUILDER_CONFIGS = [enwik8_config(STANDARD_ENWIK8_SPLIT_BYTES, 64 * 1024)]

  def _split_ranges(self, source):
    c = self.builder_config
    total = c.train_bytes + c.valid_bytes + c.test_bytes
    if source.size != total:
      raise SourceError(f'enwik8 source has {source.size:,} bytes, expected {total:,}.')
    if c.sha1:
      digest = source.sha1()
      if digest != c.sha1:
        raise SourceError(
          f'{source.segments[0].path}: enwik8 content has SHA-1 {digest}, '
          f'expected {c.sha1}; this is not the standard enwik8 file.'
        )
    return {
      'train': (source, 0, c.train_bytes),
      'validation': (source, c.train_bytes, c.valid_bytes),
      'test': (source, c.train_bytes + c.valid_bytes, c.test_bytes),
    }


@dataclasses.dataclass(eq=False)
class ByteFileConfig(tfds.core.BuilderConfig):
  """Source files: `heldout` empty -> 90/5/5 of the concatenation of `paths`."""

  paths: tuple[str, ...] = ()
  heldout: str = ''
  chunk_bytes: int = CHUNK_BYTES


def text_split_sizes(num_bytes: int) -> tuple[int, int, int]:
  """(train, validation, test) = 90% / 5% / 5% of `num_bytes` (test takes the remainder)."""
  train = num_bytes * 9 // 10
  valid = (num_bytes - train) // 2
  return train, valid, num_bytes - train - valid


def _content_hash(sources: Sequence[ByteSource]) -> str:
  h = hashlib.blake2b(digest_size=8)
  for source in sources:
    h.update(f'source:{source.size};'.encode())
    for data in source.iter_range(0, source.size, _READ_BYTES):
      h.update(data)
  return h.hexdigest()


def byte_file_config(
  paths: Sequence[str], heldout: str = '', chunk_bytes: int | None = None
) -> tuple[ByteFileConfig, ByteSource, ByteSource | None]:
  """Config named after the files and a hash of their contents, and the sources it reads."""
  chunk_bytes = int(chunk_bytes or CHUNK_BYTES)
  train_source = file_source(paths, 'data.path')
  heldout_source = file_source([heldout], 'data.heldout_path') if heldout else None
  sources = [train_source] + ([heldout_source] if heldout_source else [])
  digest = _content_hash(sources)
  stem = re.sub(r'[^a-z0-9]+', '_', os.path.basename(paths[0]).lower()).strip('_')[:32] or 'file'
  mode = 'heldout' if heldout else 'split'
  name = f'{stem}_{mode}_{digest}_chunk_{chunk_bytes}'
  config = ByteFileConfig(
    name=name,
    paths=tuple(train_source.segments[i].path for i in range(len(paths))),
    heldout=heldout_source.segments[0].path if heldout_source else '',
    chunk_bytes=chunk_bytes,
    description=f'{list(paths)} heldout={heldout!r}',
  )
  return config, train_source, heldout_source


class ByteFile(_ByteChunkBuilder, skip_registration=True):
  """Local byte files as chunks: 90/5/5 split, or a held-out file halved into valid/test."""

  name = 'byte_file'

  def __init__(self, *, heldout_source: ByteSource | None = None, **kwargs):
    self._heldout_source = heldout_source
    super().__init__(**kwargs)

  def _split_ranges(self, source):
    if self._heldout_source is None:
      train, valid, test = text_split_sizes(source.size)
      return {
        'train': (source, 0, train),
        'validation': (source, train, valid),
        'test': (source, train + valid, test),
      }
    held = self._heldout_source
    half = held.size // 2
    return {
      'train': (source, 0, source.size),
      'validation': (held, 0, half),
      'test': (held, half, held.size - half),
    }


def enwik8_builder(data_dir: str, source: ByteSource | None = None) -> Enwik8:
  """The Enwik8 builder for the current ENWIK8_SPLIT_BYTES / CHUNK_BYTES (source: to prepare)."""
  config = enwik8_config()
  if config.name in Enwik8.builder_configs:
    config = config.name  # tfds refuses a custom config named like a predefined one
  return Enwik8(data_dir=data_dir, config=config, source=source)


def byte_file_builder(data_dir: str, paths: Sequence[str], heldout: str = '') -> ByteFile:
  """The ByteFile builder for these files (keyed by a hash of their contents)."""
  config, source, heldout_source = byte_file_config(paths, heldout)
  return ByteFile(data_dir=data_dir, config=config, source=source, heldout_source=heldout_source)


def prepare(builder: tfds.core.DatasetBuilder) -> dict[str, Any]:
  """Prepares `builder` once (array_record) and returns its per-split random-access sources.

  Each source maps a record index to `{'index': int, 'bytes': bytes}` (numpy, no TensorFlow).
  Every process must call it: process 0 prepares (and downloads, through a callable source)
  while the others wait, since processes preparing one shared directory at once would write
  over each other; the others then read what it wrote, or prepare their own copy if their
  data_dir is not the one process 0 wrote.
  """
  from perceiver_ar_vl import parallel  # imports jax: only when preparing

  def prepare_here() -> None:
    if not builder.is_prepared():
      logging.info('Preparing %s in %s.', builder.name, builder.data_dir)
      builder.download_and_prepare(file_format='array_record')

  parallel.process_0_first(prepare_here, f'Preparing the dataset in {builder.data_dir}')
  # Read back from the directory: a builder made before another process prepared it holds no
  # split information.
  return tfds.builder_from_directory(builder.data_dir).as_data_source()
