"""Byte sources: local files (or a zip member) read as one stream with ranged reads, the
checks on a user's data files, and enwik8's download with its SHA-1 checked.

Everything is explicit: what "enwik8" is (URL, checksum, split sizes, how to fetch) is an
`Enwik8Spec`, so a small stand-in archive or an offline fetch is an argument, not a patch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

from perceiver_ar_vl import errors

ENWIK8_URL = 'http://mattmahoney.net/dc/enwik8.zip'
ENWIK8_MEMBER = 'enwik8'
# SHA-1 of the uncompressed 100,000,000-byte file (published on mattmahoney.net/dc).
ENWIK8_SHA1 = '57b8363b814821dc9d47aa4d41f58733519076b2'
STANDARD_ENWIK8_SPLIT_BYTES = (90_000_000, 5_000_000, 5_000_000)  # train, validation, test
READ_BYTES = 1 << 20  # block size of sequential reads


class DownloadError(errors.UserError, RuntimeError):
  """The enwik8 archive could not be downloaded or failed its checksum."""


class SourceError(errors.UserError):
  """A local source file is not what the dataset expects (format, member, size, checksum)."""


# ------------------------------------------------------------------------------------------
# Byte sources: a virtual concatenation of (possibly zipped) files with ranged reads.


@dataclasses.dataclass(frozen=True)
class Segment:
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

  segments: tuple[Segment, ...]

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
            data = f.read(min(READ_BYTES, take))
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
    for data in self.iter_range(0, self.size, READ_BYTES):
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
    Segment(path=os.path.abspath(path), size=check_file(path, config_key)) for path in paths
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
    segment = Segment(path=path, size=size, member=ENWIK8_MEMBER)
  elif path.lower().endswith('.zip'):
    raise SourceError(
      f'{path} is not a valid zip archive (corrupt or truncated download?); '
      f'expected the standard enwik8.zip from {ENWIK8_URL}.'
    )
  else:
    segment = Segment(path=path, size=os.path.getsize(path))
  if segment.size != expected_size:
    raise SourceError(
      f'{path}: enwik8 has {segment.size:,} bytes, expected {expected_size:,}; '
      'this is not the standard enwik8 file.'
    )
  return ByteSource((segment,))


def fetch_url(url: str, dest: str) -> None:
  """Downloads `url` to `dest` (plain urllib)."""
  with urllib.request.urlopen(url, timeout=60) as response, open(dest, 'wb') as f:
    shutil.copyfileobj(response, f, READ_BYTES)


@dataclasses.dataclass(frozen=True)
class Enwik8Spec:
  """What "enwik8" is: where it is downloaded from, its SHA-1 and its split sizes, and how a
  URL is fetched. `STANDARD_ENWIK8` is the Hutter-prize file; another spec (a small stand-in
  archive, a mirror, an offline fetch) goes to `data.make_dataset(..., enwik8=spec)`."""

  url: str = ENWIK8_URL
  sha1: str = ENWIK8_SHA1
  split_bytes: tuple[int, int, int] = STANDARD_ENWIK8_SPLIT_BYTES
  fetch: Callable[[str, str], None] = fetch_url

  @property
  def size(self) -> int:
    return sum(self.split_bytes)

  @property
  def standard(self) -> bool:
    return self.split_bytes == STANDARD_ENWIK8_SPLIT_BYTES


STANDARD_ENWIK8 = Enwik8Spec()


def download_enwik8(download_dir: str, spec: Enwik8Spec = STANDARD_ENWIK8) -> str:
  """Returns a local, checksum-verified enwik8.zip, downloading it into `download_dir` once.

  Raises:
    DownloadError: offline / HTTP failure, or the archive fails its SHA-1 check.
  """
  os.makedirs(download_dir, exist_ok=True)
  dest = os.path.join(download_dir, 'enwik8.zip')
  hint = (
    'download enwik8.zip yourself (e.g. `curl -O ' + spec.url + '`) and pass '
    '--config.data.path=/path/to/enwik8.zip'
  )
  if not os.path.exists(dest):
    tmp = f'{dest}.{os.getpid()}.incomplete'  # never another process's partial download
    try:
      spec.fetch(spec.url, tmp)
    except (OSError, urllib.error.URLError, ValueError) as e:
      if os.path.exists(tmp):
        os.remove(tmp)
      raise DownloadError(f'could not download {spec.url} ({e}); {hint}.') from e
    os.replace(tmp, dest)
  try:
    digest = enwik8_source(dest, spec.size).sha1()
  except SourceError as e:
    os.remove(dest)
    raise DownloadError(f'downloaded {spec.url} is damaged ({e}); removed it; {hint}.') from e
  if digest != spec.sha1:
    os.remove(dest)
    raise DownloadError(
      f'downloaded {spec.url} failed its checksum (SHA-1 {digest}, expected '
      f'{spec.sha1}); removed it; {hint}.'
    )
  return dest


def text_split_sizes(num_bytes: int) -> tuple[int, int, int]:
  """(train, validation, test) = 90% / 5% / 5% of `num_bytes` (test takes the remainder)."""
  train = num_bytes * 9 // 10
  valid = (num_bytes - train) // 2
  return train, valid, num_bytes - train - valid
