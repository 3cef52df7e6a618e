"""The analytic FLOP model: one place that counts what a train step computes.

Counted: every matrix multiply of the forward pass at 2 FLOPs per multiply-add —
  * per attention layer with S queries and T keys/values (width d, MLP width f):
      projections   2*S*d*d (q) + 4*T*d*d (k, v) + 2*S*d*d (out)
      attention     2*S*T*d (scores q k^T) + 2*S*T*d (weighted sum of v)
      MLP           4*S*d*f
  * the output head 2*S*d*V over the positions that get logits.
Perceiver AR: the cross-attend has S = B (the latent bucket: every slot is computed, active or
not) and T = M; each of the L-1 latent layers has S = T = B; logits for the B slots.
Transformer: L layers with S = T = M; logits for all M positions.
ECP (segments of m): L layers with S = M queries and T = 2m keys per query (the previous
segment and its own; segment 0's empty previous segment is computed too); all M logits.
A train step is 3x the forward FLOPs (the backward pass is two matmuls per forward matmul).
Not counted: embeddings (gathers), LayerNorm, softmax, rotary, masks, the optimizer, and the
scores recomputed by the chunked kernel's backward (a kernel choice, not model arithmetic).
Attention scores are counted densely (S*T, no causal discount), as PaLM's MFU formula does.
"""

from __future__ import annotations

import ml_collections


def attention_layer_flops(queries: int, keys: int, d_model: int, mlp_dim: int) -> int:
  """Forward FLOPs of one pre-LN attention block (projections, attention, MLP), one example."""
  projections = 2 * queries * d_model * d_model * 2 + 4 * keys * d_model * d_model
  attention = 4 * queries * keys * d_model
  mlp = 4 * queries * d_model * mlp_dim
  return projections + attention + mlp


def forward_flops(
  model_type: str,
  *,
  num_layers: int,
  d_model: int,
  mlp_dim: int,
  context: int,
  num_latents: int | None = None,
  segment_length: int | None = None,
  vocab_size: int = 256,
  batch: int = 1,
) -> int:
  """Forward FLOPs of `batch` windows of `context` bytes (see the module docstring).

  `num_latents` is the bucket B for Perceiver AR, `segment_length` m for ECP.
  """
  if model_type == 'perceiver_ar':
    if num_latents is None or not 1 <= num_latents <= context:
      raise ValueError(f'num_latents must be in [1, {context}] for perceiver_ar.')
    layers = attention_layer_flops(num_latents, context, d_model, mlp_dim)
    layers += (num_layers - 1) * attention_layer_flops(num_latents, num_latents, d_model, mlp_dim)
    logits = num_latents
  elif model_type == 'transformer':
    layers = num_layers * attention_layer_flops(context, context, d_model, mlp_dim)
    logits = context
  elif model_type == 'ecp':
    m = context if segment_length is None else segment_length
    keys = m if m == context else 2 * m  # one segment has no previous one
    # Projections of k/v cover the M positions once; scores and values 2m keys per query.
    layer = attention_layer_flops(context, context, d_model, mlp_dim)
    layer += 4 * context * (keys - context) * d_model
    layers = num_layers * layer
    logits = context
  else:
    raise ValueError(f'Unknown model type {model_type!r}; choose perceiver_ar, transformer or ecp.')
  return batch * (layers + 2 * logits * d_model * vocab_size)


def train_step_flops(config: ml_collections.ConfigDict, bucket: int, batch: int | None = None):
  """FLOPs of one train step (forward + backward = 3x forward) of `config`'s model at latent
  bucket `bucket`, over `batch` windows (default: `config.train.batch_size`)."""
  m = config.model
  return 3 * forward_flops(
    m.type,
    num_layers=m.num_layers,
    d_model=m.d_model,
    mlp_dim=m.mlp_dim,
    context=m.max_context,
    num_latents=bucket,
    segment_length=m.get('ecp_segment_length'),
    vocab_size=m.vocab_size,
    batch=config.train.batch_size if batch is None else batch,
  )
