"""`python -m perceiver_ar_vl.experiments`: the comparison of runs from the command line.

  python -m perceiver_ar_vl.experiments --preset=smoke --seeds=0,1 --budget=flops --out=/tmp/e
  python -m perceiver_ar_vl.experiments --preset=cpu --out=results/cpu --seeds=0,1,2 \
    --budget=steps,flops --data_path=A.txt,B.txt,C.txt --heldout_path=D.txt

A user error prints one line `error: ...` and exits with status 2; a run stopped by
SIGTERM/SIGINT is saved, and the command exits 0 (running it again resumes).
"""

from __future__ import annotations

import sys

from absl import flags, logging

from perceiver_ar_vl import cli, config_lib, errors
from perceiver_ar_vl.experiments import budgets, runner

flags.DEFINE_enum('preset', 'smoke', list(runner.EXPERIMENT_PRESETS), 'Scale of the comparison.')
flags.DEFINE_string('out', None, 'Output directory (runs, results.md, plots).')
flags.DEFINE_list(
  'runs', list(config_lib.RUNS), 'Runs to include; a name may add +latent_dropout/+truncation.'
)
flags.DEFINE_list('strategies', None, 'The same as --runs (the older name).')
flags.DEFINE_list('seeds', ['0'], 'Seeds: every run is trained once per seed.')
flags.DEFINE_list(
  'budget', ['steps'], f'Equal budgets to compare at: {", ".join(budgets.BUDGETS)}.'
)
flags.DEFINE_string(
  'budget_preset', '', 'Preset of the reference run of flops/seconds budgets (default: --preset).'
)
flags.DEFINE_integer('steps', 0, 'Training steps of the reference (0 = the preset budget).')
flags.DEFINE_string('data_path', '', 'config.data.path for every run (text files, enwik8).')
flags.DEFINE_string('heldout_path', '', 'config.data.heldout_path (text_file validation/test).')
flags.DEFINE_integer('eval_max_bytes', 0, 'Bytes scored per split (0 = the preset default).')
flags.DEFINE_bool('report_only', False, 'Train nothing; report the runs already finished.')
flags.DEFINE_string('report_dir', '', 'Where results.md and the plots go (default: --out).')
flags.mark_flag_as_required('out')
FLAGS = flags.FLAGS

# Config keys that this command sets from its own flags: user errors name the flag instead.
FLAG_FOR_KEY = {
  '--config.data.path': '--data_path',
  '--config.data.heldout_path': '--heldout_path',
  '--config.eval.max_bytes': '--eval_max_bytes',
}


def main(argv: list[str]) -> None:
  del argv  # cli.run refuses positional arguments
  from perceiver_ar_vl.runs import metrics  # noqa: PLC0415 (imports JAX: after the flags)

  metrics.quiet_orbax_logs()
  try:
    run_from_flags()
  except runner.RunStopped as e:
    logging.warning('%s', e)
    sys.exit(0)
  except errors.UserError as e:
    message = str(e)
    for key, flag in FLAG_FOR_KEY.items():
      message = message.replace(key, flag)
    raise errors.UserError(message) from e


def run_from_flags() -> None:
  """`runner.run_experiment` with the flags' values (and the command line for the report)."""
  try:
    seeds = tuple(int(s) for s in FLAGS.seeds)
  except ValueError:
    raise errors.UserError(
      f'--seeds={",".join(FLAGS.seeds)}: seeds are integers, e.g. --seeds=0,1,2.'
    ) from None
  runs = FLAGS.strategies if FLAGS.strategies is not None else FLAGS.runs
  named = [
    ('preset', FLAGS.preset),
    ('out', FLAGS.out),
    ('runs', ','.join(runs)),
    ('seeds', ','.join(FLAGS.seeds)),
    ('budget', ','.join(FLAGS.budget)),
    ('budget_preset', FLAGS.budget_preset),
    ('data_path', FLAGS.data_path),
    ('heldout_path', FLAGS.heldout_path),
    ('steps', FLAGS.steps),
    ('eval_max_bytes', FLAGS.eval_max_bytes),
  ]
  runner.run_experiment(
    FLAGS.preset,
    FLAGS.out,
    runs=tuple(runs),
    seeds=seeds,
    budget=tuple(FLAGS.budget),
    budget_preset=FLAGS.budget_preset,
    steps=FLAGS.steps,
    data_path=FLAGS.data_path,
    heldout_path=FLAGS.heldout_path,
    eval_max_bytes=FLAGS.eval_max_bytes,
    report_only=FLAGS.report_only,
    report_dir=FLAGS.report_dir,
    command='python -m perceiver_ar_vl.experiments '
    + ' '.join(f'--{k}={v}' for k, v in named if v),
  )


if __name__ == '__main__':
  cli.run(main)
