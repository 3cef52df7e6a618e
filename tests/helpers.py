"""Tiny models and configs shared by the tests (CPU, seconds per run), and how to run
launch.py as a subprocess."""

import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from perceiver_ar_vl import config_choices, config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_WINDOW = 48
# A 3-layer, d_model 32 model: big enough to have a latent stack, small enough to compile fast.
TINY_MODEL = dict(
  vocab_size=256,
  num_layers=3,
  num_heads=4,
  d_model=32,
  mlp_dim=64,
  max_context=TINY_WINDOW,
  dropout_rate=0.0,
)


def tiny_config(strategy: str = 'curriculum', steps: int = 24, model_type: str = 'perceiver_ar'):
  """A ~20k-parameter model on the copy task with a 32-byte window; unlocked for edits."""
  full_window = config_choices.MODEL_TYPES[model_type].scores_every_position
  c = config_lib.make_config(
    'smoke',
    name=f'tiny_{strategy}',
    strategy=strategy,
    min_latents=256,
    max_latents=1024 if full_window else 512,
    model_type=model_type,
  )
  c.model.update(num_layers=2, num_heads=2, d_model=16, mlp_dim=32, max_context=32)
  c.latents.update(min=4, max=32 if full_window else 16, buckets=(4, 8, 16, 32))
  c.model.ecp_segment_length = 8
  c.data.copy_length = 16
  c.train.update(
    steps=steps,
    batch_size=4,
    learning_rate=1e-2,
    warmup_steps=2,
    log_every=1,
    checkpoint_every=8,
    eval_every=0,
    eval_max_bytes=256,
  )
  c.eval.update(max_bytes=256, batch_size=4, latents_sweep=())
  c.sample.update(length=8)
  return c


# launch.py overrides for a ~10k-parameter model (window 32) on the smoke preset's copy task:
# a 2-step run takes seconds. Commands that restore its checkpoint must pass the same ones.
TINY_LAUNCH_ARGS = (
  '--config.model.num_layers=1',
  '--config.model.num_heads=2',
  '--config.model.d_model=16',
  '--config.model.mlp_dim=16',
  '--config.model.max_context=32',
  '--config.latents.min=16',  # N = 16 from step 0: one train-step compile
  '--config.latents.max=16',
  '--config.latents.buckets=(8,16)',
  '--config.train.batch_size=2',
  '--config.train.log_every=1',
  '--config.train.eval_max_bytes=256',
  '--config.eval.latents_sweep=()',
  '--config.eval.max_bytes=256',
  '--config.sample.length=4',
)


def launch_command(*args: str, module: str = '') -> list[str]:
  """`python launch.py ARGS` (or `python -m MODULE ARGS`), run from the repository root."""
  entry = ['-m', module] if module else [os.path.join(REPO, 'launch.py')]
  return [sys.executable, *entry, *args]


def compilation_cache_env() -> dict[str, str]:
  """The JAX_* variables that point a subprocess at this session's persistent compilation
  cache (conftest.py), so it loads the programs an earlier process compiled."""
  cache = jax.config.jax_compilation_cache_dir
  if not cache:
    return {}
  return {
    'JAX_COMPILATION_CACHE_DIR': cache,
    'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
    'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0',
  }


def launch_env() -> dict[str, str]:
  """The test environment for a subprocess: CPU only, conftest's two simulated devices, the
  session's compilation cache."""
  return {**os.environ, 'JAX_PLATFORMS': 'cpu', **compilation_cache_env()}


def embedding_influence(apply_fn, length: int, d_model: int) -> np.ndarray:
  """[S, M] |d (sum of output slot s's logits) / d (embedding at position t)|, summed over
  channels, for every slot at once: `apply_fn()` runs the model on one window of `length`
  while an interceptor adds a perturbation to the embedding module's output."""

  def apply_with_delta(delta_1xMxD):
    def add_delta(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name == '__call__' and context.module.name == 'embed':
        out = out + delta_1xMxD
      return out

    with nn.intercept_methods(add_delta):
      return apply_fn()

  jacobian_SxMxD = jax.jit(jax.jacrev(lambda d: apply_with_delta(d)[0].sum(-1)))(
    jnp.zeros((1, length, d_model))
  )[:, 0]
  return np.abs(np.asarray(jacobian_SxMxD)).sum(-1)


def tensorboard_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} of every scalar in the TensorBoard event files in `logdir`
  (TFRecord framing: length, its CRC, an Event proto, its CRC)."""
  import glob
  import struct

  from tensorboardX.proto import event_pb2

  found: dict[str, list[tuple[int, float]]] = {}
  for path in sorted(glob.glob(os.path.join(str(logdir), 'events.out.tfevents.*'))):
    with open(path, 'rb') as f:
      data = f.read()
    at = 0
    while at + 12 <= len(data):
      (length,) = struct.unpack('<Q', data[at : at + 8])
      event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
      at += 12 + length + 4
      for value in event.summary.value:
        found.setdefault(value.tag, []).append((event.step, value.simple_value))
  return found
