"""A train step's time per op class, from a profiler trace, for JAX (XLA:CPU) and for torch.

The classes (`CLASSES`): matmul, attention softmax (scores' scale, mask, max, exp, sums and
their gradients), normalisation (LayerNorm forward and backward), activations (GELU and its
gradient), optimizer (gradient clipping and Adam), layout (transposes, copies, broadcasts,
concatenations that move data and compute nothing), other (embedding, rotary, residual adds,
biases, the loss), and idle (no op running: dispatch, Python, waiting).

Time is split by wall-clock share: at each instant the ops that run side by side (XLA:CPU runs
independent thunks on different threads) share that instant equally, so the classes add up to
the step's wall-clock and JAX's and torch's figures compare directly (a torch op holds every
intra-op thread for its duration; its self time is its share).
"""

from __future__ import annotations

import collections
import glob
import itertools
import re
import tempfile
import time
from collections.abc import Callable

import jax

CLASSES = (
  'matmul',
  'attention softmax',
  'normalisation',
  'activations',
  'optimizer',
  'layout',
  'other',
  'idle',
)

# HLO opcodes that only move or replicate data (a fusion made of these alone is a layout op).
LAYOUT_OPS = frozenset(
  'parameter constant bitcast copy transpose broadcast reshape slice concatenate pad iota tuple '
  'get-tuple-element dynamic-slice dynamic-update-slice fusion'.split()
)
# HLO instructions whose thunk runs other thunks (their events contain those of their body).
CONTAINER_OPS = frozenset({'while', 'conditional', 'call'})


def hlo_instructions(hlo_text: str) -> dict[str, tuple[frozenset[str], str]]:
  """HLO instruction name -> (its opcodes, including those of a fusion's computation; its JAX
  `op_name`), parsed from a compiled module's text (`compiled.as_text()`)."""
  computations, instructions, names_in, current, current_name = {}, {}, {}, None, None
  for line in hlo_text.splitlines():
    header = re.match(r'^(?:ENTRY )?%([\w.\-]+) .*\{$', line)
    if header:
      current_name, current = header[1], computations.setdefault(header[1], [])
      continue
    m = re.match(r'\s+(?:ROOT )?%([\w.\-]+) = .+? ([a-z][a-z0-9\-]*)\((.*)', line)
    if m and current is not None:
      current.append(m[2])
      names_in[m[1]] = current_name
      calls = re.search(r'calls=%([\w.\-]+)', m[3])
      op_name = re.search(r'op_name="([^"]*)"', m[3])
      instructions[m[1]] = (m[2], calls[1] if calls else None, op_name[1] if op_name else '')
  # A fusion made by a later pass (e.g. around bf16 converts) may carry no op_name of its own:
  # it takes the first op_name found among the instructions it fuses.
  fused_names = collections.defaultdict(str)
  for name, (_, _, op_name) in instructions.items():
    computation = names_in.get(name)
    if op_name and computation and not fused_names[computation]:
      fused_names[computation] = op_name
  return {
    name: (frozenset([opcode, *computations.get(calls, ())]), op_name or fused_names[calls])
    for name, (opcode, calls, op_name) in instructions.items()
  }


def jax_op_class(opcodes: frozenset[str], op_name: str) -> str | None:
  """The class of one XLA:CPU thunk (None: a container whose body is traced on its own)."""
  if opcodes & CONTAINER_OPS:
    return None
  if 'dot' in opcodes or 'convolution' in opcodes:
    return 'matmul'
  if opcodes <= LAYOUT_OPS:
    return 'layout'
  if not op_name:  # made by XLA with no JAX op behind it (e.g. bf16 reductions it rewrote)
    return 'other'
  if 'jvp(' not in op_name:  # outside value_and_grad: clipping, Adam, the parameter update
    return 'optimizer'
  if 'LayerNorm' in op_name or re.search(r'/(ln_\w+|final_norm)/', op_name):
    return 'normalisation'
  if '/mlp/' in op_name and not re.search(r'/fc_(in|out)/', op_name):
    return 'activations'
  if '_rotate' in op_name or 'cosine' in opcodes:
    return 'other'  # rotary
  if 'attention.attend/' in op_name or 'attend_to/while' in op_name:
    return 'attention softmax'
  return 'other'


