"""The training runtime: the pure train step (`step`), its compiled programs
(`compiled_steps`), the host loop that runs them (`host_loop`), progress and timing
(`progress`), the workdir lock (`workdir_lock`) and a whole resumable run (`run.train`); the
metric writers are `runs.metrics`."""

from perceiver_ar_vl.training.run import train

__all__ = ['train']
