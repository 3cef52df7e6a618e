"""The copy task's settings (`config.data.copy_*`), validated once, and its curriculum over the
copy distance: the example length L at each training step.

Curriculum (`data.copy_length_schedule`, off by default): L grows from `copy_length_min` to
`copy_length` (the copy distance is about L/2), a pure function of the step, so a resumed run
draws the rows it would have drawn. The shapes parallel `latents.schedule`:
  * linear    every integer, reaching copy_length after `copy_length_warmup_fraction` of
              train.steps: L = round(min + min(1, step / round(fraction * steps)) * (max - min));
  * stepwise  the same ramp in equal-time stages at min, the powers of two between, and max;
  * staircase `copy_length_stairs` equal stages of the whole run, from min (first stage) to
              max (last) in equal increments: L = min + round(k * (max - min) / (stairs - 1)),
              k = min(stairs - 1, floor(step / (steps / stairs))).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from perceiver_ar_vl import config_choices, errors, schedules
from perceiver_ar_vl.data.base import VOCAB_SIZE, config_value


@dataclasses.dataclass(frozen=True)
class CopySettings:
  """The copy task of one config: mode ('copy' | 'mirror'), vocab (symbols), length (L, the
  example length at the end of any curriculum: what evaluation uses), min_crop (0 = streamed
  rows; > 0 = one example per row, cropped to c ~ U[min_crop, L] bytes), and the curriculum
  (schedule, length_min, warmup_fraction, stairs, total_steps = the run's train.steps, given
  by whoever builds the dataset for training);
  train_lengths: () or (a, b), streamed training examples of lengths drawn in [a, b]."""

  mode: str = 'copy'
  vocab: int = 16
  length: int = 0
  min_crop: int = 0
  schedule: str = 'none'
  length_min: int = 0
  warmup_fraction: float = 0.5
  stairs: int = 4
  total_steps: int = 0
  train_lengths: tuple[int, ...] = ()


def _integer(data_config: Any, key: str, low: int, meaning: str = '') -> int:
  value = config_value(data_config, key)
  if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
    raise errors.UserError(f'data.{key} must be an integer >= {low}{meaning}, got {value!r}.')
  return int(value)


def copy_settings(data_config: Any, window: int, total_steps: int = 0) -> CopySettings:
  """The copy task's settings from `config.data` (ConfigDict or dict) for rows of `window`
  = model.max_context + 1 bytes, in a run of `total_steps` training steps (what a length
  curriculum counts fractions of; 0 = not for training: evaluation reads `length` only).
  Raises errors.UserError (one line: the key, what to change)."""
  mode = config_value(data_config, 'copy_mode')
  if mode not in config_choices.COPY_MODES:
    raise errors.UserError(
      f'Unknown data.copy_mode {mode!r}; choose one of {config_choices.COPY_MODES}.'
    )
  vocab = config_value(data_config, 'copy_vocab')
  if not isinstance(vocab, int | np.integer) or not 2 <= vocab <= VOCAB_SIZE:
    raise errors.UserError(
      f'data.copy_vocab must be an integer in [2, {VOCAB_SIZE}], got {vocab!r}.'
    )
  length = _integer(data_config, 'copy_length', 0, ' (0 = the window)') or window - 1
  min_crop = _integer(data_config, 'copy_min_crop', 0, ' (0 = the streamed task)')
  if min_crop and length > window:
    raise errors.UserError(
      f'data.copy_length={length} exceeds the window of {window} bytes (model.max_context + 1): '
      f'with data.copy_min_crop > 0 each row holds one example; set copy_length <= {window}.'
    )
  if min_crop > length:
    raise errors.UserError(
      f'data.copy_min_crop={min_crop} exceeds the example length {length} (data.copy_length); '
      f'set it in [1, {length}] (0 = the streamed task).'
    )
  schedule = config_value(data_config, 'copy_length_schedule')
  message = config_choices.unknown_choice('data.copy_length_schedule', schedule)
  if message:
    raise errors.UserError(message)
  length_min = _integer(data_config, 'copy_length_min', 0, ' (0 = no curriculum)')
  train_lengths = tuple(config_value(data_config, 'copy_train_lengths'))
  if train_lengths and (
    len(train_lengths) != 2
    or not all(isinstance(x, int | np.integer) for x in train_lengths)
    or not 2 <= train_lengths[0] <= train_lengths[1]
    or min_crop
    or schedule != 'none'
  ):
    raise errors.UserError(
      f'data.copy_train_lengths={train_lengths} must be () or (a, b) with 2 <= a <= b, on the '
      "streamed task without a length curriculum (copy_min_crop=0, copy_length_schedule='none')"
      ', e.g. --config.data.copy_train_lengths="(64,1024)".'
    )
  settings = CopySettings(
    mode, int(vocab), length, min_crop, schedule, length_min, train_lengths=train_lengths
  )
  if schedule == 'none':
    if length_min:
      raise errors.UserError(
        f'data.copy_length_min={length_min} needs a curriculum: set data.copy_length_schedule '
        'to linear, stepwise or staircase, or copy_length_min=0.'
      )
    return settings
  if not max(2, min_crop) <= length_min <= length:
    raise errors.UserError(
      f'data.copy_length_schedule={schedule!r} grows L from data.copy_length_min={length_min} '
      f'to data.copy_length={length}: set copy_length_min in [{max(2, min_crop)}, {length}] '
      '(at least 2, and at least data.copy_min_crop).'
    )
  fraction = config_value(data_config, 'copy_length_warmup_fraction')
  if not 0 < fraction <= 1:
    raise errors.UserError(
      f'data.copy_length_warmup_fraction={fraction} must be in (0, 1] (the share of '
      'train.steps over which L grows).'
    )
  stairs = _integer(data_config, 'copy_length_stairs', 2)
  return dataclasses.replace(
    settings, warmup_fraction=float(fraction), stairs=stairs, total_steps=int(total_steps)
  )


def scheduled_length(settings: CopySettings, step: int) -> int:
  """L at training step `step` (the module docstring's formulas); `settings.length` without a
  curriculum or outside training (total_steps 0)."""
  s = settings
  if s.schedule == 'none' or not s.total_steps:
    return s.length
  return schedules.ramp(
    step,
    low=s.length_min,
    high=s.length,
    total_steps=s.total_steps,
    shape=s.schedule,
    warmup_fraction=s.warmup_fraction,
    stages=tuple(2**k for k in range(1, s.length.bit_length())),  # stepwise: powers of two
    stairs=s.stairs,
  )


def check_copy_config(config: Any) -> None:
  """What `config_lib.validate` checks of the copy keys: the settings against the window, and
  no copy-only key set for another dataset."""
  d = config.data
  if d.name != 'copy':
    if (
      d.copy_min_crop
      or d.copy_length_min
      or d.copy_length_schedule != 'none'
      or tuple(d.copy_train_lengths)
    ):
      raise errors.UserError(
        'data.copy_min_crop, copy_length_min, copy_length_schedule and copy_train_lengths '
        'only apply to '
        f"data.name='copy', not {d.name!r}; leave them at 0 / 'none'."
      )
    return
  copy_settings(d, config.model.max_context + 1, config.train.steps)
