"""perceiver_ar_vl: Perceiver AR language models with a variable number of latents.

Importing the package parses no flags and touches no device; import the submodules you need
(`models`, `latents`, `losses`, `data`, `training`, `evaluation`, `sampling`; the run's
settings are declared in `spec`). It does set glibc's malloc to keep freed memory for reuse
(`host_memory`: each XLA:CPU step's temporaries would otherwise be page-faulted in anew), unless
`PERCEIVER_AR_VL_MALLOC=system` or the environment tunes malloc itself.
"""

from perceiver_ar_vl import host_memory

__version__ = '0.1.0'

host_memory.keep_freed_memory()
