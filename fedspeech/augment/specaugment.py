"""SpecAugment frequency masking for spectral features.

Park, Chan, Zhang, Chiu, Zoph, Cubuk and Le, "SpecAugment: A simple data augmentation
method for automatic speech recognition", Interspeech 2019.

Each mask draws a width ``f ~ U{0, …, F}`` and a start ``f0 ~ U{0, …, ν − f}`` over the
``ν`` frequency bins and sets bins ``[f0, f0 + f)`` to zero at every frame. Park et al.
normalise features to zero mean, so zero is the mean value; for un-normalised power
features zero means silence in that band.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["FrequencyMask", "frequency_mask"]


def frequency_mask(
    features: np.ndarray, max_width: int, rng: np.random.Generator, num_masks: int = 1
) -> np.ndarray:
    """Mask up to ``max_width`` consecutive frequency bins, ``num_masks`` times.

    Parameters
    ----------
    features : np.ndarray
        ``(F, T)`` features of one example (frequency on axis -2).
    max_width : int
        ``F`` of Park et al.: the largest mask width.
    rng : numpy.random.Generator
        Source of the widths and starts.
    num_masks : int
        Number of masks ``m_F`` (they may overlap).

    Returns
    -------
    np.ndarray
        A masked copy, same shape and dtype.

    Examples
    --------
    >>> out = frequency_mask(np.ones((8, 3)), 8, np.random.default_rng(1))
    >>> out.shape, int((out.sum(axis=1) == 0).sum()) <= 8
    ((8, 3), True)
    """
    if features.ndim != 2:
        raise ValueError(f"expected (F, T) features, got shape {features.shape}")
    out = features.copy()
    bins = out.shape[0]
    for _ in range(num_masks):
        width = int(rng.integers(0, min(max_width, bins), endpoint=True))
        start = int(rng.integers(0, bins - width, endpoint=True))
        out[start : start + width, :] = 0
    return out


@dataclass(frozen=True)
class FrequencyMask:
    """Frequency masking as a feature augmentation (spec ``specaugment:F[:M]``).

    Parameters
    ----------
    max_width : int
        Largest mask width ``F`` in bins.
    num_masks : int
        Masks per example ``m_F``.

    Examples
    --------
    >>> aug = FrequencyMask(4)
    >>> aug.batch(torch.ones(2, 16, 5), np.random.default_rng(0)).shape
    torch.Size([2, 16, 5])
    """

    max_width: int
    num_masks: int = 1
    domain: str = field(default="features", init=False)

    def __post_init__(self) -> None:
        if self.max_width < 0 or self.num_masks < 1:
            raise ValueError(
                f"need max_width >= 0 and num_masks >= 1, got {self.max_width}, {self.num_masks}"
            )

    @property
    def spec(self) -> str:
        """The spec string that builds this augmentation."""
        suffix = f":{self.num_masks}" if self.num_masks != 1 else ""
        return f"specaugment:{self.max_width}{suffix}"

    def __call__(self, features: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Mask one ``(F, T)`` example."""
        return frequency_mask(features, self.max_width, rng, self.num_masks)

    def batch(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Mask each example of a ``(B, F, T)`` tensor independently (differentiably)."""
        if x.dim() != 3:
            raise ValueError(f"expected (B, F, T) features, got shape {tuple(x.shape)}")
        batch, bins, _ = x.shape
        keep = torch.ones(batch, bins, 1, dtype=x.dtype, device=x.device)
        for b in range(batch):
            for _ in range(self.num_masks):
                width = int(rng.integers(0, min(self.max_width, bins), endpoint=True))
                start = int(rng.integers(0, bins - width, endpoint=True))
                keep[b, start : start + width] = 0
        return x * keep
