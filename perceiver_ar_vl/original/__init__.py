"""The bridge for users of google-research/perceiver-ar (the original, Haiku).

  * `from_haiku(params, **constructor_kwargs) -> (model, variables)`: our Flax module set up to
    compute the original `PerceiverAR(**constructor_kwargs)`'s function, and its variables;
  * `config_from_kwargs(**constructor_kwargs)`: the same model as a config of this library;
  * `load_checkpoint(path)`: the parameters of one of the original's `checkpoint.dill` files,
    read with a restricted unpickler that never runs code;
  * `SWEEPS` / `sweep_kwargs(name)`: the model keyword arguments of the original's public
    sweeps (`random_mirrored_32`, `random_mirrored_131072`, `imagenet_w_positions`);
  * `python -m perceiver_ar_vl.original --checkpoint=PATH --sweep=NAME --workdir=W`
    (`workdir.write_workdir`): a checkpoint as a workdir that `launch.py --mode=eval` and
    `--mode=sample` read, its ids and positions relabelled for byte data (`relabel`).

docs/from_original.md says what differs and how the equivalence is tested.
"""

from perceiver_ar_vl.original.checkpoint import UnsafeCheckpointError, load_checkpoint
from perceiver_ar_vl.original.convert import config_from_kwargs, from_haiku
from perceiver_ar_vl.original.sweeps import SWEEPS, sweep_kwargs

__all__ = [
  'SWEEPS',
  'UnsafeCheckpointError',
  'config_from_kwargs',
  'from_haiku',
  'load_checkpoint',
  'sweep_kwargs',
]
