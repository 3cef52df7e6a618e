"""N-gram match heads: the cross-attend finds earlier occurrences of the latest bytes by content.

A Perceiver AR cross-attend key is made from one byte's embedding, so with respect to the
prefix the model is a one-layer transformer and cannot do induction ("find where the last k
bytes occurred before and read what followed"). A match head supplies that lookup exactly:

  * the query of a latent at position i carries the code of its last k bytes, bytes
    [i-k+1, i]; the key at position j the code of the k bytes before it, [j-k, j-1];
  * codes are 32-bit hashes of the k bytes (fixed, never learned; equal k-grams give equal
    codes, distinct ones collide with probability 2^-32 per pair);
  * the head attends only to the keys whose code equals its query's (key at or before the
    query, every byte of both k-grams inside the window and valid), each with logit beta_h
    (a learned strength), against a null key of logit 0 and value 0:

        out_i = sum_{j matches i} v_j / (exp(-beta_h) + #matches(i))

    so a single match contributes v_j with weight sigmoid(beta_h), several matches average
    (an n-gram estimate of the next byte over the whole window), none gives 0;
  * v_j is a learned projection of the (LayerNorm-ed) key stream at j, the byte that followed
    the k-gram, and the heads' outputs are projected back to the model width.

Non-matching keys get no weight at all (the limit of a Scalable-Softmax scale as it grows),
so the head reads as sharply from 131,072 keys as from 1,024: what a model trained on a short
window needs to retrieve from a long one. Several n-gram lengths may run side by side (one
head each): a long one for exact retrieval, a short one for the bytes right after a boundary.

Two exact paths compute the same result: `dense_match` (the reference: a [B, S, T] boolean,
what the 'einsum' kernel uses) and `sorted_match` (keys and queries sorted together by
(code, position) and a segmented prefix sum: O(T log T) time and O(T) memory, no [B, S, T]
tensor at any window; every other kernel). A decoding cache keeps each key's code and value
(`cached_match`), and the sampler's last k bytes give the new query's code.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_FNV_PRIME = np.uint32(0x01000193)
_FNV_OFFSET = np.uint32(0x811C9DC5)


def _fmix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's finaliser: every input bit moves every output bit (uint32)."""
  h = h ^ (h >> 16)
  h = h * np.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * np.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _shift_right(x_BxT: jax.Array, amount: int, fill) -> jax.Array:
  """x shifted `amount` places to later positions along axis 1 (position t holds x[t-amount])."""
  if amount == 0:
    return x_BxT
  pad = jnp.full((x_BxT.shape[0], amount), fill, x_BxT.dtype)
  return jnp.concatenate([pad, x_BxT[:, :-amount]], axis=1)


def ngram_codes(tokens_BxT: jax.Array, valid_BxT: jax.Array, k: int):
  """(code_BxT uint32, ok_BxT bool): the code of bytes [t-k+1, t] at each position t, and
  whether all k of them lie inside the sequence and are valid (codes where not ok are
  meaningless and never compared)."""
  if k < 1:
    raise ValueError(f'An n-gram length must be >= 1, got {k}.')
  tokens = jnp.maximum(tokens_BxT, 0).astype(jnp.uint32)
  h = jnp.full(tokens.shape, _FNV_OFFSET, jnp.uint32)
  for back in range(k - 1, -1, -1):  # oldest byte first (FNV-1a over the k bytes)
    h = (h ^ _shift_right(tokens, back, np.uint32(0))) * _FNV_PRIME
  valid = jnp.broadcast_to(valid_BxT, tokens.shape)
  bad_BxT = jnp.cumsum(~valid, axis=1, dtype=jnp.int32)
  bad_before_BxT = _shift_right(bad_BxT, k, np.int32(0))
  complete_1xT = jnp.arange(tokens.shape[1])[None, :] >= k - 1
  return _fmix32(h), complete_1xT & (bad_BxT == bad_before_BxT)


def key_codes(code_BxT: jax.Array, ok_BxT: jax.Array):
  """Each key position's code: the code of the k bytes before it (the n-gram ending one
  position earlier); position 0 has none."""
  return _shift_right(code_BxT, 1, np.uint32(0)), _shift_right(ok_BxT, 1, False)


