"""The names of the model's switchable settings, importable without JAX.

`config_lib.validate` checks a config against them before anything imports jax, so that a
bad setting stops `launch.py` in a fraction of a second; the modules that implement the
settings (attention_kernels, models/backbone) take their names from here.
"""

ATTENTION_IMPLS = ('auto', 'einsum', 'xla', 'cudnn', 'chunked')  # see attention_kernels
POSITION_ENCODINGS = ('rotary', 'absolute')
REMAT_NAMES = ('none', 'block', 'dots')  # see models.REMAT_POLICIES
