"""Perceiver AR, latent strategy 'curriculum' with the stepwise schedule: N climbs from 64 to
512 bucket by bucket over the first half of training, equal time on each stage.

Run (seed experiment, GPU; enwik8 is downloaded once, or pass --config.data.path=enwik8.zip):
  python launch.py --config=configs/curriculum_stepwise.py --workdir=/tmp/curriculum_stepwise
Smoke (tiny model, synthetic copy task, under 2 minutes on a 2-core CPU):
  python launch.py --config=configs/curriculum_stepwise.py:smoke \
    --workdir=/tmp/stepwise_smoke
CPU on real text:
  python launch.py --config=configs/curriculum_stepwise.py:cpu --workdir=/tmp/stepwise_cpu \
    --config.data.path=FILE

Presets (`:smoke`, `:cpu`, `:cpu_long`, none = `:gpu`): perceiver_ar_vl/config_defaults.py
(PRESET_SETTINGS) and the README's table. Latent counts are in seed units (window 1024).
"""

from perceiver_ar_vl import config_lib


def get_config(arg=None):
  # The run is declared in perceiver_ar_vl/named_runs.py (RUN_SETTINGS), so an installed
  # package has it too; this file is its command-line name.
  return config_lib.strategy_config('curriculum_stepwise', arg)
