"""Package metadata: `pip install -e .` (CPU); extras `[cuda12]` (CUDA jaxlib) and `[test]`."""

from setuptools import find_packages, setup

setup(
  name='perceiver_ar_vl',
  version='0.1.0',
  description='Perceiver AR language models with a variable number of latents (JAX/Flax).',
  packages=find_packages(include=['perceiver_ar_vl', 'perceiver_ar_vl.*']),
  python_requires='>=3.10',
  install_requires=[
    'jax>=0.6.0',
    'flax>=0.10.0',
    'optax>=0.2.4',
    'orbax-checkpoint>=0.11.15',  # BestN(keep_checkpoints_without_metrics)
    'ml_collections>=0.1.1',
    'absl-py>=2.0.0',
    'tensorflow-datasets>=4.9.7',
    'array_record>=0.5.0',
    'grain>=0.2.10',
    'numpy>=1.26',
    'matplotlib>=3.8',
    'tensorboardX>=2.6',
  ],
  extras_require={
    'cuda12': ['jax[cuda12]>=0.6.0'],
    'test': [
      'pytest>=8.0,<9',  # pytest-xdist 3.8's --dist loadgroup does not group under pytest 9
      'pytest-xdist>=3.5',
      'ruff>=0.6',
      'nbclient>=0.10',
      'nbformat>=5.10',
      'ipykernel>=6.29',
    ],
    'wandb': ['wandb>=0.17'],
  },
)
