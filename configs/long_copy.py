"""Perceiver AR on the copy task over long distances: each L-byte example is L/2 random symbols
and their copy, so predicting a second half means reading L/2 bytes back (docs/long_copy.md).

Presets (no preset: an error; these are CPU recipes):
  :smoke  window M = 1024, copy distance 512 (L = 1024), N = 256, 600 steps. Measured
          (2026-12-02, 2 CPU cores): chance until step ~200, copy_bits <= 0.1 from step 255
          (1.0 minute of training); evaluated: copy_bits 0.019, fresh_bits 4.05 (floor 4);
          benchmarks/long_copy.py reproduces 1024 of 1024 sampled bytes.
  :cpu    window M = 131072, copy distance 65536 (L = 131072), N = 256, batch 8: the first
          half trains on the last 65,792 bytes (distance + N: at distance 2048 such a window
          learned where twice the distance did not), max_wavelength 4 x the window. Measured
          (2026-12-02, 2 CPU
          cores): 276 steps (all at the 65,792-byte window) in 15 minutes of training,
          training bits 4.00-4.01 at every log: not learned (the goal, copy_bits <= 0.1
          within 30 minutes, is not reached; docs/long_copy.md says what limits it).
          benchmarks/long_copy.py on it: 9 of 128 sampled bytes equal the source (7.0%,
          chance 6.25%); cached 47.0 bytes/s against uncached 4.13 bytes/s.

Run, evaluate (copy_bits / fresh_bits in eval.json) and sample the copies back:
  python launch.py --config=configs/long_copy.py:smoke --workdir=/tmp/long_copy_smoke
  python launch.py --config=configs/long_copy.py:smoke --workdir=/tmp/long_copy_smoke --mode=eval
  python benchmarks/long_copy.py --workdir=/tmp/long_copy_smoke

What decides whether a distance is learned in a CPU budget (docs/long_copy.md): heads of 64
channels with rotary on all of them (fine relative positions), a window not much longer than
the distance (each latent's attention is spread over every key of the window until it finds
its source). Distances of 2048 and more were not learned reliably
within 600 steps; 65536 is out of reach on a CPU.
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
  c.latents.update(strategy='fixed', min=256, max=256, buckets=(256,))
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
  if arg == 'smoke':  # the plain model: it learns the one offset it is trained at
    window = 1024
    c.train.update(steps=600, checkpoint_every=200, eval_max_bytes=8_192)
    c.model.max_wavelength = 2.0 * window
    c.data.copy_length = window  # distance window / 2
    c.eval.max_bytes = 2 * window  # two examples: the second has the first as its context
  else:  # content lookup: an 8-gram match head, trained at 1024 bytes, evaluated at 131072
    window = 131072
    c.model.update(match_ngrams=(8,), cross_attend_rotary_fraction=0.0)
    c.window.update(schedule='fixed', min=1024)
    c.data.update(copy_length=window, copy_train_lengths=(64, 1024))
    c.latents.buckets = (256, 1024)
    c.train.update(steps=600, checkpoint_every=200, eval_max_bytes=2_048)
    c.eval.update(windows=tuple(2**k for k in range(10, 18)), num_latents=1024, batch_size=2)
  c.model.max_context = window
  return c
