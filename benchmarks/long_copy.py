"""Retrieval by sampling: does a trained copy-task model reproduce copies from far back?

Restores the copy-task run in --workdir (its config.json and newest checkpoint), prompts it
with the first halves of validation examples (plus whatever precedes them in the window: the
previous example in the streamed task, nothing in the aligned one), samples their second
halves greedily through the decoding cache (whose cross-attend holds up to M keys), and
prints per example how many sampled bytes equal their source, then the sampling speed cached
against uncached (the uncached path reruns the whole window for each byte, so it is timed on
--uncached_bytes bytes only). Compile time is excluded: each path is warmed up on one byte.

  python benchmarks/long_copy.py --workdir=/tmp/long_copy_cpu
  python benchmarks/long_copy.py --workdir=/tmp/long_copy_smoke --examples=2
  python benchmarks/long_copy.py --workdir=/tmp/long_copy_cpu --given=8 --bytes=1024

`--given=k` also gives the first k bytes of each second half in the prompt: a model that copies
by content (an n-gram match head of length k) cannot know where a copy begins, since nothing in
the stream marks it, so it is shown the copy's first k bytes and must produce the rest by
finding them 65,536 bytes back. `--window=W` samples the same parameters at window W (copy
distance W / 2, as `eval.windows` does).

The last line reads
  copied K of B bytes exactly (P%); cached X bytes/s, uncached Y bytes/s
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from perceiver_ar_vl import data, workdir_config
from perceiver_ar_vl.evaluation import evaluate
from perceiver_ar_vl.runs import train_state
from perceiver_ar_vl.sampling import sample


def copy_prompts(dataset, window: int, examples: int, split: str, given: int = 0):
  """(prompts [B, P], targets [B, L - h - given]): the first halves h of `examples` examples
  of `split` (and the first `given` bytes of their second halves) and the rest of their second
  halves. Streamed task: the first examples whose prompt fills the window (their first half
  after the bytes before it); aligned task: examples 0..B-1, each starting at the window's
  start."""
  length, half = dataset.length, (dataset.length + 1) // 2 + given
  stream = dataset.split_bytes(split)
  first = 0 if stream.ndim == 2 else max(1, -(-(window - half) // length)) - 1
  prompts, targets = [], []
  for e in range(first, first + examples):
    if stream.ndim == 2:  # aligned: one example per row, starting at the window's start
      prompts.append(stream[e, :half])
      targets.append(stream[e, half:])
    else:
      start = (e + 1) * length
      prompts.append(stream[max(0, start + half - window) : start + half])
      targets.append(stream[start + half : start + length])
  width = min(len(p) for p in prompts)
  return np.stack([p[-width:] for p in prompts]).astype(np.int32), np.stack(targets)


def timed_sample(model, variables, prompt_BxP, length: int, num_latents: int, cached: bool):
  """(tokens [B, length], seconds) of greedy sampling, after a 1-byte warm-up (the compile)."""
  kwargs = dict(num_latents=num_latents, temperature=0.0, cached=cached)
  sample(model, variables, prompt_BxP, length=1, **kwargs)
  start = time.perf_counter()
  tokens = sample(model, variables, prompt_BxP, length=length, **kwargs)
  return tokens, time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='a trained copy-task run')
  parser.add_argument('--examples', type=int, default=2, help='validation examples (rows)')
  parser.add_argument('--bytes', type=int, default=0, help='bytes sampled per example; 0 = L/2')
  parser.add_argument('--uncached_bytes', type=int, default=4, help='bytes timed uncached')
  parser.add_argument('--num_latents', type=int, default=0, help='0 = the training maximum')
  parser.add_argument('--split', default='validation')
  parser.add_argument('--given', type=int, default=0, help='copy bytes given in the prompt')
  parser.add_argument('--window', type=int, default=0, help='sample at this window (0: own)')
  args = parser.parse_args()

  config = workdir_config.get_config(args.workdir)
  if args.window:
    config = evaluate.at_window(config, args.window)
  if config.data.name != 'copy':
    raise SystemExit(f'error: {args.workdir} is a {config.data.name!r} run, not the copy task.')
  model, variables, step = train_state.restore_params(config, args.workdir)
  window = config.model.max_context
  dataset = data.make_dataset(config.data, window + 1, config.seed)
  prompts_BxP, targets_BxT = copy_prompts(dataset, window, args.examples, args.split, args.given)
  length = min(args.bytes or targets_BxT.shape[1], targets_BxT.shape[1])
  n = args.num_latents or config.latents.max
  print(
    f'{args.workdir}: step {step}, window {window}, copy length {dataset.length} '
    f'({config.data.copy_mode}), prompt {prompts_BxP.shape[1]} bytes ({args.given} of the '
    f'copy), N = {n}, '
    f'sampling {length} bytes x {len(prompts_BxP)} examples greedily'
  )

  tokens_BxT, cached_s = timed_sample(model, variables, prompts_BxP, length, n, cached=True)
  equal_BxT = tokens_BxT == targets_BxT[:, :length]
  print('| example | bytes equal to the source | first wrong byte |')
  print('|---:|---:|---:|')
  for e, row in enumerate(equal_BxT):
    first_wrong = int(np.argmin(row)) if not row.all() else '-'
    print(f'| {e} | {int(row.sum())} / {length} | {first_wrong} |')
  uncached_len = max(1, min(args.uncached_bytes, length))
  _, uncached_s = timed_sample(model, variables, prompts_BxP, uncached_len, n, cached=False)
  copied, total = int(equal_BxT.sum()), int(equal_BxT.size)
  cached_rate = total / cached_s
  uncached_rate = uncached_len * len(prompts_BxP) / uncached_s
  print(
    f'copied {copied} of {total} bytes exactly ({100 * copied / total:.1f}%); '
    f'cached {cached_rate:.1f} bytes/s, uncached {uncached_rate:.2f} bytes/s'
  )


if __name__ == '__main__':
  main()
