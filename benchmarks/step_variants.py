"""The seed train step compiled several ways in one process and timed alternately: which
attention kernel, chunked-kernel block sizes or XLA:CPU compile options pay on this machine.

  python benchmarks/step_variants.py --impls=chunked,einsum,xla
  python benchmarks/step_variants.py --blocks=1024x512,128x1024,chunked:128x128
  python benchmarks/step_variants.py --options='fast_math:xla_cpu_enable_fast_math=true'
  python benchmarks/step_variants.py --dtype=bfloat16 --impls=chunked

Every variant is compared with `default` (the config as it is: attention_impl `auto`, the
chunked kernel's 1024 x 1024 blocks, no options), compiled in the same process as training
compiles it (`step_cost.compiled_train_step`; options through `Lowered.compile
(compiler_options=...)`), so all see the same machine load: `--rounds` rounds of `--repeats`
steps of each, medians compared. Options that XLA accepts only in `XLA_FLAGS` (lists such as
`--xla_cpu_experimental_ynn_fusion_type`) need alternating processes instead:
`XLA_FLAGS=... python benchmarks/step_variants.py` against a plain run, several rounds.
Shapes as `vs_lucidrains.py`: the seed model, M = 1024, N = 256, batch 8.
"""

from __future__ import annotations

import datetime
import os

import common
import jax
from absl import app, flags

from perceiver_ar_vl import spec
from perceiver_ar_vl.experiments import step_cost
from perceiver_ar_vl.layers import chunked

flags.DEFINE_integer('context', 1024, 'Window M.')
flags.DEFINE_integer('latents', 256, 'Latents N.')
flags.DEFINE_integer('batch', 8, 'Windows per step.')
flags.DEFINE_string('dtype', 'float32', 'model.dtype.')
flags.DEFINE_list('impls', [], 'model.attention_impl values to compare.')
flags.DEFINE_list(
  'blocks',
  [],
  'Chunked-kernel blocks, QxK (queries x keys), e.g. 1024x256; IMPL:QxK (chunked:128x128) '
  'also sets model.attention_impl.',
)
flags.DEFINE_multi_string('options', [], "'name:key=value;key=value' XLA compile options.")
flags.DEFINE_integer('rounds', 4, 'Alternating rounds.')
flags.DEFINE_integer('repeats', 2, 'Timed steps per round and variant.')
FLAGS = flags.FLAGS


def option_value(text: str):
  """'true' / 'false' / an int / a string, as XLA's option of that name takes it."""
  lowered = text.lower()
  if lowered in ('true', 'false'):
    return lowered == 'true'
  return int(text) if text.lstrip('-').isdigit() else text


def variants() -> dict[str, dict]:
  """{name: {'impl', 'blocks', 'options'}}: `default` first, then one per flag value."""
  out = {'default': {}}
  out.update({f'attention_impl={i}': {'impl': i} for i in FLAGS.impls})
  for b in FLAGS.blocks:
    impl, _, size = b.rpartition(':')
    q, k = (int(x) for x in size.split('x'))
    name = f'attention_impl={impl}, blocks {q}x{k}' if impl else f'blocks {q}x{k}'
    out[name] = {'blocks': (q, k), 'impl': impl or None}
  for o in FLAGS.options:
    name, _, pairs = o.partition(':')
    items = (pair.split('=', 1) for pair in pairs.split(';'))
    out[name] = {'options': {key: option_value(value) for key, value in items}}
  return out


def build(config: spec.RunSpec, variant: dict):
  """The compiled step of one variant (block sizes are read when the step is traced)."""
  defaults = chunked.DEFAULT_BLOCK_Q, chunked.DEFAULT_BLOCK_K
  chunked.DEFAULT_BLOCK_Q, chunked.DEFAULT_BLOCK_K = variant.get('blocks', defaults)
  try:
    return step_cost.compiled_train_step(
      config, FLAGS.latents, variant.get('impl'), variant.get('options')
    )[0]
  finally:
    chunked.DEFAULT_BLOCK_Q, chunked.DEFAULT_BLOCK_K = defaults


def main(argv):
  del argv
  config = common.seed_model_config(FLAGS.context, FLAGS.batch)
  config.model.dtype = FLAGS.dtype
  config = spec.from_config(config)
  steps = {name: build(config, v) for name, v in variants().items()}
  medians = common.alternating_medians(steps, FLAGS.rounds, FLAGS.repeats)
  print(
    f'{datetime.date.today()}, {os.cpu_count()} cores, jax {jax.__version__}, '
    f'{jax.devices()[0].device_kind}; {FLAGS.dtype}, M = {FLAGS.context}, N = {FLAGS.latents}, '
    f'batch {FLAGS.batch}; plain 2048^2 float32 matmul {common.matmul_gflops():.0f} GFLOP/s; '
    f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}\n'
  )
  print('| variant | s / step (median) | speed vs default |')
  print('|---|---:|---:|')
  for name, seconds in medians.items():
    print(f'| {name} | {seconds:.3f} | {medians["default"] / seconds:.3f} |')


if __name__ == '__main__':
  app.run(main)
