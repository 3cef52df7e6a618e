"""The config with its defaults (the seed experiment; keys and types declared in `spec`)
and what each preset changes; `presets` builds configs from these."""

from __future__ import annotations

import ml_collections

from perceiver_ar_vl import spec


def base_config() -> ml_collections.ConfigDict:
  """Every config key with its default: the seed experiment (enwik8, window 1024, GPU). The
  keys, their types and what each means are declared once, in `spec.py`."""
  return spec.to_config(spec.RunSpec())


# What each preset changes in the base config (the seed experiment); `window` is
# model.max_context. Latent counts, buckets and the ECP segment length then scale with it.
PRESET_SETTINGS = {
  '': {'model.dtype': 'bfloat16'},  # the seed experiment, on a GPU
  'gpu': {'model.dtype': 'bfloat16'},
  'cpu': {
    'data.name': 'text_file',
    'model': dict(num_layers=4, num_heads=4, d_model=128, mlp_dim=512, max_context=256),
    'model.dropout_rate': 0.0,
    'train': dict(
      steps=2_000,
      batch_size=16,
      learning_rate=2e-3,
      warmup_steps=100,
      log_every=50,
      checkpoint_every=500,
      eval_every=250,
      eval_max_bytes=16_384,
    ),
    'eval': dict(latents_sweep=(8, 16, 32, 64, 128, 256), max_bytes=65_536),
  },
  'smoke': {
    'data.name': 'copy',
    'model': dict(num_layers=2, num_heads=4, d_model=64, mlp_dim=128, max_context=128),
    'model.dropout_rate': 0.0,
    'train': dict(
      steps=800,
      batch_size=16,
      learning_rate=3e-3,
      warmup_steps=50,
      log_every=50,
      checkpoint_every=200,
      eval_every=0,
      eval_max_bytes=8_192,
      z_loss=0.0,
    ),
    'eval': dict(latents_sweep=(8, 16, 32, 64, 128), max_bytes=8_192, batch_size=8),
    'sample': dict(length=64, prompt='abcdefgh', temperature=0.0),
  },
}
# 'cpu_long': the 'cpu' preset with a 4096-byte window; each evaluation window costs its
# whole cross-attend, so fewer latent counts are scored.
PRESET_SETTINGS['cpu_long'] = {
  **PRESET_SETTINGS['cpu'],
  'model': {**PRESET_SETTINGS['cpu']['model'], 'max_context': 4096},
  'eval': {**PRESET_SETTINGS['cpu']['eval'], 'latents_sweep': (32, 128, 256)},
}
