"""The config's keys with their defaults (the seed experiment) and what each preset changes.

`config_lib` builds configs from these (`make_config`, `apply_preset`) and validates them.
"""

from __future__ import annotations

import ml_collections

from perceiver_ar_vl import data


def base_config() -> ml_collections.ConfigDict:
  """Every config key with its default: the seed experiment (enwik8, window 1024, GPU)."""
  c = ml_collections.ConfigDict()
  c.name = 'base'
  c.seed = 0
  # JAX's persistent compilation cache: 'auto' = one per user ($XDG_CACHE_HOME or ~/.cache,
  # /perceiver_ar_vl/jax; a directory set through JAX's own --jax_compilation_cache_dir or
  # JAX_COMPILATION_CACHE_DIR wins), '' = off, else that directory.
  c.compile_cache_dir = 'auto'

  c.model = ml_collections.ConfigDict()
  c.model.type = (
    'perceiver_ar'  # a config_choices.MODEL_TYPES key: perceiver_ar | transformer | ecp
  )
  c.model.vocab_size = 256  # byte tokens
  c.model.num_layers = 6  # the cross-attend counts as layer 1
  c.model.num_heads = 8  # d_model / num_heads channels per head
  c.model.d_model = 512  # width of every layer
  c.model.mlp_dim = 2048  # hidden width of each block's MLP
  c.model.max_context = 1024  # M, the window
  c.model.dropout_rate = 0.1  # residual branches, training only
  c.model.cross_attend_dropout = 0.0  # prefix keys dropped from the cross-attend (training)
  c.model.latent_dropout = 0.0  # active latents dropped as latent-layer keys (training)
  c.model.activation = 'gelu'  # gelu | relu | sq_relu
  c.model.position_encoding = 'rotary'  # rotary | absolute (learned) | sinusoidal (fixed)
  c.model.rotary_fraction = 0.5  # share of each head's channels that rotate
  c.model.max_wavelength = 10_000.0  # rotary: the longest wavelength; >= the window
  # rotary: 'half' rotates channel pairs (i, i + R/2) at W^(-i/(R/2)) (ours); 'interleaved'
  # pairs (2i, 2i + 1) at W^(-i/(R/2 - 1)), as google-research/perceiver-ar does.
  c.model.rotary_convention = 'half'
  # absolute / sinusoidal tables: 'window' counts positions from the window's start;
  # 'first_byte' from each example's first valid byte (window index - left padding before
  # it), as the original numbers an example's bytes. Rotary is shift-invariant: no effect.
  c.model.position_origin = 'window'
  c.model.layer_norm_epsilon = 1e-6  # every LayerNorm; the original (Haiku) uses 1e-5
  # Perceiver AR's cross-attend: the original's z_linear (a Linear with bias on the latents'
  # query embeddings, also their residual), its own head count and MLP width (0 = as the
  # latent layers).
  c.model.latent_query_projection = False
  c.model.num_cross_attend_heads = 0
  c.model.cross_attend_mlp_dim = 0
  # Long context by content (docs/match_heads.md; off = the original's model):
  # match_ngrams: one n-gram match head per length k in the cross-attend (layers/match.py):
  #   a latent finds the earlier positions that followed its last k bytes and reads them;
  # match_strength_init: each head's initial log-weight of one match against none;
  # cross_attend_rotary_fraction: the cross-attend's rotary share (-1 = rotary_fraction; 0 =
  #   none: no fixed-offset shortcut, what lets a copy learned at one distance work at all);
  # cross_attend_log_scale: Scalable-Softmax on the cross-attend's heads (logits scaled by a
  #   learned s * ln(positions seen)), so their attention stays peaked as the window grows.
  c.model.match_ngrams = ()
  c.model.match_strength_init = 2.0
  c.model.cross_attend_rotary_fraction = -1.0
  c.model.cross_attend_log_scale = False
  c.model.attention_impl = 'auto'  # auto | einsum | xla | cudnn | chunked
  c.model.dtype = 'float32'  # compute dtype; parameters stay float32
  c.model.remat = 'none'  # none | block | dots: recompute activations in the backward pass
  # ECP (model.type='ecp'; docs/ecp.md): segment length m (window / 8, as the authors' 8
  # segments), and the authors' three choices, off by default (our standard attention).
  c.model.ecp_segment_length = 128
  c.model.ecp_shared_kv = False  # one projection as keys and values (K = V)
  c.model.ecp_rotary_first_layer_only = False  # rotary on the full head dim, layer 0 only
  c.model.ecp_segment0_out = False  # segment 0 gets its own attention output projection

  c.latents = ml_collections.ConfigDict()
  c.latents.strategy = 'fixed'  # fixed | uniform | curriculum
  c.latents.min = 64  # uniform / curriculum: the smallest N
  c.latents.max = 512  # the largest N (fixed: N itself); at most the window
  c.latents.buckets = (32, 64, 128, 256, 512, 1024)  # static shapes: one compile each
  c.latents.schedule = 'linear'  # curriculum: linear | stepwise | staircase
  c.latents.warmup_fraction = 0.5  # curriculum linear/stepwise: fraction of training growing N
  # curriculum staircase (the seed project's): N = min(max, min + stair_size * floor(step /
  # (steps / stairs))) over the whole run; stair_size is in seed units, as min and max.
  c.latents.stair_size = 32
  c.latents.stairs = 14

  # A curriculum over the window (windows.py): steps see the last W <= M bytes, W growing
  # from window.min to model.max_context through window.buckets (one compile each).
  c.window = ml_collections.ConfigDict()
  c.window.schedule = 'none'  # none (W = M) | linear | stepwise | fixed (W = window.min)
  c.window.min = 0  # the first window; >= latents.max (unused with schedule 'none')
  c.window.buckets = ()  # window sizes, ending at max_context; () = powers of two from min
  c.window.warmup_fraction = 0.5  # fraction of training over which W grows to M

  c.data = ml_collections.ConfigDict(dict(data.DEFAULTS))  # keys: data/datasets.py

  c.train = ml_collections.ConfigDict()
  c.train.steps = 100_000  # optimizer steps
  c.train.batch_size = 32  # global, split over every device of every process
  c.train.grad_accum_steps = 1  # microbatches per step (same global batch, less memory)
  # FSDP: shard parameters and optimizer state over the devices (each holds ~1/devices of
  # them; XLA all-gathers them per step) instead of replicating them. Same results.
  c.train.fsdp = False
  c.train.learning_rate = 3e-4  # peak, after warmup
  c.train.lr_schedule = 'cosine'  # cosine | constant (both after linear warmup)
  c.train.warmup_steps = 1_000  # linear warmup from 0
  c.train.b1 = 0.9  # AdamW betas
  c.train.b2 = 0.999
  c.train.weight_decay = 0.0
  c.train.grad_clip = 1.0  # global gradient norm
  c.train.z_loss = 1e-4  # times mean(logsumexp(logits)^2), averaged over targets
  # Short-context training: this fraction of training windows (drawn per window and step)
  # keeps only a random-length suffix of L ~ U[1, M] bytes; the rest is left padding that is
  # neither attended nor scored, so latents also learn to predict from a short context.
  c.train.random_truncation = 0.0
  c.train.log_every = 100  # steps between metric writes (one device transfer each)
  c.train.checkpoint_every = 2_000  # steps between saves (also at the end and on a signal)
  c.train.keep_checkpoints = 3  # newest checkpoints kept
  # Also kept, forever (a step is kept if any of the three keeps it; docs/robustness.md):
  # keep_every: every saved step that is a multiple of it (0 = none; a multiple of
  #   checkpoint_every); keep_best: the k saved steps with the lowest validation bits per byte
  #   (0 = none; > 0 scores train.eval_max_bytes of validation at every regular save).
  c.train.keep_every = 0
  c.train.keep_best = 0
  c.train.eval_every = 5_000  # validation bits per byte during training; 0 = only at the end
  c.train.eval_max_bytes = 200_000  # bytes of validation scored during training
  # (first, last): a jax.profiler trace of those steps (counted from 1) in <workdir>/profile,
  # for TensorBoard's profile tab or Perfetto; () = none.
  c.train.profile_steps = ()
  c.train.wandb = False  # Weights & Biases logging; imported only when True
  c.train.wandb_project = 'perceiver_ar_vl'

  c.eval = ml_collections.ConfigDict()
  c.eval.num_latents = 0  # 0 = the training maximum latents.max
  c.eval.latents_sweep = ()  # extra latent counts to score, e.g. (32, 64, 128, 256, 512, 1024)
  c.eval.splits = ('validation', 'test')  # of config_choices.SPLITS
  c.eval.max_bytes = 0  # 0 = the whole split
  c.eval.batch_size = 64  # windows per evaluation step
  c.eval.mode = 'blocks'  # blocks (every target once) | stride1 (exact, slow)
  # A saved step, -1 = the latest or 'best' = the kept step with the lowest validation bits
  # per byte (a run trained with train.keep_best > 0); an int or that string.
  c.eval.checkpoint_step = ml_collections.FieldReference(-1, field_type=object)
  # Windows to evaluate at (model.max_context each; the parameters do not depend on it), e.g.
  # (1024, 8192, 131072): train short, evaluate long. () = model.max_context only. On the copy
  # task each window's examples are that long (copy distance window / 2), two of them scored.
  c.eval.windows = ()

  c.sample = ml_collections.ConfigDict()
  c.sample.prompt = 'The '  # UTF-8; cropped to the last window bytes
  c.sample.length = 256  # bytes to generate
  c.sample.num_latents = 0  # 0 = the training maximum latents.max
  c.sample.temperature = 0.8  # 0 = greedy
  c.sample.top_k = 0  # 0 = no top-k filter
  c.sample.top_p = 0.95  # 1 = no nucleus filter
  c.sample.seed = 0  # step t draws with fold_in(PRNGKey(seed), t)
  c.sample.cached = True  # keep keys/values between bytes (False: rerun the window)
  return c


