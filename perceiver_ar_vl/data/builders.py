"""tensorflow-datasets builders that store byte streams as fixed-size chunks (no TensorFlow).

Each split is a sequence of records `{'index': int64, 'bytes': bytes}`; record i holds bytes
[i * chunk_bytes, (i + 1) * chunk_bytes) of the split (the last record may be shorter). The
builders are prepared with `download_and_prepare(file_format='array_record')` and read with
random access through `builder.as_data_source()`, so a training crop reads only the one or
two records it overlaps.

  * `Enwik8`    the Hutter-prize file (first 90M bytes train, next 5M validation, last 5M
                test), from a local `enwik8` / `enwik8.zip` or downloaded with its
                SHA-1 checked (`sources.Enwik8Spec`).
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

import dataclasses
import hashlib
import inspect
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from perceiver_ar_vl.config_choices import SPLITS
from perceiver_ar_vl.data.sources import (
  READ_BYTES,
  STANDARD_ENWIK8,
  STANDARD_ENWIK8_SPLIT_BYTES,
  ByteSource,
  Enwik8Spec,
  SourceError,
  file_source,
  text_split_sizes,
)

RECORD_BYTES = 64 * 1024  # the default record size of prepared splits (data.record_bytes)


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
  chunk_bytes: int = RECORD_BYTES
  sha1: str = ''


def enwik8_config(
  split_bytes: Sequence[int] = STANDARD_ENWIK8_SPLIT_BYTES,
  chunk_bytes: int = RECORD_BYTES,
  sha1: str = STANDARD_ENWIK8.sha1,
) -> Enwik8Config:
  """The config for given split sizes; the standard sizes get name 'standard' and a checksum
  (`sha1`, checked before preparing)."""
  split_bytes = tuple(int(b) for b in split_bytes)
  chunk_bytes = int(chunk_bytes)
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
    sha1=sha1 if standard else '',
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
  chunk_bytes: int = RECORD_BYTES


def _content_hash(sources: Sequence[ByteSource]) -> str:
  h = hashlib.blake2b(digest_size=8)
  for source in sources:
    h.update(f'source:{source.size};'.encode())
    for data in source.iter_range(0, source.size, READ_BYTES):
      h.update(data)
  return h.hexdigest()


def byte_file_config(
  paths: Sequence[str], heldout: str = '', chunk_bytes: int = RECORD_BYTES
) -> tuple[ByteFileConfig, ByteSource, ByteSource | None]:
  """Config named after the files and a hash of their contents, and the sources it reads."""
  chunk_bytes = int(chunk_bytes)
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


def enwik8_builder(
  data_dir: str,
  source: ByteSource | Callable[[], ByteSource] | None = None,
  *,
  spec: Enwik8Spec = STANDARD_ENWIK8,
  chunk_bytes: int = RECORD_BYTES,
) -> Enwik8:
  """The Enwik8 builder for `spec`'s split sizes and records of `chunk_bytes` (source: what
  to prepare from, or a callable that returns it, called only if preparing)."""
  config = enwik8_config(spec.split_bytes, chunk_bytes, spec.sha1)
  if config.name in Enwik8.builder_configs:
    config = config.name  # tfds refuses a custom config named like a predefined one
  return Enwik8(data_dir=data_dir, config=config, source=source)


def byte_file_builder(
  data_dir: str, paths: Sequence[str], heldout: str = '', chunk_bytes: int = RECORD_BYTES
) -> ByteFile:
  """The ByteFile builder for these files (keyed by a hash of their contents)."""
  config, source, heldout_source = byte_file_config(paths, heldout, chunk_bytes)
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
