"""The models, each a `LanguageModel` (the interface in `models/base.py`): Perceiver AR
(variable latents), the Transformer baseline and ECP. `MODELS` maps each `model.type` of
`config_choices.MODEL_TYPES` to its class."""

from __future__ import annotations

import importlib

from perceiver_ar_vl import config_choices
from perceiver_ar_vl.models.base import AttentionShape, LanguageModel
from perceiver_ar_vl.models.ecp import ECP
from perceiver_ar_vl.models.perceiver_ar import PerceiverAR
from perceiver_ar_vl.models.transformer import Transformer

MODELS: dict[str, type[LanguageModel]] = {
  name: getattr(importlib.import_module(entry.module), entry.name)
  for name, entry in config_choices.MODEL_TYPES.items()
}

__all__ = ['ECP', 'MODELS', 'AttentionShape', 'LanguageModel', 'PerceiverAR', 'Transformer']
