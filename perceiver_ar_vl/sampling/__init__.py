"""Autoregressive byte sampling from any model (`decode`), with temperature / top-k / top-p
filtering (`filters`), and from text prompts or trained workdirs (`text`)."""

from perceiver_ar_vl.sampling.decode import latent_counts, reset_latents, sample
from perceiver_ar_vl.sampling.filters import filter_logits
from perceiver_ar_vl.sampling.text import fit_prompt, generate_text, sample_from_workdir

__all__ = [
  'filter_logits',
  'generate_text',
  'latent_counts',
  'reset_latents',
  'sample',
  'fit_prompt',
  'sample_from_workdir',
]
