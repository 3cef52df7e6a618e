"""`perceiver_ar_vl.original`: the original's own logits reproduced from its own parameters.

tests/data/original_golden.npz holds, per configuration, the original google-research/
perceiver-ar model's randomised Haiku parameters, tokens and its `input_events_logits` at two
latent counts, written by tools/original_golden.py running the original's code (not in CI);
original_checkpoint.dill is a checkpoint written the way the original's experiment.py does.
"""

from __future__ import annotations

import json
import os
import pickle

import jax
import numpy as np
import pytest

from perceiver_ar_vl import errors, original

DATA = os.path.join(os.path.dirname(__file__), 'data')
GOLDEN = np.load(os.path.join(DATA, 'original_golden.npz'))
META = json.loads(bytes(GOLDEN['meta']).decode())
CHECKPOINT = os.path.join(DATA, 'original_checkpoint.dill')


def golden_params(name: str) -> dict:
  prefix = f'{name}/params/'
  params: dict = {}
  for key in GOLDEN.files:
    if key.startswith(prefix):
      module, leaf = key[len(prefix) :].rsplit('/', 1)
      params.setdefault(module, {})[leaf] = GOLDEN[key]
  return params


def max_error(name: str, params: dict, **changes) -> float:
  model, variables = original.from_haiku(params, **{**META[name]['kwargs'], **changes})
  tokens = GOLDEN[f'{name}/tokens']
  worst = 0.0
  for i, n in enumerate(META[name]['latent_counts']):
    apply = jax.jit(lambda v, t, n=n: model.apply(v, t, num_latents=n))  # eager: op by op
    ours = np.asarray(apply(variables, tokens))
    worst = max(worst, float(np.abs(ours - GOLDEN[f'{name}/logits_{i}']).max()))
  return worst


def test_golden_covers_what_the_issue_lists():
  kinds = {
    (m['kwargs']['position_encoding_type'], m['kwargs'].get('position_encoding'))
    for m in META.values()
  }
  assert ('rotary', None) in kinds and ('absolute', 'sinusoidal') in kinds
  assert ('absolute', 'random') in kinds
  assert {m['kwargs']['activation_name'] for m in META.values()} == {'sq_relu', 'gelu', 'relu'}
  assert any(
    m['kwargs']['num_cross_attend_heads'] != m['kwargs']['num_transformer_heads']
    for m in META.values()
  )
  assert {m['kwargs']['num_classes'] for m in META.values()} >= {259, 64}
  assert all(len(m['latent_counts']) == 2 for m in META.values())


@pytest.mark.parametrize('name', sorted(META))
def test_logits_equal_the_originals(name):
  assert max_error(name, golden_params(name)) < 1e-5


@pytest.mark.parametrize(
  'name,changes',
  [
    ('rotary_quarter', dict(fraction_to_rotate=0.5)),  # another rotary subset
    ('rotary_full_heads_differ', dict(max_wavelength=200)),
    ('learned_positions', dict(activation_name='gelu')),
  ],
)
def test_the_golden_test_can_fail(name, changes):
  assert max_error(name, golden_params(name), **changes) > 1e-3


def test_a_changed_parameter_changes_the_logits():
  params = golden_params('sinusoidal')
  bias = params['perceiver_ar/~/linear']['b'].astype(np.float32)  # z_linear's
  params['perceiver_ar/~/linear']['b'] = bias + 0.2 * np.arange(bias.size) / bias.size
  assert max_error('sinusoidal', params) > 1e-3


def test_checkpoint_converts_to_the_same_logits():
  name = 'rotary_half_checkpoint'
  params = original.load_checkpoint(CHECKPOINT)
  assert params.keys() == golden_params(name).keys()
  assert max_error(name, params) < 1e-5


class RunsACommand:
  """Unpickling this calls os.system: what a malicious checkpoint would do."""

  def __init__(self, marker: str):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


def test_a_pickle_that_would_run_a_command_is_refused(tmp_path):
  marker = tmp_path / 'ran'
  path = tmp_path / 'checkpoint.dill'
  path.write_bytes(pickle.dumps({'params': {}, 'evil': RunsACommand(str(marker))}))
  with pytest.raises(original.UnsafeCheckpointError, match=r'asks for (posix|os|nt)\.system') as e:
    original.load_checkpoint(str(tmp_path))  # a directory holding checkpoint.dill
  assert '\n' not in str(e.value)
  assert not marker.exists()
  pickle.loads(path.read_bytes())  # the same bytes through plain pickle do run it
  assert marker.exists()


def test_bad_files_are_one_line_errors(tmp_path):
  with pytest.raises(errors.MissingFileError, match='No checkpoint'):
    original.load_checkpoint(str(tmp_path / 'nothing.dill'))
  truncated = tmp_path / 'truncated.dill'
  truncated.write_bytes(open(CHECKPOINT, 'rb').read()[:1000])
  with pytest.raises(errors.UserError, match='not a readable checkpoint'):
    original.load_checkpoint(str(truncated))
  no_params = tmp_path / 'other.dill'
  no_params.write_bytes(pickle.dumps({'weights': [1, 2]}))
  with pytest.raises(errors.UserError, match="no 'params'"):
    original.load_checkpoint(str(no_params))


@pytest.mark.parametrize(
  'option,value',
  [
    ('cross_attention_shape_for_attn', 'qkv'),
    ('encoder_use_query_residual', False),
    ('input_embed_dim', 48),
    ('initial_query_embed_style', 'learned'),
    ('fraction_heads_to_rotate', 0.5),
    ('num_latents_per_position', 2),
    ('additional_cross_attend_after_layers', [0]),
    ('use_positions_from_data', False),
    ('activation_name', 'swish'),
  ],
)
def test_unsupported_options_are_refused_by_name(option, value):
  kwargs = {**META['rotary_quarter']['kwargs'], option: value}
  with pytest.raises(errors.UserError, match=option) as e:
    original.from_haiku(golden_params('rotary_quarter'), **kwargs)
  assert '\n' not in str(e.value)


def test_unknown_options_and_multi_dimensional_positions_are_refused():
  with pytest.raises(errors.UserError, match='num_heads'):
    original.config_from_kwargs(**META['rotary_quarter']['kwargs'], num_heads=4)
  with pytest.raises(errors.UserError, match='input_idx_size'):
    original.config_from_kwargs(**original.sweep_kwargs('imagenet_w_positions'))


def test_sweeps_describe_the_released_copy_model():
  kwargs = original.sweep_kwargs('random_mirrored_131072')
  config = original.config_from_kwargs(**kwargs)
  m = config.model
  assert (m.max_context, m.d_model, m.num_layers, m.vocab_size) == (131072, 1024, 7, 259)
  assert (m.position_encoding, config.latents.max) == ('sinusoidal', 1024)
  assert (m.num_cross_attend_heads, m.cross_attend_mlp_dim, m.mlp_dim) == (16, 4096, 4096)
  small = original.config_from_kwargs(**original.sweep_kwargs('random_mirrored_32'))
  assert (small.model.max_context, small.model.num_layers, small.latents.max) == (32, 2, 16)
  with pytest.raises(errors.UserError, match='Unknown sweep'):
    original.sweep_kwargs('random_mirrored_64')
