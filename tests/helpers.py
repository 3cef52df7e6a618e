"""Tiny models and configs shared by the tests (CPU, seconds per run)."""

from perceiver_ar_vl import config_lib

TINY_WINDOW = 48
# A 3-layer, d_model 32 model: big enough to have a latent stack, small enough to compile fast.
TINY_MODEL = dict(
  vocab_size=256,
  num_layers=3,
  num_heads=4,
  d_model=32,
  mlp_dim=64,
  max_context=TINY_WINDOW,
  dropout_rate=0.0,
)


def tiny_config(strategy: str = 'curriculum', steps: int = 24, model_type: str = 'perceiver_ar'):
  """A ~20k-parameter model on the copy task with a 32-byte window; unlocked for edits."""
  c = config_lib.make_config(
    'smoke',
    name=f'tiny_{strategy}',
    strategy=strategy,
    min_latents=256,
    max_latents=1024 if model_type == 'transformer' else 512,
    model_type=model_type,
  )
  c.model.update(num_layers=2, num_heads=2, d_model=16, mlp_dim=32, max_context=32)
  c.latents.update(min=4, max=16 if model_type != 'transformer' else 32, buckets=(4, 8, 16, 32))
  c.data.copy_length = 16
  c.train.update(
    steps=steps,
    batch_size=4,
    learning_rate=1e-2,
    warmup_steps=2,
    log_every=1,
    checkpoint_every=8,
    eval_every=0,
    eval_max_bytes=256,
  )
  c.eval.update(max_bytes=256, batch_size=4, latents_sweep=())
  c.sample.update(length=8)
  return c
