"""Autoregressive byte sampling from any model (`decode`), with temperature / top-k / top-p
filtering (`filters`)."""

from perceiver_ar_vl.sampling.decode import (
  generate_text,
  latent_counts,
  reset_latents,
  sample,
  sample_from_workdir,
)
from perceiver_ar_vl.sampling.filters import filter_logits

__all__ = [
  'filter_logits',
  'generate_text',
  'latent_counts',
  'reset_latents',
  'sample',
  'sample_from_workdir',
]
