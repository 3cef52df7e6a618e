"""A run's state on disk: the TrainState and its optimizer (`train_state`), orbax checkpoints
(`checkpoints`, which steps are kept: `checkpoint_keeping`), the workdir's small files
(`run_files`) and its metric writers (`metrics`). Training writes them; evaluation, sampling
and the study read them."""
