"""Byte-level datasets (a token is a raw byte): enwik8, any local text file, and the synthetic
copy task, selected by `config.data`; prepared once through tensorflow-datasets in the
array_record format and read with random access (`builders`)."""

from perceiver_ar_vl.data.base import DEFAULTS, VOCAB_SIZE, ByteDataset
from perceiver_ar_vl.data.datasets import make_dataset

__all__ = ['DEFAULTS', 'VOCAB_SIZE', 'ByteDataset', 'make_dataset']
