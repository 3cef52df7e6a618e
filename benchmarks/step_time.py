"""Train-step time and compiled memory per latent bucket, against the Transformer baseline
and ECP, plus the attention kernels and cached vs uncached sampling; a table of ratios.

  python benchmarks/step_time.py                      # the :cpu preset model (window 256)
  python benchmarks/step_time.py --preset=gpu --batch=32 --dtype=bfloat16
  python benchmarks/step_time.py --sampling_only      # cached vs uncached sampling only
  python benchmarks/step_time.py --sampling_only --sampling_models=ecp   # ECP's only

Sampling (Perceiver AR and ECP, `--sampling_models`): N = latents.max, --sample_length bytes
(512) after a --sample_prompt-byte prompt (256), batch 1; the median of --repeats calls per
path after a warm-up call that compiles.

All figures come from one run on one machine; on a shared CPU read the ratios, not the times.
"""

import statistics
import time

import common
import jax
import numpy as np
from absl import app, flags

from perceiver_ar_vl import config_lib, sampling

flags.DEFINE_string('preset', 'cpu', 'Config preset whose model is measured (smoke, cpu, gpu).')
flags.DEFINE_integer('batch', 8, 'Windows per train step.')
flags.DEFINE_integer('repeats', 5, 'Timed steps per row (after one warm-up step).')
flags.DEFINE_string('dtype', 'float32', 'Compute dtype (float32 or bfloat16).')
flags.DEFINE_integer('sample_length', 512, 'Bytes generated per sampling call.')
flags.DEFINE_integer('sample_prompt', 256, 'Prompt bytes before them.')
flags.DEFINE_bool('sampling_only', False, 'Skip the train-step tables; time sampling only.')
flags.DEFINE_list(
  'sampling_models', ['perceiver_ar', 'ecp'], 'Models of the sampling tables: perceiver_ar, ecp.'
)
FLAGS = flags.FLAGS


def time_train_step(config, bucket: int, impl: str | None = None) -> tuple[float, int]:
  """Median seconds of one jitted train step at `bucket`, and its compiled memory in bytes."""
  stats = common.time_train_step(config, bucket, FLAGS.repeats, impl)
  return stats.seconds, stats.total_bytes


def time_sampling(config, length: int, prompt_len: int, **knobs) -> tuple[float, float]:
  """Median seconds of `sampling.sample` generating `length` bytes after a `prompt_len`-byte
  prompt at N = latents.max, (uncached, cached). Each path's first call compiles and is not
  timed; the timed calls alternate between the paths, so load on a shared machine hits both.
  """
  model = config_lib.create_model(config)
  variables = model.init_variables(jax.random.PRNGKey(0))
  prompt = np.random.default_rng(0).integers(ord('a'), ord('z') + 1, (1, prompt_len))
  kwargs = dict(length=length, num_latents=config.latents.max, **knobs)
  times = {False: [], True: []}
  for repeat in range(FLAGS.repeats + 1):
    for cached in (False, True):
      start = time.perf_counter()
      sampling.sample(model, variables, prompt, cached=cached, **kwargs)
      if repeat:  # repeat 0 is the warm-up call that compiles
        times[cached].append(time.perf_counter() - start)
  return statistics.median(times[False]), statistics.median(times[True])


def train_step_tables(perceiver, transformer, ecp) -> None:
  """The train-step table (per bucket, against the Transformer and ECP) and the kernel table."""
  m = perceiver.model
  base_seconds, base_memory = time_train_step(transformer, transformer.model.max_context)
  print(
    '\n| model | latents (bucket) | ms / step | time vs Transformer | '
    'memory (MiB) | memory vs Transformer |'
  )
  print('|---|---:|---:|---:|---:|---:|')
  rows = [('Transformer', m.max_context, base_seconds, base_memory)]
  rows.append(
    (f'ECP (segments of {ecp.model.ecp_segment_length})', m.max_context)
    + time_train_step(ecp, m.max_context)
  )
  for bucket in perceiver.latents.buckets:
    rows.append(('Perceiver AR', bucket, *time_train_step(perceiver, bucket)))
  for name, bucket, seconds, memory in rows:
    print(
      f'| {name} | {bucket} | {1e3 * seconds:.1f} | {seconds / base_seconds:.2f} | '
      f'{memory / 2**20:.1f} | {memory / base_memory:.2f} |'
    )

  bucket = perceiver.latents.max
  einsum_seconds, _ = time_train_step(perceiver, bucket, 'einsum')
  print(f'\n| attention kernel (Perceiver AR, bucket {bucket}) | ms / step | vs einsum |')
  print('|---|---:|---:|')
  impls = ('einsum', 'xla', 'chunked', 'auto') + (
    ('cudnn',) if jax.default_backend() == 'gpu' else ()
  )
  for impl in impls:
    seconds = einsum_seconds if impl == 'einsum' else time_train_step(perceiver, bucket, impl)[0]
    print(f'| {impl} | {1e3 * seconds:.1f} | {seconds / einsum_seconds:.2f} |')


def sampling_table(config, name: str) -> None:
  """Cached against uncached sampling of one model (`name` labels it), for three filter
  settings."""
  length, prompt_len = FLAGS.sample_length, FLAGS.sample_prompt
  print(
    f'\n| sampling, {name} ({length} bytes after a {prompt_len}-byte prompt) | '
    'uncached bytes / s | cached bytes / s | cached vs uncached |'
  )
  print('|---|---:|---:|---:|')
  s = config.sample
  settings = (
    (f'temperature {s.temperature}, top-p {s.top_p} (config.sample)', s.temperature, s.top_p),
    ('temperature 1 (no filter)', 1.0, 1.0),
    ('greedy (temperature 0)', 0.0, 1.0),
  )
  for label, temperature, top_p in settings:
    uncached, cached = time_sampling(
      config, length, prompt_len, temperature=temperature, top_k=0, top_p=top_p
    )
    print(
      f'| {label} | {length / uncached:.1f} | {length / cached:.1f} | {uncached / cached:.1f}x |'
    )


def main(argv):
  del argv
  perceiver = config_lib.strategy_config('fixed_512', FLAGS.preset)
  transformer = config_lib.strategy_config('transformer', FLAGS.preset)
  ecp = config_lib.strategy_config('ecp', FLAGS.preset)
  for c in (perceiver, transformer, ecp):
    c.train.batch_size = FLAGS.batch
    c.model.dtype = FLAGS.dtype
    c.model.dropout_rate = 0.0
  m = perceiver.model
  print(
    f'Model: {m.num_layers} layers, d_model {m.d_model}, window {m.max_context}, batch '
    f'{FLAGS.batch}, {FLAGS.dtype}, {jax.devices()[0].device_kind}'
  )
  if not FLAGS.sampling_only:
    train_step_tables(perceiver, transformer, ecp)
  if 'perceiver_ar' in FLAGS.sampling_models:
    sampling_table(perceiver, f'Perceiver AR (N = {perceiver.latents.max})')
  if 'ecp' in FLAGS.sampling_models:
    sampling_table(ecp, f'ECP (segments of {ecp.model.ecp_segment_length})')


if __name__ == '__main__':
  app.run(main)
