"""How evaluation results are shown: a markdown table (printed) and TensorBoard scalars
(written beside the training curves). `evaluate` makes the rows."""

from __future__ import annotations


def format_table(rows: list[dict]) -> str:
  """A markdown table of evaluation rows (with copy / fresh bits on the copy task, and a
  window column when the rows come from several windows)."""
  copy = bool(rows) and all(
    r.get('copy_bits') is not None and r.get('fresh_bits') is not None for r in rows
  )
  windows = len({r.get('window') for r in rows}) > 1
  extra = ' copy bits | fresh bits |' if copy else ''
  lines = [
    f'| split |{" window |" if windows else ""} latents | bits/byte |{extra} targets | '
    'seconds (incl. compile) |',
    '|---|'
    + ('---:|' if windows else '')
    + '---:|---:|'
    + ('---:|---:|' if copy else '')
    + '---:|---:|',
  ]
  for r in rows:
    kinds = f' {r["copy_bits"]:.4f} | {r["fresh_bits"]:.4f} |' if copy else ''
    window = f' {r["window"]} |' if windows else ''
    lines.append(
      f'| {r["split"]} |{window} {r["num_latents"]} | {r["bits"]:.4f} |{kinds} '
      f'{r["num_targets"]} | {r["seconds"]:.1f} |'
    )
  return '\n'.join(lines)


def tensorboard_scalars(rows: list[dict], mode: str) -> dict[str, float]:
  """The rows as TensorBoard scalars: `eval_<mode>/<split>/[window_<W>/]latents_<N>/<metric>`
  for bits per byte and, where measured, copy/fresh bits and copy/recall accuracy."""
  windows = len({r['window'] for r in rows}) > 1
  scalars = {}
  for r in rows:
    window = f'window_{r["window"]}/' if windows else ''
    prefix = f'eval_{mode}/{r["split"]}/{window}latents_{r["num_latents"]}/'
    for key in ('bits', 'copy_bits', 'fresh_bits', 'copy_accuracy', 'recall_accuracy'):
      if r.get(key) is not None:
        scalars[prefix + ('bits_per_byte' if key == 'bits' else key)] = r[key]
  return scalars
