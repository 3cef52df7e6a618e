"""Multi-query associative recall (MQAR, data.name='recall'): key-value pairs, then queries of
earlier keys whose values must be recalled (perceiver_ar_vl/data/recall_task.py). The
field's probe of whether a model finds earlier content by content; eval.json reports
recall_accuracy (greedy predictions of the queries' values that are right) beside the bits.

Presets (no preset: an error), each a CPU recipe with 2 layers, d_model 128, window 1024:
  :perceiver  Perceiver AR as it is (N = 256 latents; the cross-attend's keys are single bytes)
  :match      Perceiver AR with a 2-gram match head (a key is 2 bytes) and no rotary in the
              cross-attend (perceiver_ar_vl/layers/match.py)
  :transformer, :ecp  the baselines of the same size (every position scored)

  python launch.py --config=configs/recall.py:match --workdir=/tmp/recall_match
  python launch.py --config=configs/recall.py:match --workdir=/tmp/recall_match --mode=eval

Other windows: --config.model.max_context=4096 (Perceiver AR keeps N = 256). The table across
windows and models is benchmarks/recall.py's (docs/match_heads.md has it, with its command).
"""

from perceiver_ar_vl import config_defaults, errors

PRESETS = ('perceiver', 'match', 'transformer', 'ecp')


def get_config(arg=None):
  if arg not in PRESETS:
    raise errors.UserError(
      f'configs/recall.py takes a preset: one of {PRESETS}, e.g. configs/recall.py:match.'
    )
  c = config_defaults.base_config()
  c.name = f'recall_{arg}'
  c.data.update(name='recall', recall_pairs=32, recall_vocab=16, recall_key_bytes=2)
  window = 1024
  c.model.update(
    type='perceiver_ar' if arg in ('perceiver', 'match') else arg,
    num_layers=2,
    num_heads=4,
    d_model=128,
    mlp_dim=256,
    max_context=window,
    dropout_rate=0.0,
    ecp_segment_length=window // 8,
  )
  if arg == 'match':
    c.model.update(match_ngrams=(2,), cross_attend_rotary_fraction=0.0)
  latents = 256 if c.model.type == 'perceiver_ar' else window
  c.latents.update(strategy='fixed', min=latents, max=latents, buckets=(latents,))
  c.train.update(
    steps=300,
    batch_size=16,
    learning_rate=3e-3,
    warmup_steps=30,
    z_loss=0.0,
    log_every=50,
    checkpoint_every=100,
    eval_every=0,
    eval_max_bytes=4096,
  )
  c.eval.update(latents_sweep=(), splits=('validation',), batch_size=4, max_bytes=0)
  c.sample.update(temperature=0.0, prompt='ABa', length=32)
  return c