def _normalise(sum_BxSxK: jax.Array, count_BxS: jax.Array, strength: jax.Array) -> jax.Array:
  """sum / (exp(-strength) + count): the match average against the null key."""
  return sum_BxSxK / (jnp.exp(-strength) + count_BxS)[..., None]


def dense_match(q_code_BxS, q_ok_BxS, q_pos_BxS, k_code_BxT, k_ok_BxT, v_BxTxK, strength):
  """The reference: [B, S, K] match output through a dense [B, S, T] boolean of matches
  (keys at positions 0..T-1, at or before each query's position)."""
  k_pos_1xT = jnp.arange(v_BxTxK.shape[1])[None]
  match_BxSxT = (
    (q_code_BxS[:, :, None] == k_code_BxT[:, None, :])
    & q_ok_BxS[:, :, None]
    & k_ok_BxT[:, None, :]
    & (k_pos_1xT[:, None, :] <= q_pos_BxS[:, :, None])
  )
  weights_BxSxT = match_BxSxT.astype(jnp.float32)
  sum_BxSxK = jnp.einsum('bst,btk->bsk', weights_BxSxT, v_BxTxK.astype(jnp.float32))
  return _normalise(sum_BxSxK, weights_BxSxT.sum(-1), strength)


def _segmented_cumsum(values_BxNxC: jax.Array, starts_BxN: jax.Array) -> jax.Array:
  """Prefix sums along axis 1 that restart wherever `starts` is True."""

  def combine(a, b):
    a_start, a_sum = a
    b_start, b_sum = b
    return a_start | b_start, jnp.where(b_start[..., None], b_sum, a_sum + b_sum)

  return jax.lax.associative_scan(combine, (starts_BxN, values_BxNxC), axis=1)[1]


def sorted_match(q_code_BxS, q_ok_BxS, q_pos_BxS, k_code_BxT, k_ok_BxT, v_BxTxK, strength):
  """`dense_match` without any [B, S, T] tensor: keys and queries sorted together by (code,
  position, key before query), so each query's matches are the keys just before it in its
  run of equal codes, summed by a segmented prefix sum. O((S+T) log(S+T)) time, O(S+T) memory."""
  batch, keys = k_code_BxT.shape
  queries = q_code_BxS.shape[1]
  entries = keys + queries
  code_BxE = jnp.concatenate([jnp.broadcast_to(k_code_BxT, (batch, keys)), q_code_BxS], 1)
  pos_BxE = jnp.concatenate(
    [
      jnp.broadcast_to(jnp.arange(keys, dtype=jnp.int32), (batch, keys)),
      q_pos_BxS.astype(jnp.int32),
    ],
    axis=1,
  )
  kind_BxE = jnp.broadcast_to((jnp.arange(entries) >= keys).astype(jnp.int32), (batch, entries))
  index_BxE = jnp.broadcast_to(jnp.arange(entries, dtype=jnp.int32), (batch, entries))
  code_sorted, _, _, order_BxE = jax.lax.sort(
    (code_BxE, pos_BxE, kind_BxE, index_BxE), dimension=1, num_keys=3
  )
  ok_BxTx1 = jnp.broadcast_to(k_ok_BxT, (batch, keys))[..., None].astype(jnp.float32)
  payload_BxTxC = jnp.concatenate([v_BxTxK.astype(jnp.float32) * ok_BxTx1, ok_BxTx1], -1)
  payload_BxExC = jnp.pad(payload_BxTxC, ((0, 0), (0, queries), (0, 0)))
  sorted_BxExC = jnp.take_along_axis(payload_BxExC, order_BxE[..., None], axis=1)
  starts_BxE = jnp.concatenate(
    [jnp.ones((batch, 1), bool), code_sorted[:, 1:] != code_sorted[:, :-1]], axis=1
  )
  sums_BxExC = _segmented_cumsum(sorted_BxExC, starts_BxE)
  rank_BxE = jnp.zeros_like(order_BxE).at[jnp.arange(batch)[:, None], order_BxE].set(index_BxE)
  at_query_BxSxC = jnp.take_along_axis(sums_BxExC, rank_BxE[:, keys:, None], axis=1)
  out_BxSxK = _normalise(at_query_BxSxC[..., :-1], at_query_BxSxC[..., -1], strength)
  return jnp.where(q_ok_BxS[..., None], out_BxSxK, 0.0)


