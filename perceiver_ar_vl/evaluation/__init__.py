"""Evaluation of a trained run: bits per byte in blocks or at stride 1 and restore-and-evaluate
(`evaluate`), which windows score which targets (`windows`), the copy task's metrics
(`copy_metrics`) and how results are shown (`report`: a table, TensorBoard scalars)."""
