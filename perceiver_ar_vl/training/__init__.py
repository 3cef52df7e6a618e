"""The training runtime: the pure train step (`step`), the host loop that runs it
(`host_loop`), a whole resumable run (`run.train`) and its metric writers (`metrics`)."""

from perceiver_ar_vl.training.run import train

__all__ = ['train']
