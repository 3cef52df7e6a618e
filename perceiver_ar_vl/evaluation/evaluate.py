"""Bits per byte over a split, scored in blocks; restore-and-evaluate from a workdir.

Blocks: each block of N targets is predicted by the N latents of one window whose M inputs end
right before the block's last target, so each target sees up to M-N+j bytes of prior context
(the window is left-padded and masked near the split's start). Every target (bytes 1..L-1 of
the split; byte 0 has no context) is scored exactly once. `mode='stride1'` instead scores each
target with its own window, by the last latent only: exact full-context, and L times slower.
A split of separate examples ([E, L], the aligned copy task) is scored example by example,
each window starting at its example's first byte (`evaluation.windows`). On the copy task every
result also says what was learned: bits on the copied bytes and on the random ones, and by
the distance back to the copy's source (`copy_metrics`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from perceiver_ar_vl import config_choices, config_lib, data, losses, parallel, runtime, spec
from perceiver_ar_vl.evaluation import copy_metrics
from perceiver_ar_vl.evaluation import report as eval_report
from perceiver_ar_vl.evaluation import windows as eval_windows

# Re-exported: the windows evaluation scores are part of its interface.
from perceiver_ar_vl.evaluation.windows import block_windows as block_windows
from perceiver_ar_vl.models.base import LanguageModel
from perceiver_ar_vl.runs import metrics, train_state


@functools.lru_cache(maxsize=32)
def _score_fn(model: LanguageModel, num_latents: int, num_bins: int = 0):
  """Jitted per-slot (summed nats [N], target count [N]) of one batch of windows, and with
  `num_bins` > 0 also per target bin (summed nats [K], count [K], greedy predictions that are
  right [K]); cached per (model, N, K)."""

  @jax.jit
  def score(variables, window_BxW, mask_BxM, weights_BxN, bins_BxN=None):
    logits = model.forward(
      variables, window_BxW[:, :-1], num_latents, num_latents, input_mask=mask_BxM
    )
    nll_BxN, _ = losses.token_nll(logits, window_BxW)
    sums = ((nll_BxN * weights_BxN).sum(0), weights_BxN.sum(0))
    if not num_bins:
      return sums
    onehot_BxNxK = jax.nn.one_hot(bins_BxN, num_bins, dtype=jnp.float32)
    per_bin = lambda w_BxN: jnp.einsum('bn,bnk->k', w_BxN, onehot_BxNxK)
    targets_BxN = losses.next_token_targets(window_BxW, num_latents)
    right_BxN = (jnp.argmax(logits, axis=-1) == targets_BxN) * weights_BxN
    return (*sums, per_bin(nll_BxN * weights_BxN), per_bin(weights_BxN), per_bin(right_BxN))

  return score


FLUSH_EVERY = 64  # evaluation batches whose sums reach the host in one transfer
PROGRESS_SECONDS = 10.0  # a long evaluation logs how far it is at most this often


def position_ranges(context: int, num_latents: int, parts: int = 4) -> list[tuple[int, int]]:
  """The ranges [a, b) of window positions, in quarters of the window, that hold latents."""
  width = max(1, context // parts)
  first = context - num_latents
  return [(a, min(a + width, context)) for a in range(0, context, width) if a + width > first]


def bits_per_byte(
  model: LanguageModel,
  variables,
  stream: np.ndarray,
  *,
  num_latents: int,
  batch_size: int = 8,
  max_bytes: int = 0,
  mode: str = 'blocks',
  mesh=None,
  source_distances: np.ndarray | None = None,
  label: str = '',
) -> dict[str, Any]:
  """Mean next-byte cross-entropy of `stream` in bits and nats, every target scored once.

  `stream`: uint8 [L], one stream; or [E, L], E examples each scored in its own windows
  (`evaluation.windows`: the aligned copy task). `max_bytes` > 0 scores only the first `max_bytes`
  bytes. `source_distances` (int, shaped as `stream`; 0 = a byte with no copy source) adds
  the copy task's `copy_metrics` (copy_bits, fresh_bits, bits_by_distance, ...). Runs data
  parallel over `mesh`. An evaluation that runs longer than PROGRESS_SECONDS logs, that often,
  how many windows of `label` are scored and when it should end.
  """
  context = model.max_context
  if not 1 <= num_latents <= context:
    raise ValueError(f'num_latents={num_latents} must be in [1, max_context={context}].')
  if config_choices.unknown_choice('eval.mode', mode):
    raise ValueError(config_choices.unknown_choice('eval.mode', mode))
  per_window = num_latents if mode == 'blocks' else 1
  plan = eval_windows.plan_windows(stream, per_window, max_bytes)
  bins = None
  if source_distances is not None:
    distances = np.asarray(source_distances).reshape(-1)[: len(plan.stream)]
    bins = copy_metrics.distance_bins(distances)
  num_bins = 0 if bins is None else int(bins.max()) + 1

  mesh = mesh or parallel.make_mesh()
  devices = mesh.devices.size
  batch = -(-max(batch_size, 1) // devices) * devices
  score = _score_fn(model, num_latents, num_bins)
  rows = slice(
    jax.process_index() * batch // jax.process_count(),
    (jax.process_index() + 1) * batch // jax.process_count(),
  )
  # Windows are built one batch at a time (a stride-1 pass over a long split would not fit in
  # host memory at once); batch sums reach the host every FLUSH_EVERY batches and are added
  # there in float64, so the host does not wait for the device batch by batch (on a mesh of
  # several CPU devices it stays at most parallel.CPU_PROGRAMS_IN_FLIGHT batches ahead).
  totals = [np.zeros(num_latents), np.zeros(num_latents)] + [np.zeros(num_bins) for _ in range(3)]
  pending = []
  in_flight = parallel.InFlight(mesh)
  windows = len(plan.ends)
  began = last_log = time.perf_counter()
  for start in range(0, windows, batch):
    chunk = eval_windows.padded_batch(
      plan, context, per_window, num_latents, start, batch, bins=bins
    )
    pending.append(score(variables, *(parallel.global_batch(a[rows], mesh) for a in chunk)))
    in_flight.add(pending[-1])
    due = time.perf_counter() - last_log >= PROGRESS_SECONDS  # read the device, then report
    if len(pending) == FLUSH_EVERY or start + batch >= windows or due:
      for sums in jax.device_get(pending):
        for total, part in zip(totals, sums, strict=False):
          total += np.asarray(part, np.float64)
      pending = []
    if due and start + batch < windows:
      last_log, done = time.perf_counter(), start + batch
      logging.info(
        'Evaluating %s: %d of %d windows, %.0f s, about %.0f s left.',
        label or f'{num_latents} latents',
        done,
        windows,
        last_log - began,
        (last_log - began) * (windows - done) / done,
      )
  nats_N, count_N, nats_K, count_K, right_K = totals
  total_count = count_N.sum()
  if int(round(total_count)) != plan.num_targets:
    raise AssertionError(f'Scored {total_count} targets, expected {plan.num_targets}.')
  nats = nats_N.sum() / total_count
  # Loss by the target's position in the window (how much context it had), as the original.
  positions_N = np.arange(context - num_latents, context)
  by_position = {}
  for a, b in position_ranges(context, num_latents):
    in_range = (positions_N >= a) & (positions_N < b)
    if count_N[in_range].sum():
      by_position[f'[{a},{b})'] = nats_N[in_range].sum() / count_N[in_range].sum() / math.log(2)
  result = {
    'bits': nats / math.log(2),
    'nats': nats,
    'num_targets': int(round(total_count)),
    'bits_by_position': by_position,
  }
  if bins is not None:
    result.update(copy_metrics.copy_summary(nats_K, count_K, right_K))
  return result


def default_num_latents(config: Any) -> int:
  """`eval.num_latents`, or the training maximum when 0."""
  return int(config.eval.num_latents or config.latents.max)


def latent_counts_to_score(config: Any) -> list[int]:
  """`eval.num_latents` (default: the training maximum) and the sweep, sorted, unique."""
  return sorted({default_num_latents(config), *(int(n) for n in config.eval.latents_sweep)})


def at_window(config: spec.RunSpec, window: int) -> spec.RunSpec:
  """The run evaluated at window `window` (model.max_context; the parameters do not depend
  on it). On the copy task the examples become `window` bytes long (copy distance about
  window / 2) and two are scored (eval.max_bytes = 2 * window): the second has the whole
  first as context."""
  run, window = spec.from_config(config), int(window)
  copy_task = run.data.name == 'copy'
  return run.replace(
    model={'max_context': window},
    # Training settings that depend on the window do not apply to evaluation.
    latents={'buckets': tuple(b for b in run.latents.buckets if b <= window) or (window,)},
    window={'schedule': 'none'},
    data={'copy_length': window} if copy_task else {},
    eval={'max_bytes': 2 * window} if copy_task else {},
  )


def evaluate(config: Any, workdir: str) -> dict[str, Any]:
  """Restores `workdir`'s checkpoint and scores each eval split at each latent count, at
  each window of `eval.windows` (`at_window`; () = model.max_context only).

  Prints a table and writes `eval.json` in the workdir: {'checkpoint_step', 'mode',
  'max_bytes', 'results': [{'split', 'window', 'num_latents', 'bits', 'nats', 'num_targets',
  'bits_by_position', 'seconds'}]}, where 'bits_by_position' maps ranges '[a,b)' of the
  target's window position (quarters of the window) to bits per byte. On the copy task each
  result also holds 'copy_bits', 'fresh_bits', 'copy_targets', 'fresh_targets' and
  'bits_by_distance' (`copy_metrics`); on the recall task also 'recall_accuracy'. Returns the
  same dict.
  """
  config = config_lib.read_spec(config)
  runtime.show_info_logs()  # a notebook sees the progress of a long evaluation
  runtime.enable_compilation_cache(config.compile_cache_dir)
  runtime.configure_cpu_execution(config.cpu_execution)
  e = config.eval
  train_state.checkpoint_step(workdir, e.checkpoint_step)  # no checkpoint: stop before reading data
  configs = [at_window(config, w) for w in e.windows] or [config]
  if e.windows:  # every window checked before any is scored
    for windowed in configs:  # the run's settings at another window
      config_lib.validate(spec.to_config(windowed))
  # The parameters do not depend on the window: read them once, build the model per window.
  _, variables, step = train_state.restore_params(config, workdir, e.checkpoint_step)
  rows = []
  for windowed in configs:
    model = config_lib.create_model(windowed)
    rows += _evaluate_at(windowed, model, variables)
  report = {'checkpoint_step': step, 'mode': e.mode, 'max_bytes': int(e.max_bytes), 'results': rows}
  if jax.process_index() == 0:
    print(f'Checkpoint step {step}, {e.mode} evaluation:\n{eval_report.format_table(rows)}')
    with open(os.path.join(workdir, 'eval.json'), 'w') as f:
      json.dump(report, f, indent=2)
  metrics.write_tensorboard(workdir, step, eval_report.tensorboard_scalars(rows, e.mode))
  return report


def _evaluate_at(config: Any, model: LanguageModel, variables) -> list[dict]:
  """The result rows of every split and latent count at `config`'s window."""
  e = config.eval
  window = int(config.model.max_context)
  dataset = data.make_dataset(config.data, window=window + 1, seed=config.seed)
  mesh = parallel.make_mesh()
  rows = []
  for split in e.splits:
    stream = dataset.split_bytes(split)
    for n in latent_counts_to_score(config):
      start = time.perf_counter()
      result = bits_per_byte(
        model,
        variables,
        stream,
        num_latents=n,
        batch_size=e.batch_size,
        max_bytes=e.max_bytes,
        mode=e.mode,
        mesh=mesh,
        source_distances=dataset.source_distances(split),
        label=f'window {window}, {split}, {n} latents',
      )
      seconds = time.perf_counter() - start
      if config.data.name == 'recall':  # its "copies" are the queries' values
        result['recall_accuracy'] = result.get('copy_accuracy')
      rows.append(
        {'split': split, 'window': window, 'num_latents': n, **result, 'seconds': seconds}
      )
      logging.info('window %d, %s, %d latents: %.4f bits/byte', window, split, n, result['bits'])
  return rows
