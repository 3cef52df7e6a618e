"""Reads the original's checkpoints without running code.

The original saves `{'global_step', 'params', 'state', 'opt_state'}` with `dill.dump`
(experiment.py's `_save_state_from_in_memory_checkpointer`) to `.../checkpoint.dill`. A pickle
names the callables that rebuild its objects, and loading one calls them: a file can ask for
`os.system`. `load_checkpoint` reads with an unpickler that admits only what such a
checkpoint holds (containers, scalars, numpy arrays and dtypes; jax arrays and optax's state
tuples are rebuilt as numpy arrays and plain named tuples by functions of this module), and
refuses anything else with a one-line error naming what the file asked for. Neither dill nor
jax nor optax is imported to read it.
"""

from __future__ import annotations

import collections
import os
import pickle
from typing import Any

import numpy as np

from perceiver_ar_vl import errors

try:  # numpy >= 2
  from numpy._core import multiarray as _multiarray
except ImportError:  # numpy 1.x
  from numpy.core import multiarray as _multiarray


class UnsafeCheckpointError(errors.UserError):
  """The pickle asks for something an original checkpoint never holds."""


def _jax_array(rebuild, args, array_state, aval_state=None):
  """jax's `_reconstruct_array`, as a numpy array (no device, no jax import)."""
  del aval_state  # weak_type: irrelevant to the values
  array = rebuild(*args)
  array.__setstate__(array_state)
  return array


def _namedtuple(name, fieldnames, modulename=None, defaults=None):
  """dill's `_create_namedtuple` (optax's state tuples), as a plain namedtuple type."""
  del modulename  # never imported
  return collections.namedtuple(name, fieldnames, defaults=defaults)


def _flat_mapping(*args):
  """Old Haiku's FlatMapping parameter containers, as a dict."""
  return dict(*args)


def _numpy(name: str):
  return lambda: getattr(np, name)


# (module, name) -> what it is rebuilt with. numpy moved its internals to numpy._core in 2.0.
_ALLOWED: dict[tuple[str, str], Any] = {
  ('builtins', 'set'): set,
  ('builtins', 'frozenset'): frozenset,
  ('builtins', 'complex'): complex,
  ('builtins', 'bytearray'): bytearray,
  ('builtins', 'slice'): slice,
  ('collections', 'OrderedDict'): collections.OrderedDict,
  ('numpy', 'ndarray'): np.ndarray,
  ('numpy', 'dtype'): np.dtype,
  ('jax._src.array', '_reconstruct_array'): _jax_array,
  ('dill._dill', '_create_namedtuple'): _namedtuple,
  ('haiku._src.data_structures', 'FlatMapping'): _flat_mapping,
}
for _core in ('numpy.core.multiarray', 'numpy._core.multiarray'):
  _ALLOWED[(_core, '_reconstruct')] = _multiarray._reconstruct
  _ALLOWED[(_core, 'scalar')] = _multiarray.scalar
for _name in ('bfloat16', 'float8_e4m3fn', 'float8_e5m2', 'int4', 'uint4'):
  _ALLOWED[('ml_dtypes', _name)] = _name  # resolved on use: ml_dtypes comes with jax


class _RestrictedUnpickler(pickle.Unpickler):
  def find_class(self, module: str, name: str):
    found = _ALLOWED.get((module, name))
    if found is None:
      raise UnsafeCheckpointError(
        f'{self.path}: refused to load: it asks for {module}.{name}, which an original '
        'Perceiver AR checkpoint never holds (loading it could run code).'
      )
    if isinstance(found, str):
      import ml_dtypes

      return getattr(ml_dtypes, found)
    return found

  def __init__(self, file, path: str):
    super().__init__(file)
    self.path = path


def read_pickle(path: str) -> Any:
  """The object in pickle `path`, through the restricted unpickler."""
  if not os.path.isfile(path):
    raise errors.MissingFileError(f'No checkpoint at {path}: pass the path of a checkpoint.dill.')
  with open(path, 'rb') as f:
    try:
      return _RestrictedUnpickler(f, path).load()
    except UnsafeCheckpointError:
      raise
    except Exception as error:  # truncated or not a pickle
      raise errors.UserError(
        f'{path} is not a readable checkpoint ({type(error).__name__}: {error}).'
      ) from None


def read_checkpoint(path: str) -> tuple[dict[str, dict[str, np.ndarray]], int]:
  """(the Haiku parameters, the global step) of the original's `checkpoint.dill` at `path`
  (or a directory holding one): what `load_checkpoint` returns, and the step it was saved at
  (0 if the file has none)."""
  if os.path.isdir(path):
    path = os.path.join(path, 'checkpoint.dill')
  state = read_pickle(path)
  if not isinstance(state, dict) or not isinstance(state.get('params'), dict):
    raise errors.UserError(
      f"{path} holds no 'params' mapping: not a checkpoint of the original's experiment.py."
    )
  params = {
    module: {leaf: np.asarray(value) for leaf, value in dict(leaves).items()}
    for module, leaves in state['params'].items()
  }
  return params, int(np.asarray(state.get('global_step', 0)).reshape(-1)[0])


def load_checkpoint(path: str) -> dict[str, dict[str, np.ndarray]]:
  """The Haiku parameters (module path -> {name: numpy array}) of the original's
  `checkpoint.dill` at `path` (or a directory holding one), for `from_haiku`."""
  return read_checkpoint(path)[0]
