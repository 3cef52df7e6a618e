"""The decoder-only Transformer baseline: the same blocks, every position a query in every
layer and scored (latents.max = the window).

Run (seed experiment, GPU; enwik8 is downloaded once, or pass --config.data.path=enwik8.zip):
  python launch.py --config=configs/transformer.py --workdir=/tmp/transformer
Smoke (tiny model, synthetic copy task, under 2 minutes on a 2-core CPU):
  python launch.py --config=configs/transformer.py:smoke --workdir=/tmp/transformer_smoke
CPU on real text (about 15 minutes on 2 cores):
  python launch.py --config=configs/transformer.py:cpu --workdir=/tmp/transformer_cpu \
    --config.data.path=FILE
Expected: docs/results.md holds the measured figures of this strategy at the `cpu` preset
(2026-11-23); the GPU preset is not measured yet.

Presets (`:smoke`, `:cpu`, `:cpu_long`, none = `:gpu`): perceiver_ar_vl/config_defaults.py
(PRESET_SETTINGS) and the README's table. Latent counts are in seed units (window 1024).
"""

from perceiver_ar_vl import config_lib


def get_config(arg=None):
  # The run is declared in perceiver_ar_vl/named_runs.py (RUN_SETTINGS), so an installed
  # package has it too; this file is its command-line name.
  return config_lib.strategy_config('transformer', arg)
