"""Our train step against lucidrains' perceiver-ar-pytorch at the same shapes, in one run.

  pip install torch perceiver-ar-pytorch    # the peer; this script installs nothing
  python benchmarks/vs_lucidrains.py        # seed model, M = 1024, N = 256, batch 8, f32
  python benchmarks/vs_lucidrains.py --profile   # + ms per step per op class, both sides
  python benchmarks/vs_lucidrains.py --dtypes=float32,bfloat16   # + our bf16 step

Both sides: 6 layers (one cross-attend + 5 self-attention over the latents), d_model 512,
8 heads of 64, MLP 2048, vocabulary 256, rotary on half of each head, dropout 0, Adam; one
train step = forward + backward + optimizer update on a batch of [8, 1025] bytes. torch gets
as many threads as JAX has cores (`--threads`). The steps are timed alternately (`--rounds`
rounds of `--repeats` steps each, after warm-up) and the medians compared, so all see the same
machine load.

FLOP model: `perceiver_ar_vl.experiments.flops.train_step_flops` for both sides (every matmul
of the forward at 2 FLOPs per multiply-add, x3 for the train step; the peer computes the same
matmuls, minus biases). Each step's GFLOP/s is set against the plain 2048^2 matmul rate of its
own framework (and dtype), measured in the same run: JAX and torch on the CPU call different
matmul libraries (XLA:CPU's YNNPACK; oneDNN/MKL), whose rates differ.
"""

from __future__ import annotations

import datetime
import os

import common
import jax
import op_profile
import peer
from absl import app, flags

from perceiver_ar_vl.experiments import flops, step_cost

flags.DEFINE_integer('context', 1024, 'Window M.')
flags.DEFINE_integer('latents', 256, 'Latents N.')
flags.DEFINE_integer('batch', 8, 'Windows per step.')
flags.DEFINE_integer('rounds', 3, 'Alternating rounds (each step kind once per round).')
flags.DEFINE_integer('repeats', 3, 'Timed steps per round and step kind.')
flags.DEFINE_integer('threads', 0, 'torch threads (0: os.cpu_count()).')
flags.DEFINE_list('dtypes', ['float32'], 'model.dtype of our steps (float32, bfloat16).')
flags.DEFINE_bool('profile', False, 'Also print ms per step per op class (op_profile.py).')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  threads = FLAGS.threads or os.cpu_count()
  built = peer.lucidrains_train_step(FLAGS.context, FLAGS.latents, FLAGS.batch, threads)
  if built is None:
    print(peer.PEER_MISSING)
    return
  peer_step, torch_version = built
  config = common.seed_model_config(FLAGS.context, FLAGS.batch)
  steps = {}
  for dtype in FLAGS.dtypes:
    config.model.dtype = dtype
    step, _ = step_cost.compiled_train_step(config, FLAGS.latents)
    steps[f'perceiver_ar_vl (JAX, {dtype})'] = (step, dtype)
  steps[f'perceiver-ar-pytorch 0.0.10 (torch {torch_version})'] = (peer_step, 'torch')
  medians = common.alternating_medians(
    {name: step for name, (step, _) in steps.items()}, FLAGS.rounds, FLAGS.repeats
  )
  peer_s = medians[list(steps)[-1]]
  # bf16 steps are set against bf16 x bf16 -> f32, the result type their matmuls ask for.
  rates = {
    'float32': common.matmul_gflops(),
    'bfloat16': common.matmul_gflops(dtype='bfloat16', result_dtype='float32'),
  }
  jax_bf16_bf16 = common.matmul_gflops(dtype='bfloat16')
  rates['torch'] = peer.torch_matmul_gflops()
  torch_bf16 = peer.torch_matmul_gflops(dtype='bfloat16')
  step_flops = flops.train_step_flops(config, FLAGS.latents)
  print(
    f'{datetime.date.today()}, {os.cpu_count()} cores, jax {jax.__version__}, torch '
    f'{torch_version} ({threads} threads); M = {FLAGS.context}, N = {FLAGS.latents}, batch '
    f'{FLAGS.batch}; {step_flops / 1e9:.0f} GFLOP per step (flops.train_step_flops)\n'
    f'plain 2048^2 matmul, GFLOP/s: JAX f32 {rates["float32"]:.0f}, JAX bf16 -> f32 '
    f'{rates["bfloat16"]:.0f}, JAX bf16 -> bf16 {jax_bf16_bf16:.0f}, torch f32 '
    f'{rates["torch"]:.0f}, torch bf16 {torch_bf16:.0f}\n'
  )
  print(
    '| implementation | s / step (median) | speed vs lucidrains | GFLOP/s | plain matmul '
    'of its framework, GFLOP/s | step / plain matmul |'
  )
  print('|---|---:|---:|---:|---:|---:|')
  for name, (_, kind) in steps.items():
    seconds, rate = medians[name], step_flops / medians[name] / 1e9
    print(
      f'| {name} | {seconds:.3f} | {peer_s / seconds:.2f} | {rate:.0f} | {rates[kind]:.0f} | '
      f'{rate / rates[kind]:.0%} |'
    )
  if not FLAGS.profile:
    return
  classes = {}
  for name, (step, kind) in steps.items():
    if kind == 'torch':
      classes[name] = op_profile.torch_classes(step)
    else:
      classes[name] = op_profile.jax_classes(step, step.compiled.as_text())
  print('\nms per step by op class (wall-clock shares, one profiled pair of steps each):\n')
  print('| op class | ' + ' | '.join(classes) + ' |')
  print('|---|' + '---:|' * len(classes))
  for cls in (*op_profile.CLASSES, 'total'):
    cells = [sum(c.values()) if cls == 'total' else c.get(cls, 0.0) for c in classes.values()]
    print(f'| {cls} | ' + ' | '.join(f'{ms:.0f}' for ms in cells) + ' |')


if __name__ == '__main__':
  app.run(main)
