"""Perceiver AR, latent strategy 'curriculum': N grows linearly from 64 to 512 over the first
half of training (`--config.latents.schedule=stepwise` climbs bucket by bucket).

Run (seed experiment, GPU; enwik8 is downloaded once, or pass --config.data.path=enwik8.zip):
  python launch.py --config=configs/curriculum.py --workdir=/tmp/curriculum
Smoke (tiny model, synthetic copy task, under 2 minutes on a 2-core CPU):
  python launch.py --config=configs/curriculum.py:smoke --workdir=/tmp/curriculum_smoke
CPU on real text (about 15 minutes on 2 cores):
  python launch.py --config=configs/curriculum.py:cpu --workdir=/tmp/curriculum_cpu \
    --config.data.path=FILE
Expected (measured 2026-11-23 on a 2-core CPU): `:smoke` takes about 50 s, training bits per
byte fall from ~4.5 to ~2.3 and validation reaches ~2.15 bits per byte (the copy task's floor is
2.0: half of its bytes are random); `:cpu` on three Canterbury books, validated on the fourth,
trains 2000 steps in ~10 min, training bits per byte fall from 8.0 to ~2.0 and validation (the
held-out book) from 3.85 at step 250 to ~3.28. The GPU preset is not measured yet.

Presets (`:smoke`, `:cpu`, `:cpu_long`, none = `:gpu`): perceiver_ar_vl/config_defaults.py
(PRESET_SETTINGS) and the README's table. Latent counts are in seed units (window 1024).
"""

from perceiver_ar_vl import config_lib


def get_config(arg=None):
  # The run is declared in perceiver_ar_vl/named_runs.py (RUN_SETTINGS), so an installed
  # package has it too; this file is its command-line name.
  return config_lib.strategy_config('curriculum', arg)
