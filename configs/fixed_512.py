"""Perceiver AR, strategy 'fixed_512': N = 512 latents every step.

Run (seed experiment, GPU; enwik8 is downloaded once, or pass --config.data.path=enwik8.zip):
  python launch.py --config=configs/fixed_512.py --workdir=/tmp/fixed_512
Smoke (tiny model, synthetic copy task, under 2 minutes on a 2-core CPU):
  python launch.py --config=configs/fixed_512.py:smoke --workdir=/tmp/fixed_512_smoke
CPU on real text (about 15 minutes on 2 cores):
  python launch.py --config=configs/fixed_512.py:cpu --workdir=/tmp/fixed_512_cpu \
    --config.data.path=FILE
Expected: README "Results" holds the measured figures of this strategy at the `cpu` preset
(2026-11-23); the GPU preset is not measured yet.
"""

from perceiver_ar_vl import config_lib


def get_config(arg=None):
  return config_lib.strategy_config('fixed_512', arg)
