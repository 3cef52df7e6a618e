"""The original's token ids and positions as this library's bytes.

The original's datasets (perceiver_ar/dataset.py at cc756f5) reserve ids 0, 1, 2 for PAD, EOS
and SOS, so byte b is id b + 3 (`NUM_RESERVED_TOKENS`), and number an example's events from
1 with SOS first, so its first byte sits at position 2. This library's data, evaluation and
sampling read and write bytes as ids 0..255 and number an example's bytes from 0
(`model.position_origin='first_byte'`). `to_bytes` relabels a converted model for them:

  * our byte b is the original's id b + 3: the embedding's rows and the head's outputs are
    permuted (the same function under new names), and the original's PAD, EOS and SOS take
    the ids after the bytes (256, 257, 258 for its 259 classes);
  * absolute position tables are shifted by 2 rows, so that our position p reads the
    original's p + 2 (rotary is shift-invariant and needs nothing);
  * a vocabulary of fewer than 259 classes (a test-size model) is widened to 259: the bytes it
    lacks get zero embeddings and a logit of UNUSED_LOGIT, so they are never sampled.

What remains different from the original's own evaluation: its examples begin with SOS (a key
every later byte can attend to), which byte data cannot hold.
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from perceiver_ar_vl import data, errors

RESERVED_TOKENS = 3  # the original's NUM_RESERVED_TOKENS: PAD 0, EOS 1, SOS 2
FIRST_POSITION = 2  # the original's position of an example's first byte (PAD 0, SOS 1)
UNUSED_LOGIT = -1e4  # the head's bias for ids the original model has no class for


def original_ids(num_classes: int) -> np.ndarray:
  """int64 [vocabulary]: the original's id for each of our ids (-1 where it has none)."""
  if num_classes <= RESERVED_TOKENS:
    raise errors.UserError(
      f"num_classes={num_classes} holds no bytes after the original's {RESERVED_TOKENS} "
      'reserved ids (PAD, EOS, SOS); pass --norelabel to keep its ids.'
    )
  size = max(num_classes, data.VOCAB_SIZE + RESERVED_TOKENS)
  ids = np.full(size, -1, np.int64)
  ids[: num_classes - RESERVED_TOKENS] = np.arange(RESERVED_TOKENS, num_classes)
  ids[size - RESERVED_TOKENS :] = np.arange(RESERVED_TOKENS)
  return ids


def widen(num_classes: int) -> np.ndarray:
  """Our ids kept as the original's (--norelabel), widened to at least the 256 bytes."""
  ids = np.full(max(num_classes, data.VOCAB_SIZE), -1, np.int64)
  ids[:num_classes] = np.arange(num_classes)
  return ids


def relabel_vocabulary(params: dict[str, Any], ids: np.ndarray) -> dict[str, Any]:
  """`params` (from_haiku's) with the embedding's rows and the head's outputs in the order of
  `ids` (`original_ids` or `widen`); ids of -1 get zero rows and an UNUSED_LOGIT bias."""
  has = ids >= 0
  embedding = np.asarray(params['embed']['embedding'])
  kernel, bias = np.asarray(params['head']['kernel']), np.asarray(params['head']['bias'])
  new_embedding = np.zeros((len(ids), embedding.shape[1]), embedding.dtype)
  new_embedding[has] = embedding[ids[has]]
  new_kernel = np.zeros((kernel.shape[0], len(ids)), kernel.dtype)
  new_kernel[:, has] = kernel[:, ids[has]]
  new_bias = np.full(len(ids), UNUSED_LOGIT, bias.dtype)
  new_bias[has] = bias[ids[has]]
  return {
    **params,
    'embed': {'embedding': new_embedding},
    'head': {'kernel': new_kernel, 'bias': new_bias},
  }


def shifted_table(table: np.ndarray, window: int, first: int = FIRST_POSITION) -> np.ndarray:
  """[window, d]: row p is the original table's row p + first (its last row past its end, as
  the original's lookup clamps)."""
  rows = np.minimum(np.arange(window) + first, len(table) - 1)
  return np.asarray(table)[rows]


def byte_model(config: ml_collections.ConfigDict, kwargs: dict[str, Any]) -> None:
  """Sets `config.model` (config_from_kwargs's, for constructor `kwargs`) to the relabelled
  model that `to_bytes`'s variables fill: its vocabulary, positions from an example's first
  byte, and a position table of its own where the original has one."""
  m = config.model
  m.vocab_size = len(original_ids(int(kwargs['num_classes'])))
  m.position_origin = 'first_byte'
  if kwargs['position_encoding_type'] == 'absolute':
    m.position_encoding = 'absolute'  # the shifted table: no longer the sinusoid from row 0


def to_bytes(
  variables: dict, haiku_params: dict, kwargs: dict[str, Any], window: int
) -> dict[str, Any]:
  """from_haiku's `variables` relabelled for byte data (module docstring), for the model of
  `byte_model`. `haiku_params` and `kwargs` are what from_haiku converted: the position table
  is read from the former, as from_haiku keeps only the window's rows."""
  params = relabel_vocabulary(variables['params'], original_ids(int(kwargs['num_classes'])))
  if kwargs['position_encoding_type'] == 'absolute':
    name = kwargs.get('name', 'perceiver_ar')
    table = haiku_params[f'{name}/~/embed_1']['embeddings']
    params['position_table'] = shifted_table(np.asarray(table, np.float32), window)
  return {'params': params}
