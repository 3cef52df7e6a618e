"""The decoder-only Transformer baseline: same blocks, every position scored.

Run (seed experiment, GPU; enwik8 is downloaded once, or pass --config.data.path=enwik8.zip):
  python launch.py --config=configs/transformer.py --workdir=/tmp/transformer
Smoke (tiny model, synthetic copy task, under 2 minutes on a 2-core CPU):
  python launch.py --config=configs/transformer.py:smoke --workdir=/tmp/transformer_smoke
CPU on real text (about 15 minutes on 2 cores):
  python launch.py --config=configs/transformer.py:cpu --workdir=/tmp/transformer_cpu \
    --config.data.path=FILE
Expected: README "Results" holds the measured figures of this strategy at the `cpu` preset
(2026-11-23); the GPU preset is not measured yet.
"""

from perceiver_ar_vl import config_lib


def get_config(arg=None):
  return config_lib.strategy_config('transformer', arg)
