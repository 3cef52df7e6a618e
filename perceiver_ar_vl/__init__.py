"""perceiver_ar_vl: Perceiver AR language models with a variable number of latents.

Importing the package parses no flags and touches no device; import the submodules you need
(`models`, `latents`, `losses`, `data`, `train`, `evaluate`, `sampling`).
"""

__version__ = '0.1.0'
