"""Additive white Gaussian noise at a signal-to-noise ratio, on waveforms.

The simplest waveform augmentation of keyword-spotting training (e.g. the background-noise
mixing of Warden's Speech Commands baseline, here with white noise so that nothing needs a
noise corpus): each clip gets zero-mean Gaussian noise whose power is the clip's own power
divided by ``10^(SNR/10)``, the SNR drawn per clip uniformly from ``[low, high]`` dB.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["WhiteNoise"]


@dataclass(frozen=True)
class WhiteNoise:
    """White noise at ``U[low, high]`` dB SNR (spec ``noise:LOW`` or ``noise:LOW:HIGH``).

    Examples
    --------
    >>> x = np.sin(np.arange(16000) / 5).astype(np.float32)
    >>> y = WhiteNoise(10, 10)(x, np.random.default_rng(0))
    >>> round(10 * np.log10(np.mean(x ** 2) / np.mean((y - x) ** 2)))
    10
    """

    low: float
    high: float
    domain: str = field(default="wave", init=False)

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ValueError(f"need low <= high, got {self.low}, {self.high}")

    @property
    def spec(self) -> str:
        """The spec string that builds this augmentation."""
        return f"noise:{self.low:g}" + (f":{self.high:g}" if self.high != self.low else "")

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Noisy copy of one ``(samples,)`` clip."""
        snr = rng.uniform(self.low, self.high)
        power = float(np.mean(np.square(x, dtype=np.float64))) or 1e-12
        std = np.sqrt(power / 10 ** (snr / 10))
        return (x + std * rng.standard_normal(x.shape)).astype(x.dtype)

    def batch(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Noisy copy of every clip of a ``(B, samples)`` batch."""
        rows = [torch.from_numpy(self(row.detach().cpu().numpy(), rng)) for row in x]
        return torch.stack(rows).to(x.device)
