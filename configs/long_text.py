"""Perceiver AR with a long window whose cross-attend also finds the prefix by content: n-gram
match heads of 4, 8 and 16 bytes (perceiver_ar_vl/layers/match.py) beside the usual heads,
N = fixed_512's latents of the preset, the window 4 times the preset's (named_runs.py).

A match head averages, over every earlier place in the window where the latent's last k bytes
occurred, what came next: an n-gram estimate over the whole window (the kind of statistic
PPM-style compressors use), which the cross-attend's single-byte keys cannot form.

Run on a local text file (2 CPU cores; `:smoke` is the synthetic copy task):
  python launch.py --config=configs/long_text.py:cpu --workdir=/tmp/long_text \
    --config.data.path=FILE
Equal training time against the strategy runs (the table in docs/match_heads.md):
  python -m perceiver_ar_vl.experiments --preset=cpu --budget=seconds \
    --runs=fixed_512,curriculum,long_text --out=results/long_text --data_path=... \
    --heldout_path=...

Presets (`:smoke`, `:cpu`, `:cpu_long`, none = `:gpu`) as the other runs
(perceiver_ar_vl/config_defaults.py), then the window x 4 and the match heads.
"""

from perceiver_ar_vl import config_lib


def get_config(arg=None):
  # The run is declared in perceiver_ar_vl/named_runs.py (RUN_SETTINGS), so an installed
  # package has it too; this file is its command-line name.
  return config_lib.strategy_config('long_text', arg)
