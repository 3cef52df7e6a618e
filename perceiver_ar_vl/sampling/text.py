"""Text in, text out: sampling after a UTF-8 prompt, from a model or a trained workdir."""

from __future__ import annotations

import numpy as np

from perceiver_ar_vl import train_state
from perceiver_ar_vl.models.base import LanguageModel
from perceiver_ar_vl.sampling.decode import sample


def generate_text(
  model: LanguageModel, variables, prompt: str, *, length: int, num_latents: int, **kwargs
) -> str:
  """Samples `length` bytes after the UTF-8 bytes of `prompt`; returns them decoded.

  Invalid UTF-8 (e.g. a character cut at the end) decodes as U+FFFD. `kwargs` go to `sample`
  (all but `return_logits`).
  """
  if kwargs.get('return_logits'):
    raise ValueError('generate_text returns text only; call sample(..., return_logits=True).')
  prompt_1xP = np.frombuffer(prompt.encode('utf-8'), np.uint8).astype(np.int32)[None]
  tokens_1xL = sample(
    model, variables, prompt_1xP, length=length, num_latents=num_latents, **kwargs
  )
  return bytes(tokens_1xL[0].astype(np.uint8).tolist()).decode('utf-8', errors='replace')


def sample_from_workdir(config, workdir: str) -> str:
  """Restores `workdir`'s checkpoint (`eval.checkpoint_step`) and samples `config.sample`.

  Returns the prompt followed by the generated text.
  """
  s = config.sample
  model, variables, _ = train_state.restore_params(config, workdir, config.eval.checkpoint_step)
  text = generate_text(
    model,
    variables,
    s.prompt,
    length=s.length,
    num_latents=s.num_latents or config.latents.max,
    temperature=s.temperature,
    top_k=s.top_k,
    top_p=s.top_p,
    seed=s.seed,
    cached=s.cached,
  )
  return s.prompt + text
