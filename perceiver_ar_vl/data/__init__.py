"""Byte-level datasets (a token is a raw byte): enwik8, any local text file, and the synthetic
copy task, selected by `config.data`; prepared once through tensorflow-datasets in the
array_record format and read with random access (`builders`)."""

from perceiver_ar_vl.data.base import DEFAULTS, PAD, VOCAB_SIZE, ByteDataset
from perceiver_ar_vl.data.copy_settings import check_copy_config
from perceiver_ar_vl.data.copy_task import copy_length_at
from perceiver_ar_vl.data.datasets import make_dataset, rows_have_padding

__all__ = [
  'DEFAULTS',
  'PAD',
  'VOCAB_SIZE',
  'ByteDataset',
  'check_copy_config',
  'copy_length_at',
  'make_dataset',
  'rows_have_padding',
]
