"""Frequency masking of raw waveforms: a random band removed through the Fourier transform.

SpecAugment's frequency masking (Park et al., Interspeech 2019) for models that take the
waveform itself (AASIST), as used to fine-tune AASIST-L (Khare, "Fine-Tuning AASIST for
Audio Deepfake Detection", 2025): each clip loses one band ``[f0, f0 + w)`` Hz, ``w`` drawn
from ``U[0, W]`` and ``f0`` from ``U[0, sr/2 − w]``, by zeroing those bins of its real FFT.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["WaveFrequencyMask"]


@dataclass(frozen=True)
class WaveFrequencyMask:
    """Remove a random band of up to ``max_hz`` Hz (spec ``freqmask:W``).

    Examples
    --------
    >>> t = np.arange(16000) / 16000
    >>> x = (np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    >>> y = WaveFrequencyMask(8000)(x, np.random.default_rng(3))
    >>> y.shape, bool(np.abs(y).max() <= np.abs(x).max() + 1e-5)
    ((16000,), True)
    """

    max_hz: float
    sample_rate: int = 16000
    domain: str = field(default="wave", init=False)

    def __post_init__(self) -> None:
        if not 0 <= self.max_hz <= self.sample_rate / 2:
            raise ValueError(f"max_hz must be in [0, {self.sample_rate / 2}], got {self.max_hz}")

    @property
    def spec(self) -> str:
        """The spec string that builds this augmentation."""
        return f"freqmask:{self.max_hz:g}"

    def _band(self, n: int, rng: np.random.Generator) -> tuple[int, int]:
        """Bins ``[lo, hi)`` of an ``n``-sample clip's real FFT to zero."""
        nyquist = self.sample_rate / 2
        width = rng.uniform(0, self.max_hz)
        start = rng.uniform(0, nyquist - width)
        bins = n // 2 + 1
        lo = int(round(start / nyquist * (bins - 1)))
        hi = int(round((start + width) / nyquist * (bins - 1)))
        return lo, max(hi, lo)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One ``(samples,)`` clip without the band."""
        spectrum = np.fft.rfft(x.astype(np.float64))
        lo, hi = self._band(len(x), rng)
        spectrum[lo:hi] = 0
        return np.fft.irfft(spectrum, n=len(x)).astype(x.dtype)

    def batch(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Every clip of a ``(B, samples)`` batch, each with its own band."""
        rows = [torch.from_numpy(self(row.detach().cpu().numpy(), rng)) for row in x]
        return torch.stack(rows).to(x.device)