# What each preset changes in the base config (the seed experiment); `window` is
# model.max_context. Latent counts, buckets and the ECP segment length then scale with it.
PRESET_SETTINGS = {
  '': {'model.dtype': 'bfloat16'},  # the seed experiment, on a GPU
  'gpu': {'model.dtype': 'bfloat16'},
  'cpu': {
    'data.name': 'text_file',
    'model': dict(num_layers=4, num_heads=4, d_model=128, mlp_dim=512, max_context=256),
    'model.dropout_rate': 0.0,
    'train': dict(
      steps=2_000,
      batch_size=16,
      learning_rate=2e-3,
      warmup_steps=100,
      log_every=50,
      checkpoint_every=500,
      eval_every=250,
      eval_max_bytes=16_384,
    ),
    'eval': dict(latents_sweep=(8, 16, 32, 64, 128, 256), max_bytes=65_536),
  },
  'smoke': {
    'data.name': 'copy',
    'model': dict(num_layers=2, num_heads=4, d_model=64, mlp_dim=128, max_context=128),
    'model.dropout_rate': 0.0,
    'train': dict(
      steps=800,
      batch_size=16,
      learning_rate=3e-3,
      warmup_steps=50,
      log_every=50,
      checkpoint_every=200,
      eval_every=0,
      eval_max_bytes=8_192,
      z_loss=0.0,
    ),
    'eval': dict(latents_sweep=(8, 16, 32, 64, 128), max_bytes=8_192, batch_size=8),
    'sample': dict(length=64, prompt='abcdefgh', temperature=0.0),
  },
}
# 'cpu_long': the 'cpu' preset with a 4096-byte window; each evaluation window costs its
# whole cross-attend, so fewer latent counts are scored.
PRESET_SETTINGS['cpu_long'] = {
  **PRESET_SETTINGS['cpu'],
  'model': {**PRESET_SETTINGS['cpu']['model'], 'max_context': 4096},
  'eval': {**PRESET_SETTINGS['cpu']['eval'], 'latents_sweep': (32, 128, 256)},
}