class NgramMatch(nn.Module):
  """One match head per n-gram length in `ngrams` (see the module docstring): a value
  projection of the key stream, a learned strength per head, an output projection."""

  ngrams: tuple[int, ...]
  d_model: int
  head_dim: int
  strength_init: float = 2.0
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    heads = len(self.ngrams)
    self.norm = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=jnp.float32)
    self.value = nn.DenseGeneral(
      (heads, self.head_dim), dtype=self.dtype, param_dtype=jnp.float32, name='value'
    )
    self.out = nn.DenseGeneral(
      self.d_model, axis=(-2, -1), dtype=self.dtype, param_dtype=jnp.float32, name='out'
    )
    self.strength = self.param(
      'strength', nn.initializers.constant(self.strength_init), (heads,), jnp.float32
    )

  def codes(self, tokens_BxT: jax.Array, valid_BxT: jax.Array):
    """Per head: (code_BxT, ok_BxT) of the n-gram ending at each position."""
    return [ngram_codes(tokens_BxT, valid_BxT, k) for k in self.ngrams]

  def values(self, x_kv_BxTxD: jax.Array) -> jax.Array:
    """Values [B, T, heads, head_dim] of the (normalised) key stream."""
    return self.value(self.norm(x_kv_BxTxD))

  def __call__(
    self,
    tokens_BxT: jax.Array,
    valid_BxT: jax.Array,
    key_ok_BxT: jax.Array,
    x_kv_BxTxD: jax.Array,
    num_queries: int,
    dense: bool,
    return_cache: bool = False,
  ):
    """Output [B, S, D] for the last S = `num_queries` positions (queries see keys at or
    before them); `dense` picks the reference path. With `return_cache` also (key codes
    [B, heads, T] uint32, values [B, T, heads, head_dim]): what a decoding cache keeps."""
    keys = tokens_BxT.shape[1]
    v_BxTxHxK = self.values(x_kv_BxTxD)
    q_pos_BxS = jnp.broadcast_to(
      jnp.arange(keys - num_queries, keys), (tokens_BxT.shape[0], num_queries)
    )
    match = dense_match if dense else sorted_match
    outs, cached_codes = [], []
    for h, (code_BxT, ok_BxT) in enumerate(self.codes(tokens_BxT, valid_BxT)):
      k_code_BxT, k_ok_BxT = key_codes(code_BxT, ok_BxT)
      k_ok_BxT = k_ok_BxT & key_ok_BxT
      q_slice = slice(keys - num_queries, keys)
      outs.append(
        match(
          code_BxT[:, q_slice],
          ok_BxT[:, q_slice],
          q_pos_BxS,
          k_code_BxT,
          k_ok_BxT,
          v_BxTxHxK[:, :, h],
          self.strength[h],
        )
      )
      cached_codes.append(k_code_BxT)
    out_BxSxD = self.out(jnp.stack(outs, axis=2).astype(self.dtype))
    if return_cache:
      return out_BxSxD, (jnp.stack(cached_codes, axis=1), v_BxTxHxK)
    return out_BxSxD

  def cached(
    self,
    query_codes_BxG: jax.Array,
    query_ok_BxG: jax.Array,
    codes_BxGxT: jax.Array,
    key_ok_BxGxT: jax.Array,
    v_BxGxTxK: jax.Array,
  ) -> jax.Array:
    """Output [B, 1, D] of one query with code `query_codes` per head (valid where
    `query_ok`), over cached key codes and values (heads-major); `key_ok` marks the keys it
    may match."""
    outs = []
    for h in range(len(self.ngrams)):
      match_BxT = (
        (codes_BxGxT[:, h] == query_codes_BxG[:, h, None])
        & key_ok_BxGxT[:, h]
        & query_ok_BxG[:, h, None]
      )
      weights_BxT = match_BxT.astype(jnp.float32)
      sum_BxK = jnp.einsum('bt,btk->bk', weights_BxT, v_BxGxTxK[:, h].astype(jnp.float32))
      outs.append(_normalise(sum_BxK, weights_BxT.sum(-1), self.strength[h]))
    return self.out(jnp.stack(outs, axis=1)[:, None].astype(self.dtype))
