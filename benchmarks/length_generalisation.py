"""Train short, evaluate long: which cross-attend copies at distances it was not trained at?

Each variant trains `configs/long_copy.py:cpu` (the model of `:smoke`; steps at a 1024-byte
window, so each row reads copies at most 512 bytes back) with its overrides, then evaluates the
same parameters at every window of --windows (`eval.windows`: the copy task's examples are W
bytes there, so the copy distance is W / 2) and prints one row per run: copy bits at each
distance, fresh bits at the longest, training seconds.

  python benchmarks/length_generalisation.py --out=/tmp/lengen
  python benchmarks/length_generalisation.py --out=/tmp/lengen --variants=match_mixed \
      --seeds=0,1 --windows=1024,2048,4096,8192,16384,32768,65536,131072

Runs are resumable (launch.py resumes; a finished evaluation's eval.json is reused).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Rotary in the cross-attend spans the longest evaluation window (2 x 131072).
ROTARY = ['--config.model.cross_attend_rotary_fraction=-1', '--config.model.max_wavelength=262144']
PLAIN = ['--config.model.match_ngrams=()', *ROTARY]
FIXED_512 = ['--config.data.copy_train_lengths=(1024,1024)']  # every copy 512 back
# variant -> launch.py overrides of configs/long_copy.py:cpu (match head 8, no cross rotary,
# copies drawn 32..512 back).
VARIANTS = {
  'plain_512': PLAIN + FIXED_512,
  'plain_mixed': PLAIN,
  'match_rotary_512': ROTARY + FIXED_512,
  'match_512': FIXED_512,
  'match_mixed': [],
}


def launch(args: list[str], log: str) -> None:
  with open(log, 'a') as f:
    subprocess.run([sys.executable, 'launch.py', *args], cwd=REPO, stdout=f, stderr=f, check=True)


def run(variant: str, seed: int, windows: str, out: str) -> dict:
  workdir = os.path.join(out, f'{variant}_seed{seed}')
  common = [
    '--config=configs/long_copy.py:cpu',
    f'--workdir={workdir}',
    f'--config.seed={seed}',
    *VARIANTS[variant],
  ]
  os.makedirs(workdir, exist_ok=True)
  log = os.path.join(workdir, 'study.log')
  launch(common, log)
  result_file = os.path.join(workdir, f'eval_{windows.replace(",", "_")}.json')
  if not os.path.exists(result_file):
    launch([*common, '--mode=eval', f'--config.eval.windows=({windows},)'], log)
    os.replace(os.path.join(workdir, 'eval.json'), result_file)
  with open(result_file) as f:
    results = json.load(f)['results']
  with open(os.path.join(workdir, 'train_summary.json')) as f:
    seconds = json.load(f)['train_seconds']
  return {'variant': variant, 'seed': seed, 'results': results, 'train_seconds': seconds}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True)
  parser.add_argument('--variants', default=','.join(VARIANTS))
  parser.add_argument('--seeds', default='0')
  parser.add_argument('--windows', default='1024,2048,4096,8192')
  args = parser.parse_args()
  windows = [int(w) for w in args.windows.split(',')]
  rows = [
    run(variant, int(seed), args.windows, args.out)
    for variant in args.variants.split(',')
    for seed in args.seeds.split(',')
  ]
  with open(os.path.join(args.out, 'results.json'), 'w') as f:
    json.dump(rows, f, indent=2)
  head = ' | '.join(f'd {w // 2}' for w in windows)
  print(f'| variant | seed | {head} | fresh bits (d {windows[-1] // 2}) | train s |')
  print('|---|---:|' + '---:|' * len(windows) + '---:|---:|')
  for r in rows:
    bits = ' | '.join(f'{x["copy_bits"]:.3f}' for x in r['results'])
    fresh = r['results'][-1]['fresh_bits']
    print(f'| {r["variant"]} | {r["seed"]} | {bits} | {fresh:.3f} | {r["train_seconds"]:.0f} |')


if __name__ == '__main__':
  main()
