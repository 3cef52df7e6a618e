"""Associative recall (MQAR) across windows: Perceiver AR plain and with a match head, the
Transformer and ECP of the same size, trained for the same steps at each window.

Each (model, window) run is `configs/recall.py:<model>` with model.max_context = window (the
same pairs, so longer windows hold more queries at longer distances), trained then evaluated
in --out/<model>_<window>; a model stops at the first window whose training took longer than
--max_seconds (the next, 4x longer window would not fit the budget on this machine).
Prints a markdown table of recall_accuracy, query bits, other bits and training seconds.

  python benchmarks/recall.py --out=/tmp/recall --windows=256,1024,4096,16384
  python benchmarks/recall.py --out=/tmp/recall --models=match --windows=65536 --steps=100
"""

from __future__ import annotations

import argparse
import json
import os

from perceiver_ar_vl import cli, training
from perceiver_ar_vl.evaluation import evaluate


def run_one(model: str, window: int, steps: int, seed: int, out: str) -> dict:
  """Trains and evaluates one (model, window); returns its row (resumes a finished run)."""
  config = cli.load_config_file('config', f'configs/recall.py:{model}')
  n = min(config.latents.max, window)
  config.model.update(max_context=window, ecp_segment_length=max(1, window // 8))
  config.latents.update(min=n, max=n, buckets=(n,))
  config.train.update(steps=steps)
  config.seed = seed
  workdir = os.path.join(out, f'{model}_{window}_seed{seed}')
  summary = training.train(config, workdir)
  result = evaluate.evaluate(config, workdir)['results'][0]
  return {
    'model': model,
    'window': window,
    'seed': seed,
    'recall_accuracy': result['recall_accuracy'],
    'query_bits': result['copy_bits'],
    'other_bits': result['fresh_bits'],
    'train_seconds': summary['train_seconds'],
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True, help='workdirs and results.json go here')
  parser.add_argument('--models', default='perceiver,match,transformer,ecp')
  parser.add_argument('--windows', default='256,1024,4096,16384')
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--seeds', default='0')
  parser.add_argument('--max_seconds', type=float, default=900.0)
  args = parser.parse_args()
  rows = []
  for model in args.models.split(','):
    for window in (int(w) for w in args.windows.split(',')):
      for seed in (int(s) for s in args.seeds.split(',')):
        row = run_one(model, window, args.steps, seed, args.out)
        rows.append(row)
        with open(os.path.join(args.out, 'results.json'), 'w') as f:
          json.dump(rows, f, indent=2)
      if row['train_seconds'] > args.max_seconds:
        break
  print(
    '| model | window | seed | recall accuracy | query bits | other bits | train s |\n'
    '|---|---:|---:|---:|---:|---:|---:|'
  )
  for r in rows:
    print(
      f'| {r["model"]} | {r["window"]} | {r["seed"]} | {r["recall_accuracy"]:.3f} | '
      f'{r["query_bits"]:.3f} | {r["other_bits"]:.3f} | {r["train_seconds"]:.0f} |'
    )


if __name__ == '__main__':
  main()