def wall_shares(intervals: list[tuple[int, int, str]], wall_ns: int) -> dict[str, float]:
  """Milliseconds per class of `intervals` (start_ns, end_ns, class): each instant split
  equally among the intervals running then; 'idle' = `wall_ns` less the time any ran."""
  edges = sorted({t for start, end, _ in intervals for t in (start, end)})
  out = collections.defaultdict(float)
  busy = 0.0
  events = sorted(intervals)
  active, i = [], 0
  for left, right in itertools.pairwise(edges):
    while i < len(events) and events[i][0] <= left:
      active.append(events[i])
      i += 1
    active = [e for e in active if e[1] > left]
    if active:
      busy += right - left
      for _, _, cls in active:
        out[cls] += (right - left) / len(active) / 1e6
  out['idle'] += max(wall_ns - busy, 0.0) / 1e6
  return dict(out)


def jax_classes(step: Callable[[], None], hlo_text: str, steps: int = 2) -> dict[str, float]:
  """Milliseconds per class per step of `steps` traced calls of `step` (a compiled train step
  whose module text is `hlo_text`), each class's wall-clock share (module docstring)."""
  instructions = hlo_instructions(hlo_text)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      start = time.perf_counter()
      for _ in range(steps):
        step()
      wall_ns = (time.perf_counter() - start) * 1e9
    (path,) = glob.glob(f'{trace_dir}/**/*.xplane.pb', recursive=True)
    profile = jax.profiler.ProfileData.from_file(path)
  intervals = []
  for plane in profile.planes:
    for line in plane.lines:
      for event in line.events:
        if event.name not in instructions:  # not an HLO instruction's thunk
          continue
        cls = jax_op_class(*instructions[event.name])
        if cls is not None:
          intervals.append((event.start_ns, event.start_ns + event.duration_ns, cls))
  return {k: v / steps for k, v in wall_shares(intervals, wall_ns).items()}


TORCH_CLASSES = (
  ('matmul', r'aten::(mm|addmm|bmm|baddbmm|addbmm|matmul|linear|einsum|_mkldnn\w*|mkldnn\w*)$'),
  ('attention softmax', r'aten::(_?softmax|_softmax_backward_data|masked_fill_?|triu|ones)$'),
  ('normalisation', r'aten::(layer_norm|native_layer_norm|native_layer_norm_backward)$'),
  ('activations', r'aten::(gelu|gelu_backward)$'),
  (
    'layout',
    r'aten::(copy_|contiguous|clone|transpose|permute|expand|view|reshape|_reshape_alias|'
    r'_unsafe_view|t|cat|stack|as_strided|select|slice|unsqueeze|squeeze|chunk|split|'
    r'split_with_sizes|narrow|unbind|detach|alias|empty|empty_like|empty_strided|zeros|'
    r'zero_|fill_|new_zeros|zeros_like|constant_pad_nd|slice_backward|resolve_conj|'
    r'resolve_neg|_to_copy|to|lift_fresh)$',
  ),
)


def torch_op_class(name: str, ancestors: list[str]) -> str:
  """The class of one torch profiler event's self time (`ancestors`: enclosing events)."""
  if any(a.startswith('Optimizer.') for a in [name, *ancestors]):
    return 'optimizer'
  for cls, pattern in TORCH_CLASSES:
    if re.match(pattern, name):
      return cls
  return 'other'


def torch_classes(step: Callable[[], None], steps: int = 2) -> dict[str, float]:
  """Milliseconds per class per step of `steps` calls of a torch train step under
  `torch.profiler`: each event's self time in its class, 'idle' = wall-clock when no op
  ran (Python between ops)."""
  import torch

  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    start = time.perf_counter()
    for _ in range(steps):
      step()
    wall_us = (time.perf_counter() - start) * 1e6
  out = collections.defaultdict(float)
  tops = []
  for event in prof.events():
    ancestors, parent = [], event.cpu_parent
    while parent is not None:
      ancestors.append(parent.name)
      parent = parent.cpu_parent
    if parent is None and not ancestors:
      tops.append((event.time_range.start, event.time_range.end))
    out[torch_op_class(event.name, ancestors)] += event.self_cpu_time_total / 1e3
  busy, last = 0.0, float('-inf')
  for begin, end in sorted(tops):  # the union of top-level events' intervals
    begin = max(begin, last)
    busy += max(end - begin, 0)
    last = max(last, end)
  out['idle'] += max(wall_us - busy, 0.0) / 1e3
  return {k: v / steps for k, v in out.items()}
