"""The run spec: every config key, declared once, as a frozen dataclass per section, with its
type, its default (the seed experiment) and what it means.

A run is read once into a `RunSpec` (`config_lib.read_spec`: checked by `config_lib.validate`,
then frozen); the library reads the spec's typed fields, never an ml_collections ConfigDict.
`to_config` turns a spec into the ConfigDict that config files, presets and `--config.*`
overrides edit (`config_defaults.base_config` is `to_config(RunSpec())`), and `from_config`
turns one back. No JAX is imported here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from perceiver_ar_vl import errors


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """The model (`config_lib.create_model` passes each field a model class declares)."""

  type: str = 'perceiver_ar'  # a config_choices.MODEL_TYPES key: perceiver_ar | transformer | ecp
  vocab_size: int = 256  # byte tokens
  num_layers: int = 6  # the cross-attend counts as layer 1
  num_heads: int = 8  # d_model / num_heads channels per head
  d_model: int = 512  # width of every layer
  mlp_dim: int = 2048  # hidden width of each block's MLP
  max_context: int = 1024  # M, the window
  dropout_rate: float = 0.1  # residual branches, training only
  cross_attend_dropout: float = 0.0  # prefix keys dropped from the cross-attend (training)
  latent_dropout: float = 0.0  # active latents dropped as latent-layer keys (training)
  activation: str = 'gelu'  # gelu | relu | sq_relu
  position_encoding: str = 'rotary'  # rotary | absolute (learned) | sinusoidal (fixed)
  rotary_fraction: float = 0.5  # share of each head's channels that rotate
  max_wavelength: float = 10_000.0  # rotary: the longest wavelength; >= the window
  # rotary: 'half' rotates channel pairs (i, i + R/2) at W^(-i/(R/2)) (ours); 'interleaved'
  # pairs (2i, 2i + 1) at W^(-i/(R/2 - 1)), as google-research/perceiver-ar does.
  rotary_convention: str = 'half'
  # absolute / sinusoidal tables: 'window' counts positions from the window's start;
  # 'first_byte' from each example's first valid byte (window index - left padding before
  # it), as the original numbers an example's bytes. Rotary is shift-invariant: no effect.
  position_origin: str = 'window'
  layer_norm_epsilon: float = 1e-6  # every LayerNorm; the original (Haiku) uses 1e-5
  # Perceiver AR's cross-attend: the original's z_linear (a Linear with bias on the latents'
  # query embeddings, also their residual), its own head count and MLP width (0 = as the
  # latent layers).
  latent_query_projection: bool = False
  num_cross_attend_heads: int = 0
  cross_attend_mlp_dim: int = 0
  # Long context by content (docs/match_heads.md; off = the original's model):
  # match_ngrams: one n-gram match head per length k in the cross-attend (layers/match.py):
  #   a latent finds the earlier positions that followed its last k bytes and reads them;
  # match_strength_init: each head's initial log-weight of one match against none;
  # cross_attend_rotary_fraction: the cross-attend's rotary share (-1 = rotary_fraction; 0 =
  #   none: no fixed-offset shortcut, what lets a copy learned at one distance work at all);
  # cross_attend_log_scale: Scalable-Softmax on the cross-attend's heads (logits scaled by a
  #   learned s * ln(positions seen)), so their attention stays peaked as the window grows.
  match_ngrams: tuple[int, ...] = ()
  match_strength_init: float = 2.0
  cross_attend_rotary_fraction: float = -1.0
  cross_attend_log_scale: bool = False
  attention_impl: str = 'auto'  # auto | einsum | xla | cudnn | chunked
  dtype: str = 'float32'  # compute dtype; parameters stay float32
  remat: str = 'none'  # none | block | dots: recompute activations in the backward pass
  # ECP (model.type='ecp'; docs/ecp.md): segment length m (window / 8, as the authors' 8
  # segments), and the authors' three choices, off by default (our standard attention).
  ecp_segment_length: int = 128
  ecp_shared_kv: bool = False  # one projection as keys and values (K = V)
  ecp_rotary_first_layer_only: bool = False  # rotary on the full head dim, layer 0 only
  ecp_segment0_out: bool = False  # segment 0 gets its own attention output projection


@dataclasses.dataclass(frozen=True)
class LatentsSpec:
  """How many latents N each step uses (latents.py) and the buckets compiled for them."""

  strategy: str = 'fixed'  # fixed | uniform | curriculum
  min: int = 64  # uniform / curriculum: the smallest N
  max: int = 512  # the largest N (fixed: N itself); at most the window
  buckets: tuple[int, ...] = (32, 64, 128, 256, 512, 1024)  # static shapes: one compile each
  schedule: str = 'linear'  # curriculum: linear | stepwise | staircase
  warmup_fraction: float = 0.5  # curriculum linear/stepwise: fraction of training growing N
  # curriculum staircase (the seed project's): N = min(max, min + stair_size * floor(step /
  # (steps / stairs))) over the whole run; stair_size is in seed units, as min and max.
  stair_size: int = 32
  stairs: int = 14


@dataclasses.dataclass(frozen=True)
class WindowSpec:
  """A curriculum over the window (windows.py): steps see the last W <= M bytes, W growing
  from window.min to model.max_context through window.buckets (one compile each)."""

  schedule: str = 'none'  # none (W = M) | linear | stepwise | fixed (W = window.min)
  min: int = 0  # the first window; >= latents.max (unused with schedule 'none')
  buckets: tuple[int, ...] = ()  # window sizes, ending at max_context; () = powers of two
  warmup_fraction: float = 0.5  # fraction of training over which W grows to M


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What data/datasets.py reads (`data.make_dataset`)."""

  name: str = 'enwik8'  # enwik8 | text_file | copy | recall
  path: str = ''  # a file (enwik8: the zip or the raw file; '' downloads it)
  heldout_path: str = ''  # text_file: a separate validation/test file
  data_dir: str = ''  # where the prepared tfds files go ('' = tfds' default)
  # text_file: `path` may name several files separated by commas (concatenated in order);
  # with heldout_path all of them train and its first half validates, its second half tests.
  copy_mode: str = 'copy'  # copy task: 'copy' (second half repeats the first) | 'mirror'
  # copy task: alphabet size k in [2, 256]; symbol i is byte (ord('a') + i) % 256
  copy_vocab: int = 16
  copy_length: int = 0  # copy task: bytes per example L (0 = the window); distance ~L/2
  # 0 = the streamed task; c > 0 = the original's aligned task: one example per row, cropped
  # to its first ~U[c, L] bytes and left-padded (copy_task.py)
  copy_min_crop: int = 0
  copy_length_min: int = 0  # curriculum: the first copy_length (0 = no curriculum)
  copy_length_schedule: str = 'none'  # curriculum shape: none | linear | stepwise | staircase
  copy_length_warmup_fraction: float = 0.5  # linear / stepwise: fraction of training growing L
  copy_length_stairs: int = 4  # staircase: equal stages of the whole run, min to copy_length
  # (a, b): each streamed training example's length drawn per example, log-uniformly in
  # [a, b], so copies come at many distances (no fixed offset solves it); () = copy_length.
  # Evaluation keeps copy_length: train on short copies, evaluate long ones.
  copy_train_lengths: tuple[int, ...] = ()
  # The recall task (MQAR, recall_task.py): pairs per example, symbols per alphabet, key length.
  recall_pairs: int = 32
  recall_vocab: int = 16
  recall_key_bytes: int = 2
  in_memory_bytes: int = 1 << 30  # 1 GiB: enwik8's 90 MB train split is held in memory
  record_bytes: int = 64 * 1024  # bytes per prepared array_record record

  def get(self, key: str, default: Any = None) -> Any:
    """`getattr` with a default, as a mapping's `get` (what data/ reads keys through)."""
    return getattr(self, key, default)


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  """The optimizer, the run length, checkpoints, logging and validation (training/)."""

  steps: int = 100_000  # optimizer steps
  batch_size: int = 32  # global, split over every device of every process
  grad_accum_steps: int = 1  # microbatches per step (same global batch, less memory)
  # FSDP: shard parameters and optimizer state over the devices (each holds ~1/devices of
  # them; XLA all-gathers them per step) instead of replicating them. Same results.
  fsdp: bool = False
  learning_rate: float = 3e-4  # peak, after warmup
  lr_schedule: str = 'cosine'  # cosine | constant (both after linear warmup)
  warmup_steps: int = 1_000  # linear warmup from 0
  b1: float = 0.9  # AdamW betas
  b2: float = 0.999
  weight_decay: float = 0.0
  grad_clip: float = 1.0  # global gradient norm
  z_loss: float = 1e-4  # times mean(logsumexp(logits)^2), averaged over targets
  # Short-context training: this fraction of training windows (drawn per window and step)
  # keeps only a random-length suffix of L ~ U[1, M] bytes; the rest is left padding that is
  # neither attended nor scored, so latents also learn to predict from a short context.
  random_truncation: float = 0.0
  log_every: int = 100  # steps between metric writes (one device transfer each)
  checkpoint_every: int = 2_000  # steps between saves (also at the end and on a signal)
  keep_checkpoints: int = 3  # newest checkpoints kept
  # Also kept, forever (a step is kept if any of the three keeps it; docs/robustness.md):
  # keep_every: every saved step that is a multiple of it (0 = none; a multiple of
  #   checkpoint_every); keep_best: the k saved steps with the lowest validation bits per byte
  #   (0 = none; > 0 scores train.eval_max_bytes of validation at every regular save).
  keep_every: int = 0
  keep_best: int = 0
  eval_every: int = 5_000  # validation bits per byte during training; 0 = only at the end
  eval_max_bytes: int = 200_000  # bytes of validation scored during training
  # (first, last): a jax.profiler trace of those steps (counted from 1) in <workdir>/profile,
  # for TensorBoard's profile tab or Perfetto; () = none.
  profile_steps: tuple[int, ...] = ()
  wandb: bool = False  # Weights & Biases logging; imported only when True
  wandb_project: str = 'perceiver_ar_vl'


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """What `--mode=eval` scores (evaluation/): latent counts, windows, splits, blocks or stride 1."""

  num_latents: int = 0  # 0 = the training maximum latents.max
  latents_sweep: tuple[int, ...] = ()  # extra latent counts, e.g. (32, 64, 128, 256, 512, 1024)
  splits: tuple[str, ...] = ('validation', 'test')  # of config_choices.SPLITS
  max_bytes: int = 0  # 0 = the whole split
  batch_size: int = 64  # windows per evaluation step
  mode: str = 'blocks'  # blocks (every target once) | stride1 (exact, slow)
  # A saved step, -1 = the latest or 'best' = the kept step with the lowest validation bits
  # per byte (a run trained with train.keep_best > 0); an int or that string.
  checkpoint_step: int | str = -1
  # Windows to evaluate at (model.max_context each; the parameters do not depend on it), e.g.
  # (1024, 8192, 131072): train short, evaluate long. () = model.max_context only. On the copy
  # task each window's examples are that long (copy distance window / 2), two of them scored.
  windows: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class SampleSpec:
  """What `--mode=sample` generates (sampling/)."""

  prompt: str = 'The '  # UTF-8; cropped to the last window bytes
  length: int = 256  # bytes to generate
  num_latents: int = 0  # 0 = the training maximum latents.max
  temperature: float = 0.8  # 0 = greedy
  top_k: int = 0  # 0 = no top-k filter
  top_p: float = 0.95  # 1 = no nucleus filter
  seed: int = 0  # step t draws with fold_in(PRNGKey(seed), t)
  cached: bool = True  # keep keys/values between bytes (False: rerun the window)


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One run: its name, seed, compilation cache, CPU execution and a spec per section."""

  name: str = 'base'
  seed: int = 0
  # JAX's persistent compilation cache: 'auto' = one per user ($XDG_CACHE_HOME or ~/.cache,
  # /perceiver_ar_vl/jax; a directory set through JAX's own --jax_compilation_cache_dir or
  # JAX_COMPILATION_CACHE_DIR wins), '' = off, else that directory.
  compile_cache_dir: str = 'auto'
  # On a CPU backend: 'inline' runs each step on the calling thread and lets malloc keep the
  # step's freed temporaries for the next one (no page faults; docs/performance.md); 'async'
  # is JAX's default dispatch. Set before JAX starts (runtime.configure_cpu_execution).
  cpu_execution: str = 'inline'
  model: ModelSpec = ModelSpec()
  latents: LatentsSpec = LatentsSpec()
  window: WindowSpec = WindowSpec()
  data: DataSpec = DataSpec()
  train: TrainSpec = TrainSpec()
  eval: EvalSpec = EvalSpec()
  sample: SampleSpec = SampleSpec()

  def replace(self, **sections: Any) -> RunSpec:
    """A copy with fields replaced; a section given as a dict updates only those keys, e.g.
    `spec.replace(train={'steps': 10})`."""
    changes = {
      key: dataclasses.replace(getattr(self, key), **value) if isinstance(value, dict) else value
      for key, value in sections.items()
    }
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def to_config(spec: RunSpec) -> ml_collections.ConfigDict:
  """The ConfigDict of `spec`: what config files, presets and overrides edit."""
  config = ml_collections.ConfigDict(dataclasses.asdict(spec))
  # A step number or the word 'best': a field of no fixed type (ml_collections types by value).
  step = spec.eval.checkpoint_step
  config.eval.checkpoint_step = ml_collections.FieldReference(step, field_type=object)
  return config


def _typed(value: Any) -> Any:
  """Lists (a JSON round trip, ConfigDict's own) as tuples, as the dataclasses declare."""
  return tuple(_typed(v) for v in value) if isinstance(value, list | tuple) else value


def from_config(config: ml_collections.ConfigDict | RunSpec) -> RunSpec:
  """The frozen spec of `config` (a ConfigDict of `to_config`'s keys); a key no section
  declares is one UserError naming it (`config_lib.read_spec` checks everything else)."""
  if isinstance(config, RunSpec):
    return config
  sections, top = {}, {}
  classes = {f.name: f.default.__class__ for f in dataclasses.fields(RunSpec)}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict) and key in classes:
      declared = {f.name for f in dataclasses.fields(classes[key])}
      _check_declared(key, value.keys(), declared)
      sections[key] = classes[key](**{k: _typed(v) for k, v in value.items()})
    else:
      top[key] = value
  _check_declared('', top, {f.name for f in dataclasses.fields(RunSpec)} - set(sections))
  return RunSpec(**top, **sections)


def _check_declared(section: str, keys, declared: set[str]) -> None:
  """One UserError for the first of `keys` that `declared` lacks."""
  for key in keys:
    if key not in declared:
      name = f'{section}.{key}' if section else key
      raise errors.UserError(
        f'Unknown config key {name}: perceiver_ar_vl/spec.py declares every key; fix the '
        'name or declare it there.'
      )
