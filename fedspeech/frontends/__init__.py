"""Differentiable speech front-ends, by name.

Examples
--------
>>> import torch
>>> fe = build_frontend("mfcc", n_mfcc=13)
>>> fe(torch.randn(2, 16000)).shape
torch.Size([2, 13, 32])
>>> FRONTENDS.names()
['mel', 'mfcc']
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from fedspeech.errors import ConfigError
from fedspeech.frontends.spectral import MelFrontend, MfccFrontend, dct_ortho_matrix
from fedspeech.registry import Registry

__all__ = [
    "FRONTENDS",
    "MelFrontend",
    "MfccFrontend",
    "build_frontend",
    "dct_ortho_matrix",
]

FRONTENDS: Registry[Callable[..., nn.Module]] = Registry("front-end")
FRONTENDS.register("mel")(MelFrontend)
FRONTENDS.register("mfcc")(MfccFrontend)


def build_frontend(name: str, **kwargs: Any) -> nn.Module:
    """Construct the front-end registered as ``name``.

    Parameters
    ----------
    name : str
        ``"mel"`` or ``"mfcc"``.
    **kwargs
        Constructor settings overriding the study's defaults (``n_mels``, ``hop_length``...).

    Returns
    -------
    torch.nn.Module
        Maps waveforms ``(B, T)`` to features ``(B, n_features, n_frames(T))``.

    Raises
    ------
    ConfigError
        Unknown name (the message lists the known ones), unknown setting or bad value.
    """
    factory = FRONTENDS.get(name)
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as err:
        raise ConfigError(f"bad settings for front-end {name!r}: {err}") from None
    return factory(**kwargs)
