"""Our train step against lucidrains' perceiver-ar-pytorch at the same shapes, in one run.

  pip install torch perceiver-ar-pytorch    # the peer; this script installs nothing
  python benchmarks/vs_lucidrains.py        # seed model, M = 1024, N = 256, batch 8, f32

Both sides: 6 layers (one cross-attend + 5 self-attention over the latents), d_model 512,
8 heads of 64, MLP 2048, vocabulary 256, rotary on half of each head, dropout 0, Adam; one
train step = forward + backward + optimizer update on a batch of [8, 1025] bytes. torch gets
as many threads as JAX has cores (`--threads`). The two are timed alternately (`--rounds`
rounds of `--repeats` steps each, after warm-up) and the medians compared, so both see the
same machine load. GFLOP/s use `perceiver_ar_vl.experiments.flops.train_step_flops` for both
sides (the peer computes the same matmuls, minus biases), next to a plain f32 matmul's rate in
JAX.
"""

from __future__ import annotations

import datetime
import os
import statistics
import time

import common
import jax
import numpy as np
from absl import app, flags

from perceiver_ar_vl.experiments import flops, step_cost

flags.DEFINE_integer('context', 1024, 'Window M.')
flags.DEFINE_integer('latents', 256, 'Latents N.')
flags.DEFINE_integer('batch', 8, 'Windows per step.')
flags.DEFINE_integer('rounds', 3, 'Alternating rounds (ours, peer).')
flags.DEFINE_integer('repeats', 3, 'Timed steps per round and side.')
flags.DEFINE_integer('threads', 0, 'torch threads (0: os.cpu_count()).')
FLAGS = flags.FLAGS

PEER_MISSING = (
  'lucidrains perceiver-ar-pytorch is not installed: `pip install torch perceiver-ar-pytorch` '
  '(on this project machine: `pip install torch==2.13.0 perceiver-ar-pytorch==0.0.10`).'
)


def peer_step_fn():
  """A jit-free torch train step of lucidrains' model at our shapes; None if not installed."""
  try:
    import torch
    from perceiver_ar_pytorch import PerceiverAR
  except ImportError:
    return None
  torch.set_num_threads(FLAGS.threads or os.cpu_count())
  torch.manual_seed(0)
  model = PerceiverAR(
    num_tokens=256,
    dim=512,
    depth=5,
    max_seq_len=FLAGS.context,
    cross_attn_seq_len=FLAGS.context - FLAGS.latents,
    dim_head=64,
    heads=8,
    ff_mult=4,
  )
  optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
  rng = np.random.default_rng(0)
  window = torch.from_numpy(rng.integers(0, 256, (FLAGS.batch, FLAGS.context + 1)))

  def step():
    loss = model(window[:, :-1], labels=window[:, 1:])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

  return step, torch.__version__


def timed(step, repeats: int) -> list[float]:
  out = []
  for _ in range(repeats):
    start = time.perf_counter()
    step()
    out.append(time.perf_counter() - start)
  return out


def main(argv):
  del argv
  peer = peer_step_fn()
  if peer is None:
    print(PEER_MISSING)
    return
  peer_step, torch_version = peer
  config = common.seed_model_config(FLAGS.context, FLAGS.batch)
  ours_step, _ = step_cost.compiled_train_step(config, FLAGS.latents)
  ours_step()
  peer_step()
  ours, theirs = [], []
  for _ in range(FLAGS.rounds):
    ours += timed(ours_step, FLAGS.repeats)
    theirs += timed(peer_step, FLAGS.repeats)
  ours_s, theirs_s = statistics.median(ours), statistics.median(theirs)
  step_flops = flops.train_step_flops(config, FLAGS.latents)
  matmul = common.matmul_gflops()
  print(
    f'{datetime.date.today()}, {os.cpu_count()} cores, jax {jax.__version__}, torch '
    f'{torch_version}; M = {FLAGS.context}, N = {FLAGS.latents}, batch {FLAGS.batch}, f32; '
    f'{step_flops / 1e9:.0f} GFLOP per step; plain f32 matmul in JAX {matmul:.0f} GFLOP/s\n'
  )
  print('| implementation | s / step (median) | speed vs lucidrains | GFLOP/s | of plain matmul |')
  print('|---|---:|---:|---:|---:|')
  for name, seconds in (('perceiver_ar_vl (JAX)', ours_s), ('perceiver-ar-pytorch', theirs_s)):
    rate = step_flops / seconds / 1e9
    print(
      f'| {name} | {seconds:.3f} | {theirs_s / seconds:.2f} | {rate:.0f} | {rate / matmul:.0%} |'
    )


if __name__ == '__main__':
  app.run(main)
