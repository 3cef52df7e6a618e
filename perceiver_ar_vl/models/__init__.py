"""The models: Perceiver AR (variable latents), the Transformer baseline, and ECP.

All three share `Backbone` (embedding, blocks, head) and the attention blocks of `blocks.py`.
"""

from __future__ import annotations

import flax.linen as nn  # noqa: F401 (tests intercept module methods through it)
import jax

from perceiver_ar_vl.attention import causal_mask  # noqa: F401 (re-exported)
from perceiver_ar_vl.models.backbone import (  # noqa: F401
  POSITION_ENCODINGS,
  REMAT_POLICIES,
  Backbone,
)
from perceiver_ar_vl.models.ecp import ECP, segment_attention  # noqa: F401
from perceiver_ar_vl.models.perceiver_ar import PerceiverAR, check_latents  # noqa: F401
from perceiver_ar_vl.models.transformer import Transformer  # noqa: F401


def forward_logits(
  model,
  params,
  tokens_BxM,
  num_latents,
  bucket: int,
  input_mask=None,
  deterministic: bool = True,
  rngs=None,
) -> jax.Array:
  """Logits [batch, bucket, vocab] of the last `bucket` positions, for any of the models (those that
  score every position return their last `bucket`)."""
  if isinstance(model, PerceiverAR):
    return model.apply(
      params,
      tokens_BxM,
      num_latents=num_latents,
      bucket=bucket,
      input_mask=input_mask,
      deterministic=deterministic,
      rngs=rngs,
    )
  logits = model.apply(
    params, tokens_BxM, input_mask=input_mask, deterministic=deterministic, rngs=rngs
  )
  return logits[:, tokens_BxM.shape[1] - bucket :]
