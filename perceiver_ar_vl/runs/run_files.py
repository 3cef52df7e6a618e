"""The small files of a run's workdir, written so that a kill at any moment loses nothing:
`config.json`, `metrics.jsonl` (each step once), `train_summary.json` and the runner's
`run.json`. Each is replaced through a temporary file and a rename (never left truncated);
only process 0 writes."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
from absl import logging

from perceiver_ar_vl import spec

METRICS_FILE = 'metrics.jsonl'
SUMMARY_FILE = 'train_summary.json'


def write_atomically(path: str, text: str) -> None:
  """Writes `text` to `path` through a temporary file and a rename, so a kill mid-write
  leaves the old file or the new one, never a truncated one."""
  tmp = f'{path}.{os.getpid()}.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def write_config(config: ml_collections.ConfigDict | spec.RunSpec, workdir: str) -> None:
  """`config.json`: the run's whole config (process 0)."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    text = spec.to_config(spec.from_config(config)).to_json_best_effort(indent=2)
    write_atomically(os.path.join(workdir, 'config.json'), text)


def read_jsonl(path: str) -> list[dict]:
  """The records of a `metrics.jsonl` file, in order."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def drop_metrics_after(workdir: str, step: int) -> None:
  """Drops the metrics.jsonl records of steps after `step`, and a last line cut short by a kill.

  A run killed after its last checkpoint logged steps that the resumed run does again; without
  this they would appear twice. Process 0 rewrites the file atomically.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if jax.process_index() != 0 or not os.path.exists(path):
    return
  kept, dropped = [], 0
  with open(path) as f:
    for line in f:
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        dropped += 1
        continue
      if record.get('step', 0) > step:
        dropped += 1
      else:
        kept.append(line if line.endswith('\n') else line + '\n')
  if dropped:
    write_atomically(path, ''.join(kept))
    logging.info('Dropped %d metric records after step %d from %s.', dropped, step, path)


def recorded_validation_bits(workdir: str, step: int) -> float | None:
  """The validation bits per byte that metrics.jsonl holds for `step`, if any."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return None
  bits = [
    r['validation_bits_per_byte']
    for r in read_jsonl(path)
    if r.get('step') == step and 'validation_bits_per_byte' in r
  ]
  return bits[-1] if bits else None


def write_summary(summary: dict[str, Any], workdir: str, seconds: float) -> None:
  """Adds this invocation's wall-clock to the workdir's total and writes train_summary.json
  (atomically; an unreadable old one counts as no time)."""
  path = os.path.join(workdir, SUMMARY_FILE)
  previous = 0.0
  try:
    with open(path) as f:
      previous = float(json.load(f).get('train_seconds', 0.0))
  except (OSError, ValueError, AttributeError):
    pass
  summary['train_seconds'] = previous + seconds
  if jax.process_index() == 0:
    write_atomically(path, json.dumps(summary, indent=2))
