"""Text in, text out: sampling after a UTF-8 prompt, from a model or a trained workdir."""

from __future__ import annotations

import sys

import numpy as np

from perceiver_ar_vl import config_lib, runtime, spec
from perceiver_ar_vl.models.base import LanguageModel
from perceiver_ar_vl.runs import train_state
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


def fit_prompt(prompt: str, window: int) -> tuple[str, str]:
  """(the prompt the model reads, the text it stands for in the output) for a UTF-8 `prompt`
  and a window of `window` bytes.

  A prompt longer than the window is cropped to its last `window` bytes (dropping a character
  the cut splits), with a one-line notice on stderr; both are then that crop. The model has
  no start-of-text token, so an empty prompt is read as a single NUL byte (the padding value)
  that stands for nothing in the output.
  """
  encoded = prompt.encode('utf-8')
  if len(encoded) > window:
    prompt = encoded[-window:].decode('utf-8', errors='ignore')
    print(
      f'note: the prompt has {len(encoded)} bytes, more than the window of {window}; '
      f'sampling from its last {len(prompt.encode("utf-8"))} bytes.',
      file=sys.stderr,
    )
  return (prompt or '\0'), prompt


def sample_from_workdir(config: spec.RunSpec, workdir: str) -> str:
  """Restores `workdir`'s checkpoint (`eval.checkpoint_step`) and samples `config.sample`
  after its prompt (`fit_prompt`: cropped to the window, an empty one read as a NUL byte).

  Returns the prompt (as cropped) followed by the generated text. Compiles through the
  persistent cache that `compile_cache_dir` names, as training and evaluation do.
  """
  config = config_lib.read_spec(config)
  runtime.enable_compilation_cache(config.compile_cache_dir)
  runtime.configure_cpu_execution(config.cpu_execution)
  s = config.sample
  train_state.checkpoint_step(workdir, config.eval.checkpoint_step)  # none: stop here, cheaply
  read, shown = fit_prompt(s.prompt, config.model.max_context)
  model, variables, _ = train_state.restore_params(config, workdir, config.eval.checkpoint_step)
  text = generate_text(
    model,
    variables,
    read,
    length=s.length,
    num_latents=s.num_latents or config.latents.max,
    temperature=s.temperature,
    top_k=s.top_k,
    top_p=s.top_p,
    seed=s.seed,
    cached=s.cached,
  )
  return shown + text
