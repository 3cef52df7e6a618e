"""Writes tests/data/original_golden.npz (and original_checkpoint.dill) from the original
google-research/perceiver-ar model code, for tests/test_original.py.

Not run in CI. It runs the original's `perceiver_ar/perceiver_ar_model.py` from a local clone
(nothing is fetched) in a virtual environment of its own, since the original needs dm-haiku
and chex, which this project does not depend on:

  python3 -m venv /tmp/orig && /tmp/orig/bin/pip install dm-haiku chex flax optax dill numpy
  git clone https://github.com/google-research/perceiver-ar /tmp/perceiver-ar  # cc756f5
  /tmp/orig/bin/python tools/original_golden.py --original=/tmp/perceiver-ar

For each configuration below it builds the original's `PerceiverAR(**kwargs)`, randomises
every parameter (z_linear, LayerNorms and the zero-initialised logits layer included; values
are rounded to float16 so the npz stores them exactly at half the size), and records the
original's `input_events_logits` for random tokens at two latent counts, with
`use_positions_from_data=True`, positions 0..M-1 and `is_training=False`. It also writes one
checkpoint the way the original's experiment.py does (a dill pickle of global_step, params,
state and an Adam opt_state), for `original.load_checkpoint`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

# name -> (constructor kwargs, window M, latent counts scored)
CONFIGS = {
  'rotary_quarter': (
    dict(
      num_classes=259,
      position_encoding_type='rotary',
      fraction_to_rotate=0.25,
      max_wavelength=64,
      num_z_channels=32,
      input_embed_dim=32,
      num_cross_attend_heads=4,
      num_transformer_heads=4,
      cross_attend_widening_factor=1,
      transformer_widening_factor=1,
      num_transformers_per_block=2,
      activation_name='sq_relu',
    ),
    48,
    (16, 8),
  ),
  'rotary_full_heads_differ': (
    dict(
      num_classes=64,
      position_encoding_type='rotary',
      fraction_to_rotate=1.0,
      max_wavelength=100,
      num_z_channels=32,
      input_embed_dim=32,
      num_cross_attend_heads=1,
      num_transformer_heads=2,
      cross_attend_widening_factor=4,
      transformer_widening_factor=2,
      num_transformers_per_block=1,
      activation_name='gelu',
    ),
    40,
    (12, 5),
  ),
  'sinusoidal': (
    dict(
      num_classes=100,
      position_encoding_type='absolute',
      position_encoding='sinusoidal',
      input_idx_size=[41],
      num_z_channels=32,
      input_embed_dim=32,
      num_cross_attend_heads=2,
      num_transformer_heads=4,
      cross_attend_widening_factor=2,
      transformer_widening_factor=1,
      num_transformers_per_block=1,
      activation_name='relu',
    ),
    40,
    (10, 4),
  ),
  'learned_positions': (
    dict(
      num_classes=259,
      position_encoding_type='absolute',
      position_encoding='random',
      learnable_position_embeddings=True,
      input_idx_size=[32],
      num_z_channels=32,
      input_embed_dim=32,
      num_cross_attend_heads=4,
      num_transformer_heads=2,
      cross_attend_widening_factor=2,
      transformer_widening_factor=1,
      num_transformers_per_block=1,
      activation_name='sq_relu',
    ),
    32,
    (8, 3),
  ),
  'rotary_half_checkpoint': (  # also written as original_checkpoint.dill
    dict(
      num_classes=32,
      position_encoding_type='rotary',
      fraction_to_rotate=0.5,
      max_wavelength=16,
      num_z_channels=16,
      input_embed_dim=16,
      num_cross_attend_heads=2,
      num_transformer_heads=2,
      cross_attend_widening_factor=1,
      transformer_widening_factor=2,
      num_transformers_per_block=1,
      activation_name='sq_relu',
    ),
    16,
    (4, 2),
  ),
}
CHECKPOINT_CONFIG = 'rotary_half_checkpoint'
BATCH = 2


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--original', required=True, help='a local clone of perceiver-ar')
  here = os.path.dirname(os.path.abspath(__file__))
  parser.add_argument('--out_dir', default=os.path.join(here, '..', 'tests', 'data'))
  args = parser.parse_args()

  import dill
  import haiku as hk
  import jax
  import jax.numpy as jnp
  import optax

  jnp.DeviceArray = jax.Array  # the original's annotations name the pre-0.4 array type
  sys.path.insert(0, args.original)
  from perceiver_ar import perceiver_ar_model

  arrays, meta = {}, {}
  rng = np.random.default_rng(0)
  for name, (kwargs, window, latent_counts) in CONFIGS.items():
    full = dict(input_idx_size=[window], max_context_length=window, use_positions_from_data=True)
    full.update(kwargs)

    def forward(tokens, idxs, z_index_dim):
      model = perceiver_ar_model.PerceiverAR(**full)  # noqa: B023
      out = model(tokens, idxs, is_training=False, z_index_dim=z_index_dim)
      return out.input_events_logits

    fn = hk.transform_with_state(forward)
    tokens = rng.integers(1, full['num_classes'], (BATCH, window)).astype(np.int32)
    idxs = np.broadcast_to(np.arange(window)[None, :, None], (BATCH, window, 1)).astype(np.int32)
    params, state = fn.init(jax.random.PRNGKey(0), tokens, idxs, latent_counts[0])
    fixed_table = full.get('position_encoding') == 'sinusoidal' and not full.get(
      'learnable_position_embeddings', False
    )
    params = randomised(params, rng, keep=('perceiver_ar/~/embed_1',) if fixed_table else ())
    for i, n in enumerate(latent_counts):
      logits, _ = fn.apply(params, state, jax.random.PRNGKey(1), tokens, idxs, n)
      arrays[f'{name}/logits_{i}'] = np.asarray(logits, np.float32)
    arrays[f'{name}/tokens'] = tokens
    for module, leaves in params.items():
      for leaf, value in leaves.items():
        value = np.asarray(value, np.float32)
        half = value.astype(np.float16)  # exact for the randomised ones
        arrays[f'{name}/params/{module}/{leaf}'] = half if np.array_equal(half, value) else value
    meta[name] = dict(kwargs=full, latent_counts=list(latent_counts))
    print(f'{name}: {sum(v.size for m in params.values() for v in m.values())} parameters')

    if name == CHECKPOINT_CONFIG:  # experiment.py's _save_state_from_in_memory_checkpointer
      params_f32 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), params)
      checkpoint = {
        'global_step': np.int64(1234),
        'params': params_f32,
        'state': state,
        'opt_state': optax.adam(3e-4).init(params_f32),
      }
      with open(os.path.join(args.out_dir, 'original_checkpoint.dill'), 'wb') as f:
        dill.dump(checkpoint, f)

  arrays['meta'] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
  path = os.path.join(args.out_dir, 'original_golden.npz')
  np.savez_compressed(path, **arrays)
  print(f'wrote {path}: {os.path.getsize(path)} bytes')


def randomised(params, rng, keep=()):
  """Every parameter replaced by a random value of a sensible scale, rounded to float16, but
  the modules in `keep` (a fixed sinusoid table is a constant, not a parameter)."""
  out = {}
  for module, leaves in params.items():
    out[module] = {}
    if module in keep:
      out[module] = {leaf: np.asarray(value, np.float32) for leaf, value in leaves.items()}
      continue
    for leaf, value in leaves.items():
      shape = value.shape
      if leaf == 'scale':  # LayerNorm
        new = 1.0 + 0.2 * rng.normal(size=shape)
      elif leaf in ('offset', 'b'):
        new = 0.2 * rng.normal(size=shape)
      elif leaf == 'w':
        new = rng.normal(size=shape) / np.sqrt(shape[0])
      else:  # embeddings
        new = rng.normal(size=shape)
      out[module][leaf] = np.asarray(new, np.float16).astype(np.float32)
  return out


if __name__ == '__main__':
  main()
