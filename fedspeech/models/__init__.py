"""Models behind a name registry.

Examples
--------
>>> import torch
>>> model = build_model("kws-cnn", num_classes=10)
>>> model(torch.zeros(2, 32, 32)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fedspeech.models.aasist import AASIST, AASISTL, AASISTXS
from fedspeech.models.kws_cnn import KeywordCNN
from fedspeech.models.reference import load_reference_weights
from fedspeech.registry import Registry

MODELS: Registry[Any] = Registry("model")
MODELS.register("kws-cnn")(KeywordCNN)
MODELS.register("aasist")(AASIST)
MODELS.register("aasist-l")(AASISTL)
MODELS.register("aasist-xs")(AASISTXS)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate the model registered as ``name`` with ``kwargs``."""
    return MODELS.get(name)(**kwargs)  # type: ignore[no-any-return]


__all__ = ["MODELS", "KeywordCNN", "build_model", "load_reference_weights"]
