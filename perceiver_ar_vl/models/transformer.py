"""The decoder-only Transformer baseline, built from the same blocks as Perceiver AR."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from perceiver_ar_vl.attention import causal_mask
from perceiver_ar_vl.models.backbone import Backbone


class Transformer(Backbone):
  """Decoder-only baseline: `num_layers` causal self-attention blocks over all M positions.

  Same blocks, width, depth, heads and MLP as `PerceiverAR`, so comparisons are fair; it is
  Perceiver AR's layout with every position a latent in every layer (cost O(L*M^2)).
  """

  def setup(self):
    self._setup_common()
    self.blocks = [self._block(f'layer_{i}') for i in range(self.num_layers)]

  def __call__(
    self,
    tokens_BxM: jax.Array,
    input_mask: jax.Array | None = None,
    deterministic: bool = True,
    return_keys_values: bool = False,
  ):
    """Logits [batch, M, vocab], one per window position.

    With `return_keys_values`, returns (logits, keys_values): one (k, v) pair [B, M, H, K]
    per layer (what a decoding cache keeps).
    """
    valid_BxM = self._check_window(tokens_BxM, input_mask)
    positions_1xM = jnp.arange(tokens_BxM.shape[1])[None]  # the same for every example
    x_BxMxD = self.embed_tokens(tokens_BxM, positions_1xM)
    mask = causal_mask(positions_1xM, positions_1xM, valid_BxM, aligned=True)
    keys_values = []
    for block in self.blocks:
      keys_values.append(block.keys_values(x_BxMxD, positions_1xM))
      x_BxMxD = block.attend(x_BxMxD, positions_1xM, *keys_values[-1], mask, deterministic)
    logits = self.logits(x_BxMxD)
    return (logits, keys_values) if return_keys_values else logits
