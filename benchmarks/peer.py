"""lucidrains' perceiver-ar-pytorch at our shapes, and torch's plain matmul rate: the peer that
`vs_lucidrains.py` times against ours. Needs `pip install torch perceiver-ar-pytorch`; this
module installs nothing and imports torch only when called."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

PEER_MISSING = (
  'lucidrains perceiver-ar-pytorch is not installed: `pip install torch perceiver-ar-pytorch` '
  '(measured with `pip install torch==2.14.1 perceiver-ar-pytorch==0.0.10`).'
)


def lucidrains_train_step(
  context: int, latents: int, batch: int, threads: int
) -> tuple[Callable[[], None], str] | None:
  """(step, torch version): `step()` runs one eager train step (forward, backward, Adam) of
  lucidrains' PerceiverAR at the seed model's size (1 cross-attend + 5 self-attention layers,
  d_model 512, 8 heads of 64, MLP 2048, vocabulary 256, dropout 0) on a fixed batch of
  [batch, context + 1] bytes with `latents` latents, using `threads` intra-op threads.
  None if torch or the package is missing."""
  try:
    import torch
    from perceiver_ar_pytorch import PerceiverAR
  except ImportError:
    return None
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = PerceiverAR(
    num_tokens=256,
    dim=512,
    depth=5,
    max_seq_len=context,
    cross_attn_seq_len=context - latents,
    dim_head=64,
    heads=8,
    ff_mult=4,
  )
  optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
  rng = np.random.default_rng(0)
  window = torch.from_numpy(rng.integers(0, 256, (batch, context + 1)))

  def step():
    loss = model(window[:, :-1], labels=window[:, 1:])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

  return step, torch.__version__


def torch_matmul_gflops(size: int = 2048, dtype: str = 'float32', repeats: int = 5) -> float:
  """GFLOP/s of a plain [size, size] x [size, size] matmul in torch (the same roofline as
  `common.matmul_gflops` in JAX), with torch's current thread count."""
  import torch

  rng = np.random.default_rng(0)
  a, b = (
    torch.from_numpy(rng.normal(size=(size, size)).astype(np.float32)).to(getattr(torch, dtype))
    for _ in range(2)
  )
  torch.matmul(a, b)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    torch.matmul(a, b)
    times.append(time.perf_counter() - start)
  return 2 * size**3 / min(times) / 1e9
