"""Checks of the model section of a config, of the run's tooling settings (profiling, the
compilation cache) and of single settings, with one-line errors that say what to change
(`config_lib.validate` runs them; no JAX is imported)."""

from __future__ import annotations

import ml_collections

from perceiver_ar_vl import config_choices, data, errors


def at_least(section: ml_collections.ConfigDict, name: str, keys: tuple[str, ...], low) -> None:
  """Each `section[key]` must be >= low (e.g. a step count, a size)."""
  for key in keys:
    if section[key] < low:
      raise errors.UserError(
        f'{name}.{key} must be >= {low}, got {section[key]}; set --config.{name}.{key}.'
      )


def validate_model(config: ml_collections.ConfigDict) -> None:
  """The `model` section: sizes, rotary span, heads, vocabulary, the long-context options."""
  m, lat, e = config.model, config.latents, config.eval
  at_least(m, 'model', ('num_layers', 'num_heads', 'd_model', 'mlp_dim'), 1)
  at_least(m, 'model', ('max_context',), 2)
  # Rotary spans the window where the cross-attend rotates, else only the latent layers' slots.
  rotary_span = m.max_context
  if m.type == 'perceiver_ar' and m.cross_attend_rotary_fraction == 0:
    rotary_span = max(*lat.buckets, e.num_latents, *e.latents_sweep)
  if m.position_encoding == 'rotary' and m.max_wavelength < rotary_span:
    raise errors.UserError(
      f'model.max_wavelength={m.max_wavelength:g} is shorter than the window '
      f'model.max_context={m.max_context}: rotary positions further apart than a wavelength '
      f'look alike; set --config.model.max_wavelength={float(m.max_context):g} or more.'
    )
  if not m.layer_norm_epsilon > 0:
    raise errors.UserError(f'model.layer_norm_epsilon={m.layer_norm_epsilon} must be > 0.')
  if m.d_model % m.num_heads:
    raise errors.UserError(
      f'model.d_model={m.d_model} must be divisible by model.num_heads={m.num_heads}.'
    )
  cross_heads = m.num_cross_attend_heads or m.num_heads
  if m.num_cross_attend_heads < 0 or m.d_model % cross_heads:
    raise errors.UserError(
      f'model.num_cross_attend_heads={m.num_cross_attend_heads} must be 0 (= num_heads) or '
      f'divide model.d_model={m.d_model}.'
    )
  at_least(m, 'model', ('cross_attend_mlp_dim',), 0)
  _validate_long_context(m)
  if m.vocab_size < data.VOCAB_SIZE:
    raise errors.UserError(
      f'model.vocab_size={m.vocab_size} cannot hold byte tokens; use >= {data.VOCAB_SIZE}.'
    )


def _validate_long_context(m: ml_collections.ConfigDict) -> None:
  """The cross-attend's long-context options (models.perceiver_ar, layers.match)."""
  ngrams = tuple(m.match_ngrams)
  if any(not isinstance(k, int) or not 1 <= k < m.max_context for k in ngrams):
    raise errors.UserError(
      f'model.match_ngrams={ngrams} must hold n-gram lengths in [1, model.max_context - 1], '
      'e.g. --config.model.match_ngrams=8 or "(8, 3)".'
    )
  if ngrams and m.type != 'perceiver_ar':
    raise errors.UserError(
      f"model.match_ngrams is a Perceiver AR cross-attend option; model.type='{m.type}' has "
      'none: set --config.model.match_ngrams="()".'
    )
  if not (m.cross_attend_rotary_fraction == -1 or 0 <= m.cross_attend_rotary_fraction <= 1):
    raise errors.UserError(
      f'model.cross_attend_rotary_fraction={m.cross_attend_rotary_fraction} must be in '
      '[0, 1], or -1 for model.rotary_fraction.'
    )


def validate_tooling(config: ml_collections.ConfigDict) -> None:
  """`train.profile_steps` (empty, or (first, last) steps within the run) and
  `compile_cache_dir` ('auto', '' or a directory)."""
  t = config.train
  span = tuple(t.profile_steps)
  if span and (len(span) != 2 or not 1 <= span[0] <= span[1] <= t.steps):
    raise errors.UserError(
      f'train.profile_steps={span} must be () or (first, last) with 1 <= first <= last <= '
      f'train.steps={t.steps}, e.g. --config.train.profile_steps="(10,12)".'
    )
  if not isinstance(config.compile_cache_dir, str):
    raise errors.UserError(
      f'compile_cache_dir={config.compile_cache_dir!r} must be a directory, "auto" (a cache '
      'per user) or "" (no cache).'
    )


def validate_keeping(t: ml_collections.ConfigDict) -> None:
  """train.keep_checkpoints (>= 1: resuming needs the newest step), keep_every and keep_best
  (>= 0); a keep_every that is no multiple of checkpoint_every would keep fewer steps than it
  says, so it is refused."""
  at_least(t, 'train', ('keep_checkpoints',), 1)
  at_least(t, 'train', ('keep_every', 'keep_best'), 0)
  if t.keep_every % t.checkpoint_every:
    raise errors.UserError(
      f'train.keep_every={t.keep_every} must be a multiple of train.checkpoint_every='
      f'{t.checkpoint_every} (only saved steps can be kept); set --config.train.keep_every to '
      f'{t.checkpoint_every * max(1, round(t.keep_every / t.checkpoint_every))}, or 0.'
    )


def validate_checkpoint_step(step: object) -> None:
  """eval.checkpoint_step: a step (>= 0), -1 for the latest or 'best' (an int or that string:
  the command line hands over any other word as a string)."""
  is_step = isinstance(step, int) and not isinstance(step, bool) and step >= -1
  if is_step or step == config_choices.BEST_CHECKPOINT:
    return
  raise errors.UserError(
    f"eval.checkpoint_step={step!r}: use a saved step, -1 for the latest or 'best' for the kept "
    'step with the lowest validation bits per byte, e.g. --config.eval.checkpoint_step=best.'
  )
