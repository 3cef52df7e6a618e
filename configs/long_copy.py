"""Perceiver AR on the copy task over long distances: each L-byte example is L/2 random symbols
and their copy, so predicting a second half means reading L/2 bytes back (docs/long_copy.md).

Presets (no preset: an error; these are CPU recipes):
  :smoke  window M = 1024, copy distance 512 (L = 1024), 600 steps: the copies are learned
          (copy_bits falls from 4 to ~0) in about 2 minutes on 2 CPU cores.
  :cpu    window M = 131072, copy distance 65536 (L = 131072): the recipe measured best on
          2 CPU cores within 30 minutes of training (docs/long_copy.md has the table).

Run, evaluate (copy_bits / fresh_bits in eval.json) and sample the copies back:
  python launch.py --config=configs/long_copy.py:smoke --workdir=/tmp/long_copy_smoke
  python launch.py --config=configs/long_copy.py:smoke --workdir=/tmp/long_copy_smoke --mode=eval
  python benchmarks/long_copy.py --workdir=/tmp/long_copy_smoke

What makes a distance learnable here (measured in docs/long_copy.md): heads of 64 channels
with rotary on all of them (fine relative positions), max_wavelength twice the window, and a
window not much longer than the copy distance (the cross-attend spreads each latent's
attention over every key of the window).
"""

from perceiver_ar_vl import config_defaults, errors

PRESETS = ('smoke', 'cpu')


def get_config(arg=None):
  if arg not in PRESETS:
    raise errors.UserError(
      f'configs/long_copy.py takes a preset: one of {PRESETS}, e.g. configs/long_copy.py:smoke.'
    )
  c = config_defaults.base_config()
  c.name = f'long_copy_{arg}'
  c.data.name = 'copy'
  c.data.copy_mode = 'copy'
  c.model.update(
    type='perceiver_ar',
    num_layers=2,
    num_heads=2,  # 64 channels a head
    d_model=128,
    mlp_dim=256,
    dropout_rate=0.0,
    rotary_fraction=1.0,  # every channel rotates
  )
  c.latents.update(strategy='fixed', min=64, max=64, buckets=(64,))
  c.train.update(
    batch_size=16,
    learning_rate=3e-3,
    warmup_steps=50,
    z_loss=0.0,
    log_every=50,
    eval_every=0,
  )
  c.eval.update(latents_sweep=(), splits=('validation',), batch_size=8)
  c.sample.update(temperature=0.0, prompt='abcdefgh', length=64)
  if arg == 'smoke':
    window = 1024
    c.train.update(steps=600, checkpoint_every=200, eval_max_bytes=8_192)
  else:
    window = 131072
    c.train.update(steps=600, checkpoint_every=100, eval_max_bytes=window)
  c.model.max_context = window
  c.model.max_wavelength = 2.0 * window
  c.data.copy_length = window  # distance window / 2
  c.eval.max_bytes = 2 * window  # two examples: the second has the first as its context
  return c
