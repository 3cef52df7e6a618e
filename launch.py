"""Entry point: flags -> config -> train / eval / sample. The library does the work.

  python launch.py --config=configs/curriculum.py:smoke --workdir=/tmp/x
  python launch.py --workdir=/tmp/x --mode=eval
  python launch.py --workdir=/tmp/x --mode=sample --config.sample.prompt='The '
Overrides: --config.train.steps=100 --config.data.path=FILE ...

Eval and sample read the config the run saved in the workdir (`workdir_config`); overrides
may then change only what evaluation and sampling read (`workdir_config.CHANGEABLE`). With
--config they use that config instead, as training does.

JAX's own flags work too (--jax_log_compiles, --jax_debug_nans, ...). A user error (a bad
flag, config value, path, data file or checkpoint) prints one line `error: <what is wrong and
what to change>` on stderr and exits with status 2, before JAX starts where it can; a bug
keeps its traceback.
"""

import sys

from absl import flags, logging
from ml_collections import config_flags

from perceiver_ar_vl import cli, errors

flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'sample'], 'What to do.')
flags.DEFINE_string('coordinator_address', '', 'Multi-process: host:port of process 0.')
flags.DEFINE_integer('num_processes', 0, 'Multi-process: number of processes.')
flags.DEFINE_integer('process_id', -1, 'Multi-process: index of this process.')
flags.DEFINE_bool(
  'distributed',
  False,
  'Call jax.distributed.initialize() (auto-detects '
  'SLURM/TPU/MPI clusters, or uses the three flags above).',
)
config_flags.DEFINE_config_file(
  'config',
  None,
  "Config file, e.g. configs/curriculum.py:smoke (eval and sample: the workdir's by default).",
  lock_config=True,
)
flags.mark_flags_as_required(['workdir'])
FLAGS = flags.FLAGS


def main(argv):
  del argv  # cli.run refuses positional arguments
  if not (FLAGS.coordinator_address or FLAGS.distributed) and (
    FLAGS.num_processes or FLAGS.process_id >= 0
  ):
    raise errors.UserError(
      '--num_processes and --process_id need --coordinator_address=host:port of process 0 '
      '(or --distributed, which detects it on SLURM, Open MPI and Cloud TPU).'
    )
  if FLAGS.config is None:
    raise errors.UserError(
      '--config is needed to train, e.g. --config=configs/curriculum.py:smoke (--mode=eval '
      'and --mode=sample read the config saved in --workdir).'
    )
  # Imported here: flags are parsed first.
  from perceiver_ar_vl import config_lib

  config = config_lib.read_spec(FLAGS.config)  # checked once here, before JAX is imported
  from perceiver_ar_vl import parallel, runtime
  from perceiver_ar_vl.runs import metrics

  runtime.configure_cpu_execution(config.cpu_execution)  # before JAX starts its CPU client

  metrics.quiet_orbax_logs()

  if FLAGS.distributed or FLAGS.coordinator_address:
    parallel.initialize_distributed(
      FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
    )
  logging.info('Config:\n%s', FLAGS.config)
  if FLAGS.mode == 'train':
    from perceiver_ar_vl import training

    training.train(config, FLAGS.workdir)
  elif FLAGS.mode == 'eval':
    from perceiver_ar_vl.evaluation import evaluate

    evaluate.evaluate(config, FLAGS.workdir)
  else:
    from perceiver_ar_vl import sampling

    print(sampling.sample_from_workdir(config, FLAGS.workdir))


if __name__ == '__main__':
  from perceiver_ar_vl import workdir_config

  sys.argv = workdir_config.complete_argv(sys.argv)
  cli.run(main)
