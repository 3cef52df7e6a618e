"""One of the original's checkpoints as a workdir: `python -m perceiver_ar_vl.original`.

  python -m perceiver_ar_vl.original --checkpoint=PATH --sweep=random_mirrored_131072 \\
    --workdir=W
  python launch.py --workdir=W --mode=eval
  python launch.py --workdir=W --mode=sample --config.sample.prompt=...

PATH is a `checkpoint.dill`, the directory holding one, or the original's checkpoint directory
(`models/latest/step_*/checkpoint.dill`: its highest step). `--kwargs` gives the constructor
options a model was trained with where they differ from the sweep's (JSON, or a .json file).
A bad flag, file or workdir prints one line `error: ...` and exits with status 2; see
`original.workdir` for what is written.
"""

from __future__ import annotations

import os

from absl import flags

from perceiver_ar_vl import cli
from perceiver_ar_vl.original import sweeps

flags.DEFINE_string(
  'checkpoint', None, "The original's checkpoint.dill, its directory, or its checkpoints dir."
)
flags.DEFINE_string(
  'sweep', None, f'The sweep the model was trained with: one of {", ".join(sweeps.SWEEPS)}.'
)
flags.DEFINE_string('workdir', None, 'The workdir to write (it must hold no checkpoint).')
flags.DEFINE_string(
  'kwargs',
  '',
  "PerceiverAR constructor options that differ from the sweep's: a JSON object (e.g. "
  '\'{"num_transformers_per_block": 2}\') or a .json file holding one.',
)
flags.DEFINE_bool(
  'relabel',
  True,
  "Relabel the original's ids and positions for byte data (byte b is its id b + 3; its PAD, "
  'EOS, SOS follow the bytes; an example starts at its position 2). --norelabel keeps '
  "from_haiku's ids and positions 0..M-1.",
)
flags.mark_flags_as_required(['checkpoint', 'sweep', 'workdir'])
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  del argv  # cli.run refuses positional arguments
  from perceiver_ar_vl.original import workdir as original_workdir

  kwargs = original_workdir.parse_kwargs(FLAGS.kwargs)
  args = (FLAGS.checkpoint, FLAGS.workdir, FLAGS.sweep, kwargs, FLAGS.relabel)
  original_workdir.check_arguments(*args)  # mistakes stop here, before JAX is imported
  from perceiver_ar_vl.runs import metrics

  metrics.quiet_orbax_logs()
  config, step = original_workdir.write_workdir(*args)
  workdir = os.path.abspath(FLAGS.workdir)
  m = config.model
  print(
    f'Wrote {os.path.join(workdir, "config.json")} and the checkpoint '
    f'{os.path.join(workdir, "checkpoints", str(step))}: the original {FLAGS.sweep} model at '
    f'its step {step} (window {m.max_context}, {config.latents.max} latents, {m.num_layers} '
    f'layers, d_model {m.d_model}), scored on {config.data.copy_mode} copies of '
    f'{config.data.copy_length} bytes.\nNext:\n'
    f'  python launch.py --workdir={workdir} --mode=eval\n'
    f'  python launch.py --workdir={workdir} --mode=sample --config.sample.prompt=TEXT\n'
    f'(it mirrors an example of {config.data.copy_length} bytes: a prompt of its first '
    f'{config.data.copy_length // 2} comes back reversed)'
  )


if __name__ == '__main__':
  cli.run(main, config_flags=())
