"""Next-byte cross-entropy over the active latents."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


class LossOutput(NamedTuple):
  """Mean losses over the scored targets.

  nats:        mean next-byte cross-entropy (natural log).
  bits:        the same in bits (bits per byte for byte-level data).
  objective:   what training minimises: nats + z_loss * mean(logsumexp(logits)^2).
  num_targets: how many targets were scored (a float32 scalar).
  """

  nats: jax.Array
  bits: jax.Array
  objective: jax.Array
  num_targets: jax.Array


def next_token_targets(window_BxW: jax.Array, bucket: int) -> jax.Array:
  """Targets [batch, bucket] of the last `bucket` positions of a window of W = M+1 tokens.

  Slot j sits at input position M-B+j and predicts window token M-B+j+1.
  """
  return window_BxW[:, window_BxW.shape[1] - bucket :]


def active_slots(bucket: int, num_latents) -> jax.Array:
  """[bucket] bool: True for the last `num_latents` slots (traced N is fine)."""
  return jnp.arange(bucket) >= bucket - num_latents


def token_nll(logits_BxSxV: jax.Array, window_BxW: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-slot next-token negative log-likelihood [B, S] (nats) and log-partition [B, S]."""
  targets_BxS = next_token_targets(window_BxW, logits_BxSxV.shape[1])
  logits_BxSxV = logits_BxSxV.astype(jnp.float32)
  log_z_BxS = jax.nn.logsumexp(logits_BxSxV, axis=-1)
  target_logit_BxS = jnp.take_along_axis(logits_BxSxV, targets_BxS[..., None], axis=-1)[..., 0]
  return log_z_BxS - target_logit_BxS, log_z_BxS


def cross_entropy_loss(
  logits_BxSxV: jax.Array,
  window_BxW: jax.Array,
  num_latents,
  *,
  z_loss: float = 0.0,
  weights_BxS: jax.Array | None = None,
) -> LossOutput:
  """Mean next-token cross-entropy over the active latent slots.

  Args:
    logits_BxSxV: model output for the last S (= bucket) input positions.
    window_BxW: the token window of W = M+1 tokens whose first M were the model input.
    num_latents: N, active slots are the last N of the S slots (int or traced scalar).
    z_loss: coefficient of the auxiliary log-partition penalty (the original's 1e-4). We
      average over targets where the original summed; Adam is scale-invariant.
    weights_BxS: optional 0/1 weights (e.g. to skip padded targets).
  """
  bucket = logits_BxSxV.shape[1]
  nll_BxS, log_z_BxS = token_nll(logits_BxSxV, window_BxW)
  w_BxS = jnp.broadcast_to(active_slots(bucket, num_latents), nll_BxS.shape).astype(jnp.float32)
  if weights_BxS is not None:
    w_BxS = w_BxS * weights_BxS.astype(jnp.float32)
  count = w_BxS.sum()
  denom = jnp.maximum(count, 1.0)
  nats = (nll_BxS * w_BxS).sum() / denom
  objective = nats + z_loss * (jnp.square(log_z_BxS) * w_BxS).sum() / denom
  return LossOutput(nats=nats, bits=nats / math.log(2), objective=objective, num_targets=count)
