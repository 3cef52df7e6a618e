"""Entry point: flags -> config -> train / eval / sample. The library does the work.

  python launch.py --config=configs/curriculum.py:smoke --workdir=/tmp/x
  python launch.py --config=configs/curriculum.py:smoke --workdir=/tmp/x --mode=eval
  python launch.py --config=configs/curriculum.py:smoke --workdir=/tmp/x --mode=sample
Overrides: --config.train.steps=100 --config.data.path=FILE ...
"""

from absl import app, flags, logging
from ml_collections import config_flags

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
  'config', None, 'Config file, e.g. configs/curriculum.py:smoke.', lock_config=True
)
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from perceiver_ar_vl import metrics, parallel  # imported here: flags are parsed first

  metrics.quiet_orbax_logs()

  if FLAGS.distributed or FLAGS.coordinator_address:
    parallel.initialize_distributed(
      FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
    )
  config = FLAGS.config
  logging.info('Config:\n%s', config)
  if FLAGS.mode == 'train':
    from perceiver_ar_vl import train

    train.train(config, FLAGS.workdir)
  elif FLAGS.mode == 'eval':
    from perceiver_ar_vl import evaluate

    evaluate.evaluate(config, FLAGS.workdir)
  else:
    from perceiver_ar_vl import sampling

    print(sampling.sample_from_workdir(config, FLAGS.workdir))


if __name__ == '__main__':
  app.run(main)
