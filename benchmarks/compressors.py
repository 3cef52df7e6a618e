"""Classical compressors as a baseline for bits per byte, and the long-range-repetition corpus.

The conditional cost of test text given training text, in bits per test byte:
    (len(compress(train + test)) - len(compress(train))) * 8 / len(test),
for bzip2 -9 (Python's bz2, compresslevel 9) and xz -9e (Python's lzma, FORMAT_XZ, preset
9 | PRESET_EXTREME): the compressor sees the training text first, as the model did. `--test`
is split as `config.data.heldout_path` is (first half validation, second half test) unless
`--whole_test`, and `--max_test_bytes` keeps its first bytes as `eval.max_bytes` does, so the
figure covers the same bytes as the model's test bits.

  python benchmarks/compressors.py --train=A.txt,B.txt,C.txt --test=D.txt
  python benchmarks/compressors.py --python_corpus=numpy --out=/tmp/numpy_src.txt

`--python_corpus=PKG` writes the Python sources of an installed package, concatenated in sorted
path order (each file preceded by a `# file: <path>` line): text with long-range repetition
(imports, docstring conventions, repeated identifiers far apart).
"""

from __future__ import annotations

import argparse
import bz2
import importlib
import lzma
import os


def conditional_bits_per_byte(train: bytes, test: bytes) -> dict[str, float]:
  """Bits per test byte that bzip2 -9 and xz -9e spend on `test` after `train`."""
  codecs = {
    'bzip2 -9': lambda b: bz2.compress(b, compresslevel=9),
    'xz -9e': lambda b: lzma.compress(b, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME),
  }
  return {
    name: (len(codec(train + test)) - len(codec(train))) * 8 / len(test)
    for name, codec in codecs.items()
  }


def test_half(data: bytes) -> bytes:
  """The test split of a held-out file (its second half, as `data.heldout_path` splits it)."""
  return data[len(data) // 2 :]


def python_corpus(package: str) -> bytes:
  """Every .py file of an installed package, concatenated in sorted path order."""
  root = os.path.dirname(importlib.import_module(package).__file__)
  paths = sorted(
    os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.endswith('.py')
  )
  parts = []
  for path in paths:
    with open(path, 'rb') as f:
      parts.append(b'# file: ' + os.path.relpath(path, root).encode() + b'\n' + f.read())
  return b'\n'.join(parts)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--train', default='', help='comma-separated training files')
  parser.add_argument('--test', default='', help='held-out file (its second half is scored)')
  parser.add_argument('--whole_test', action='store_true', help='score all of --test')
  parser.add_argument(
    '--max_test_bytes',
    type=int,
    default=0,
    help='score only the first N test bytes (eval.max_bytes)',
  )
  parser.add_argument('--python_corpus', default='', help='write this package as one text')
  parser.add_argument('--out', default='', help='where --python_corpus writes')
  args = parser.parse_args()
  if args.python_corpus:
    corpus = python_corpus(args.python_corpus)
    with open(args.out, 'wb') as f:
      f.write(corpus)
    print(f'wrote {len(corpus):,} bytes of {args.python_corpus} sources to {args.out}')
    return
  train = b''.join(open(p, 'rb').read() for p in args.train.split(','))
  with open(args.test, 'rb') as f:
    test = f.read()
  test = test if args.whole_test else test_half(test)
  test = test[: args.max_test_bytes] if args.max_test_bytes else test
  print(f'train {len(train):,} bytes, test {len(test):,} bytes')
  print('| compressor | bits per test byte (given the training text) |')
  print('|---|---:|')
  for name, bits in conditional_bits_per_byte(train, test).items():
    print(f'| {name} | {bits:.4f} |')


if __name__ == '__main__':
  main()
