"""The analytic FLOP model: one place that counts what a train step computes.

Counted: every matrix multiply of the forward pass at 2 FLOPs per multiply-add —
  * per attention layer with S queries and T keys/values (width d, MLP width f):
      projections   2*S*d*d (q) + 4*T*d*d (k, v) + 2*S*d*d (out)
      attention     2*S*T*d (scores q k^T) + 2*S*T*d (weighted sum of v)
      MLP           4*S*d*f
      match heads   with c value channels (Perceiver AR's n-gram match heads):
                    2*T*d*c (values) + 2*S*c*d (output) + 2*S*T*c (the match sums, dense
                    as attention is; their code comparisons are integer work, not counted)
  * the output head 2*S*d*V over the positions that get logits.
Each model gives the shape of each of its attention layers (`LanguageModel.attention_shapes`:
queries S, projected keys T, keys per query), and the head runs on its last layer's queries:
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

from perceiver_ar_vl import config_lib
from perceiver_ar_vl.models.base import LanguageModel


def attention_layer_flops(
  queries: int,
  keys: int,
  d_model: int,
  mlp_dim: int,
  keys_per_query: int | None = None,
  match_channels: int = 0,
) -> int:
  """Forward FLOPs of one pre-LN attention block (projections, attention, MLP, match heads),
  one example: `queries` positions with a query and an MLP, `keys` positions whose
  keys/values are projected, `keys_per_query` keys scored by each query (default: all
  `keys`), `match_channels` value channels of n-gram match heads."""
  keys_per_query = keys if keys_per_query is None else keys_per_query
  projections = 2 * queries * d_model * d_model * 2 + 4 * keys * d_model * d_model
  attention = 4 * queries * keys_per_query * d_model
  mlp = 4 * queries * d_model * mlp_dim
  c = match_channels
  match = 2 * keys * d_model * c + 2 * queries * c * d_model + 2 * queries * keys_per_query * c
  return projections + attention + mlp + match


def forward_flops(model: LanguageModel, bucket: int, batch: int = 1) -> int:
  """Forward FLOPs of `batch` windows of `model` at latent bucket `bucket` (models that score
  every position ignore it): its attention layers plus the head over its last layer's queries."""
  shapes = model.attention_shapes(bucket)
  layers = sum(
    attention_layer_flops(
      s.queries,
      s.keys,
      model.d_model,
      s.mlp_dim or model.mlp_dim,
      s.keys_per_query,
      s.match_channels,
    )
    for s in shapes
  )
  return batch * (layers + 2 * shapes[-1].queries * model.d_model * model.vocab_size)


def train_step_flops(config: ml_collections.ConfigDict, bucket: int, batch: int | None = None):
  """FLOPs of one train step (forward + backward = 3x forward) of `config`'s model at latent
  bucket `bucket`, over `batch` windows (default: `config.train.batch_size`)."""
  model = config_lib.create_model(config)
  return 3 * forward_flops(model, bucket, config.train.batch_size if batch is None else batch)
