"""ECP (Mahmood & Huang 2024): every position is a query in every layer, attention over the
previous and the own segment of m = window / 8 bytes; same width/depth as the other configs.
The authors' choices: --config.model.ecp_shared_kv=True
--config.model.ecp_rotary_first_layer_only=True --config.model.ecp_segment0_out=True

Run (seed experiment, GPU; enwik8 is downloaded once, or pass --config.data.path=enwik8.zip):
  python launch.py --config=configs/ecp.py --workdir=/tmp/ecp
Smoke (tiny model, synthetic copy task, about a minute on a 2-core CPU):
  python launch.py --config=configs/ecp.py:smoke --workdir=/tmp/ecp_smoke
CPU on real text:
  python launch.py --config=configs/ecp.py:cpu --workdir=/tmp/ecp_cpu --config.data.path=FILE
Expected: docs/ecp.md holds the measured figures at the `cpu` preset; GPU is not measured.

Presets (`:smoke`, `:cpu`, `:cpu_long`, none = `:gpu`): perceiver_ar_vl/config_defaults.py
(PRESET_SETTINGS) and the README's table. Latent counts are in seed units (window 1024).
"""

from perceiver_ar_vl import config_lib


def get_config(arg=None):
  # The run is declared in perceiver_ar_vl/named_runs.py (RUN_SETTINGS), so an installed
  # package has it too; this file is its command-line name.
  return config_lib.strategy_config('ecp', arg)
