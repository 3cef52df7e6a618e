"""perceiver_ar_vl: Perceiver AR language models with a variable number of latents.

Importing the package parses no flags and touches no device; import the submodules you need
(`models`, `latents`, `losses`, `data`, `training`, `evaluation`, `sampling`; the run's
settings are declared in `spec`).
"""

__version__ = '0.1.0'
