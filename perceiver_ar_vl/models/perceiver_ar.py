"""Perceiver AR with a variable number of latents, and the decoder-only Transformer baseline.

Perceiver AR (Hawthorne et al. 2022): the LAST N positions of the window are latents. A
cross-attend layer lets them attend to all M positions (causally), then L-1 causal
self-attention layers run over the latents only. Cost O(N*M + L*N^2) instead of O(L*M^2).

Static buckets: a call runs at bucket B >= N. Slot j of the B latent slots is window position
M-B+j; the last N slots are active, the first B-N are inactive padding that is masked out as
keys in every latent layer and carries no loss. N may be traced; B is static.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from perceiver_ar_vl.attention import causal_mask
from perceiver_ar_vl.models.backbone import Backbone


def check_latents(num_latents, bucket: int | None, context: int) -> int:
  """Validates N and B against the window length; returns the static bucket B."""
  concrete_n = None
  if isinstance(num_latents, (int, np.integer)):
    concrete_n = int(num_latents)
  if bucket is None:
    if concrete_n is None:
      raise ValueError(
        'num_latents is traced, so its bucket must be given: pass a static bucket=B >= num_latents.'
      )
    bucket = concrete_n
  bucket = int(bucket)
  if bucket > context:
    raise ValueError(
      f'bucket={bucket} exceeds the window of {context} tokens; use a bucket '
      f'<= {context} (or a longer window).'
    )
  if concrete_n is not None:
    if concrete_n < 1:
      raise ValueError(f'num_latents must be >= 1, got {concrete_n}.')
    if concrete_n > bucket:
      raise ValueError(
        f'num_latents={concrete_n} does not fit in bucket={bucket}; use a bucket >= {concrete_n}.'
      )
  return bucket


class PerceiverAR(Backbone):
  """Perceiver AR; `num_latents` may change per call (see the module docstring).

  Extra fields, both active only while training (deterministic=False):
    `cross_attend_dropout`: the per-example probability of dropping each prefix key (a
      position that is not an active latent) from the cross-attend;
    `latent_dropout`: the per-example probability of dropping each active latent as a key of
      the latent self-attention layers (the original's `latent_dropout_prob`); a latent always
      still sees itself, so no query is left without keys.
  """

  cross_attend_dropout: float = 0.0
  latent_dropout: float = 0.0

  def setup(self):
    self._setup_common()
    self.cross_attend = self._block('cross_attend', cross=True)
    self.latent_blocks = [self._block(f'latent_{i}') for i in range(self.num_layers - 1)]

  def __call__(
    self,
    tokens_BxM: jax.Array,
    num_latents,
    bucket: int | None = None,
    input_mask: jax.Array | None = None,
    deterministic: bool = True,
    return_keys_values: bool = False,
  ):
    """Logits [batch, bucket, vocab] for the last `bucket` positions; last N slots active.

    With `return_keys_values`, returns (logits, keys_values): one (k, v) pair per layer, the
    cross-attend's over all M positions [B, M, H, K] first, then each latent layer's over the
    B slots [B, B, H, K] (what a decoding cache keeps).
    """
    valid_BxM = self._check_window(tokens_BxM, input_mask)
    batch, context = tokens_BxM.shape
    bucket = check_latents(num_latents, bucket, context)
    positions_1xM = jnp.arange(context)[None]  # the same for every example
    x_BxMxD = self.embed_tokens(tokens_BxM, positions_1xM)

    # Cross-attend: the B latent slots attend to every window position.
    slot_positions_1xB = positions_1xM[:, context - bucket :]
    active_1xB = jnp.arange(bucket)[None, :] >= bucket - num_latents
    key_ok_BxM = valid_BxM
    if self.cross_attend_dropout > 0 and not deterministic:
      is_prefix_1xM = positions_1xM < context - num_latents
      drop_BxM = jax.random.bernoulli(
        self.make_rng('dropout'), self.cross_attend_dropout, (batch, context)
      )
      key_ok_BxM = key_ok_BxM & ~(is_prefix_1xM & drop_BxM)
    cross_mask = causal_mask(slot_positions_1xB, positions_1xM, key_ok_BxM, aligned=True)
    x_q_BxBxD = x_BxMxD[:, context - bucket :]
    if return_keys_values:
      keys_values = [self.cross_attend.keys_values(x_BxMxD, positions_1xM)]
      z_BxBxD = self.cross_attend.attend(
        x_q_BxBxD, slot_positions_1xB, *keys_values[0], cross_mask, deterministic
      )
    else:  # keys/values may be made inside a memory-efficient kernel: M can be long
      keys_values = [None]
      z_BxBxD = self.cross_attend.attend_to(
        x_q_BxBxD, slot_positions_1xB, x_BxMxD, positions_1xM, cross_mask, deterministic
      )

    # Latent self-attention: inactive slots and invalid positions are never keys.
    latent_ok_BxB = active_1xB & valid_BxM[:, context - bucket :]
    if self.latent_dropout > 0 and not deterministic:
      drop_BxB = jax.random.bernoulli(
        self.make_rng('dropout'), self.latent_dropout, (batch, bucket)
      )
      latent_ok_BxB = latent_ok_BxB & ~drop_BxB
    latent_mask = causal_mask(slot_positions_1xB, slot_positions_1xB, latent_ok_BxB, aligned=True)
    for block in self.latent_blocks:
      keys_values.append(block.keys_values(z_BxBxD, slot_positions_1xB))
      z_BxBxD = block.attend(
        z_BxBxD, slot_positions_1xB, *keys_values[-1], latent_mask, deterministic
      )
    logits = self.logits(z_BxBxD)
    return (logits, keys_values) if return_keys_values else logits
