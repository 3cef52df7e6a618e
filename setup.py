"""Package metadata: `pip install -e .` (CPU); extras `[cuda12]` (CUDA jaxlib), `[test]`,
`[tools]` (TensorBoard with its profile tab, Jupyter) and `[wandb]`.

The lower bounds are the versions the test suite and the figures in docs/ were measured with
(constraints.txt pins every package of that environment: `pip install -e '.[test]' -c
constraints.txt` reproduces it); tests/test_package.py keeps the two in step.
"""

from setuptools import find_packages, setup

setup(
  name='perceiver_ar_vl',
  version='0.1.0',
  description='Perceiver AR language models with a variable number of latents (JAX/Flax).',
  packages=find_packages(include=['perceiver_ar_vl', 'perceiver_ar_vl.*']),
  python_requires='>=3.10',
  install_requires=[
    'jax>=0.10.2',
    'jaxlib>=0.10.2',
    'ml_dtypes>=0.7.0',
    'flax>=0.12.8',
    'optax>=0.2.8',
    'orbax-checkpoint>=0.12.8',
    'ml_collections>=1.1.0',
    'absl-py>=2.5.1',
    'etils[epath]>=1.15.0',
    'tensorflow-datasets>=4.9.10',
    'array_record>=0.8.6',
    'grain>=0.2.18',
    'numpy>=2.4.6',
    'matplotlib>=3.11.2',
    'tensorboardX>=2.6.5',
  ],
  extras_require={
    'cuda12': ['jax[cuda12]>=0.10.2'],
    'test': [
      'pytest>=8.0,<9',  # pytest-xdist 3.8's --dist loadgroup does not group under pytest 9
      'pytest-xdist>=3.5',
      'ruff>=0.6',
      'nbclient>=0.10',
      'nbformat>=5.10',
      'ipykernel>=6.29',
    ],
    'tools': ['tensorboard>=2.21.0', 'tensorboard-plugin-profile>=2.24.2', 'jupyter>=1.1.1'],
    'wandb': ['wandb>=0.17'],
  },
)
