"""Perceiver AR on the copy task over long distances: each L-byte example is L/2 random symbols
and their copy, so predicting a second half means reading L/2 bytes back (docs/long_copy.md).

Presets (no preset: an error; these are CPU recipes; 2 layers, d_model 128, 2 heads, N = 256):
  :smoke  the plain model: window M = 1024, copy distance 512, 600 steps. Measured
          (2026-12-02, 2 CPU cores): chance until step ~200, copy_bits <= 0.1 from step 255
          (1.0 minute of training); evaluated: copy_bits 0.019, fresh_bits 4.05 (floor 4);
          benchmarks/long_copy.py reproduces 1024 of 1024 sampled bytes. A fixed offset: at
          chance at every other distance.
  :cpu    content lookup: an 8-gram match head and no rotary in the cross-attend, trained at a
          1,024-byte window (window.schedule 'fixed') on copies drawn 32..512 bytes back, with
          model.max_context 131072; evaluated at windows 1024..131072 (copy distance 512..65536).
          Measured (2026-12-07, 2 CPU cores, jax 0.10.2): 600 steps in 231 s; copy_bits 0.0697
          (d 512), 0.0177 (d 4096), 0.0116 (d 32768), 0.0111 (d 65536, window 131072); fresh
          bits 4.001-4.010; greedy predictions miss 19 of 131,072 copies at d 65536;
          benchmarks/long_copy.py --given=8 samples 1024 of 1024 bytes from 65,536 back.

Run, evaluate (copy_bits / fresh_bits per window in eval.json) and sample the copies back:
  python launch.py --config=configs/long_copy.py:cpu --workdir=/tmp/long_copy_cpu
  python launch.py --config=configs/long_copy.py:cpu --workdir=/tmp/long_copy_cpu --mode=eval
  python benchmarks/long_copy.py --workdir=/tmp/long_copy_cpu --examples=1 --bytes=65536

Why the plain model stops at ~2k bytes and what the match head changes: docs/long_copy.md and
docs/match_heads.md.
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
