"""Data augmentations behind spec strings.

* ``rawboost:N`` (N = 1–8) -- RawBoost on raw waveforms (Tak et al., ICASSP 2022); see
  :mod:`fedspeech.augment.rawboost`.
* ``specaugment:F`` or ``specaugment:F:M`` -- SpecAugment frequency masking of up to ``F``
  bins, ``M`` masks (default 1), on ``(B, F, T)`` features (Park et al., 2019).
* ``noise:LOW`` or ``noise:LOW:HIGH`` -- white Gaussian noise at a signal-to-noise ratio
  drawn from ``[LOW, HIGH]`` dB per clip, on raw waveforms (:mod:`fedspeech.augment.noise`).
* ``freqmask:W`` -- a random band of up to ``W`` Hz removed from raw waveforms through their
  Fourier transform (:mod:`fedspeech.augment.freqmask`).
* ``none`` -- the identity on waveforms: the second path sees the clean batch again, so
  dual-path training reduces to plain training (an ablation, and the setting in which a
  shared update is exactly a clean-data gradient for the privacy audit).

Every augmentation is callable on one numpy example, ``aug(x, rng)``, and has
``aug.batch(tensor, rng)`` for a batch; ``aug.domain`` is ``"wave"`` or ``"features"``.

Examples
--------
>>> import numpy as np
>>> aug = build_augmentation("rawboost:5")
>>> aug(np.zeros(2000, dtype=np.float32), np.random.default_rng(0)).shape
(2000,)
>>> build_augmentation("mixup:1")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
fedspeech.errors.ConfigError: unknown augmentation 'mixup:1'; known: rawboost:N (N = 1-8), ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from fedspeech.augment.freqmask import WaveFrequencyMask
from fedspeech.augment.noise import WhiteNoise
from fedspeech.augment.rawboost import ALGORITHMS, RawBoost, RawBoostParams, rawboost
from fedspeech.augment.specaugment import FrequencyMask, frequency_mask
from fedspeech.errors import ConfigError
from fedspeech.registry import Registry

__all__ = [
    "AUGMENTATIONS",
    "Augmentation",
    "FrequencyMask",
    "RawBoost",
    "RawBoostParams",
    "WaveFrequencyMask",
    "WhiteNoise",
    "build_augmentation",
    "frequency_mask",
    "rawboost",
]

_KNOWN = (
    "rawboost:N (N = 1-8), specaugment:F[:M] (F = max width, M = masks), "
    "noise:LOW[:HIGH] (SNR in dB), freqmask:W (a band of up to W Hz removed), none"
)


@runtime_checkable
class Augmentation(Protocol):
    """What :func:`build_augmentation` returns."""

    @property
    def domain(self) -> str:
        """``"wave"``: ``(T,)`` / ``(B, T)`` input; ``"features"``: ``(F, T)`` / ``(B, F, T)``."""

    @property
    def spec(self) -> str:
        """The spec string that builds it."""

    def __call__(self, x: np.ndarray, rng: np.random.Generator, /) -> np.ndarray:
        """Augment one example."""

    def batch(self, x: torch.Tensor, rng: np.random.Generator, /) -> torch.Tensor:
        """Augment every example of a batch independently."""


def _rawboost(args: list[str]) -> Augmentation:
    if len(args) != 1 or not args[0].isdigit() or int(args[0]) not in ALGORITHMS:
        raise ValueError
    return RawBoost(int(args[0]))


def _specaugment(args: list[str]) -> Augmentation:
    if not 1 <= len(args) <= 2 or not all(a.isdigit() for a in args):
        raise ValueError
    return FrequencyMask(*(int(a) for a in args))


class Identity:
    """The ``none`` augmentation: returns its input unchanged (waveform domain).

    Examples
    --------
    >>> import numpy as np
    >>> Identity()(np.ones(3), np.random.default_rng(0)).tolist()
    [1.0, 1.0, 1.0]
    """

    domain = "wave"
    spec = "none"

    def __call__(self, x: np.ndarray, rng: np.random.Generator, /) -> np.ndarray:
        """``x`` itself."""
        return x

    def batch(self, x: torch.Tensor, rng: np.random.Generator, /) -> torch.Tensor:
        """``x`` itself."""
        return x


def _noise(args: list[str]) -> Augmentation:
    if not 1 <= len(args) <= 2:
        raise ValueError
    low = float(args[0])
    high = float(args[-1])
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError
    return WhiteNoise(low, high)


def _freqmask(args: list[str]) -> Augmentation:
    if len(args) != 1:
        raise ValueError
    return WaveFrequencyMask(float(args[0]))


def _identity(args: list[str]) -> Augmentation:
    if args:
        raise ValueError
    return Identity()


AUGMENTATIONS: Registry[Callable[[list[str]], Augmentation]] = Registry("augmentation")
AUGMENTATIONS.register("none")(_identity)
AUGMENTATIONS.register("rawboost")(_rawboost)
AUGMENTATIONS.register("specaugment")(_specaugment)
AUGMENTATIONS.register("noise")(_noise)
AUGMENTATIONS.register("freqmask")(_freqmask)


def build_augmentation(spec: str) -> Augmentation:
    """Build the augmentation named by ``spec`` (``"rawboost:4"``, ``"specaugment:8"``).

    Raises
    ------
    ConfigError
        Unknown name or bad arguments; the message lists the known specs.
    """
    name, *args = spec.strip().lower().split(":")
    if name not in AUGMENTATIONS:
        raise ConfigError(f"unknown augmentation {spec!r}; known: {_KNOWN}")
    try:
        return AUGMENTATIONS.get(name)(args)
    except ValueError:
        raise ConfigError(f"bad augmentation spec {spec!r}; known: {_KNOWN}") from None
