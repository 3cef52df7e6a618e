"""Plots of what a copy-task model learned: bits by position in an example, before and after
training, and where one latent's cross-attend looks.

  python benchmarks/long_copy_plots.py --workdir=/tmp/long_copy_smoke --out=docs/long_copy
  python benchmarks/long_copy_plots.py --workdir=/tmp/long_copy_cpu --out=docs/long_copy \
      --window=8192 --prefix=match_

Writes `bits_by_position.png` (bits per byte at each byte of one validation example, for the
freshly initialised model and the trained checkpoint: the copies fall to 0 bits, the random
first half stays at log2(vocab)) and `cross_attention.png` (the cross-attend's attention
weights, per head, of the last latent of a window that ends in an example's copy half,
against the distance back to each key; the copy's source distance is marked; with n-gram match
heads also each match head's weights). `--window` evaluates the same parameters at another
window (the copy distance is then half of it, as `eval.windows` does). Prints the figures'
numbers as a table.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

from perceiver_ar_vl import data, workdir_config
from perceiver_ar_vl.evaluation import evaluate
from perceiver_ar_vl.layers.match import key_codes
from perceiver_ar_vl.runs import train_state

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def example_bits(model, variables, stream, start: int, length: int, n: int) -> np.ndarray:
  """Bits of each byte of stream[start : start + length] (start >= window), predicted in
  windows of the M bytes before it, N targets a window."""
  m = model.max_context
  forward = jax.jit(lambda tokens: model.forward(variables, tokens, n, n))
  bits = []
  for first in range(start, start + length, n):
    tokens = stream[first + n - 1 - m : first + n - 1][None].astype(np.int32)
    logits = np.asarray(forward(tokens))[0]  # [N, V]: slot i predicts byte first + i
    targets = stream[first : first + n]
    logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    bits.append(-logp[np.arange(len(targets)), targets] / np.log(2))
  return np.concatenate(bits)[:length]


def last_latent_attention(model, variables, tokens_1xM) -> np.ndarray:
  """[heads, M]: the cross-attend's softmax weights of the window's last latent."""

  def weights(module, tokens):
    positions = jnp.arange(tokens.shape[1])[None]
    x = module.embed_tokens(tokens, positions)
    q = module.cross_attend.queries(module.latent_queries(x[:, -1:]), positions[:, -1:])
    k, _ = module.cross_attend.keys_values(x, positions)
    scores = jnp.einsum('bshk,bthk->bhst', q, k) / np.sqrt(q.shape[-1])
    return jax.nn.softmax(scores, axis=-1)[0, :, 0]

  return np.asarray(model.apply(variables, jnp.asarray(tokens_1xM), method=weights))


def last_latent_match_weights(model, variables, tokens_1xM) -> np.ndarray:
  """[match heads, M]: each match head's weight on each key for the window's last latent
  (1 / (exp(-strength) + matches) on the keys whose n-gram code equals its own, else 0)."""

  def weights(module, tokens):
    rows = []
    for h, (code, ok) in enumerate(module.match.codes(tokens, jnp.ones(tokens.shape, bool))):
      k_code, k_ok = key_codes(code, ok)
      hits = ((k_code[0] == code[0, -1]) & k_ok[0] & ok[0, -1]).astype(jnp.float32)
      rows.append(hits / (jnp.exp(-module.match.strength[h]) + hits.sum()))
    return jnp.stack(rows)

  return np.asarray(model.apply(variables, jnp.asarray(tokens_1xM), method=weights))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='a trained copy-task run')
  parser.add_argument('--out', required=True, help='folder for the PNG files')
  parser.add_argument('--window', type=int, default=0, help='evaluate at this window (0: own)')
  parser.add_argument('--prefix', default='', help='prefix of the PNG file names')
  args = parser.parse_args()
  config = workdir_config.get_config(args.workdir)
  if args.window:
    config = evaluate.at_window(config, args.window)
  model, trained, step = train_state.restore_params(config, args.workdir)
  fresh = model.init_variables(jax.random.PRNGKey(config.seed))
  m, n = config.model.max_context, config.latents.max
  dataset = data.make_dataset(config.data, m + 1, config.seed)
  stream, length = dataset.split_bytes('validation'), dataset.length
  if stream.ndim != 1:
    raise SystemExit('error: plots cover the streamed copy task (data.copy_min_crop=0).')
  start = -(-m // length) * length  # the first example with a full window before it
  half = (length + 1) // 2
  os.makedirs(args.out, exist_ok=True)

  curves = {
    'initialised': example_bits(model, fresh, stream, start, length, n),
    f'trained (step {step})': example_bits(model, trained, stream, start, length, n),
  }
  plt.figure(figsize=(7, 3.5))
  for label, bits in curves.items():
    plt.plot(np.arange(length), bits, lw=0.8, label=label)
  plt.axvline(half, color='gray', ls='--', lw=0.8)
  plt.xlabel(f'byte of one example (copy of the first {half} starts at the dashed line)')
  plt.ylabel('bits')
  plt.legend()
  plt.title(f'Bits by position, window {m}, copy distance {half}')
  plt.tight_layout()
  plt.savefig(os.path.join(args.out, f'{args.prefix}bits_by_position.png'), dpi=120)
  print('| model | first half (fresh) bits | second half (copies) bits |')
  print('|---|---:|---:|')
  for label, bits in curves.items():
    print(f'| {label} | {bits[:half].mean():.3f} | {bits[half:].mean():.3f} |')

  end = start + half + length // 4  # the window ends a quarter into the copy half
  window_1xM = stream[end - m : end][None].astype(np.int32)
  weights_HxM = last_latent_attention(model, trained, window_1xM)
  back = m - np.arange(m)  # key j holds the byte m - j before the one the latent predicts
  plt.figure(figsize=(7, 3.5))
  for h, w in enumerate(weights_HxM):
    plt.plot(back, w, lw=0.8, label=f'head {h}')
  if config.model.match_ngrams:
    match_GxM = last_latent_match_weights(model, trained, window_1xM)
    for k, w in zip(config.model.match_ngrams, match_GxM, strict=True):
      plt.plot(back, w, lw=1.2, ls=':', label=f'{k}-gram match head')
      hit = back[w > 0]
      print(f'{k}-gram match head: weight {w.sum():.3f} on {len(hit)} key(s) at {hit} back')
  plt.axvline(half, color='gray', ls='--', lw=0.8, label=f'source ({half} back)')
  plt.xlabel('bytes back from the predicted byte')
  plt.ylabel('attention weight')
  plt.legend()
  plt.title('Cross-attend weights of the last latent')
  plt.tight_layout()
  plt.savefig(os.path.join(args.out, f'{args.prefix}cross_attention.png'), dpi=120)
  for h, w in enumerate(weights_HxM):
    top = back[np.argsort(w)[::-1][:3]]
    print(f'head {h}: largest weight {w.max():.3f} at {top[0]} bytes back (next: {top[1:]})')


if __name__ == '__main__':
  main()
