"""In-memory keyword corpus shared by every loader.

A loader returns a :class:`KeywordCorpus`: fixed-length 16 kHz clips with labels, speakers
and an official split. Everything downstream (features, partitions, training, capture truth)
indexes clips by their position in this corpus.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000
CLIP_SAMPLES = 16_000

SPLITS = ("train", "validation", "test")


@dataclass
class KeywordCorpus:
    """Fixed-length keyword clips.

    Attributes
    ----------
    waveforms : np.ndarray
        ``(N, CLIP_SAMPLES)`` float32 in [-1, 1], 16 kHz, zero-padded or centre-cropped to 1 s.
    labels : np.ndarray
        ``(N,)`` int64 class indices into ``classes``.
    speakers : list[str]
        Speaker id of each clip.
    clip_ids : list[str]
        Path of each clip relative to the dataset root (stable identifier).
    split : list[str]
        ``"train"``, ``"validation"`` or ``"test"`` for each clip.
    classes : list[str]
        Class names, in label order.
    skipped : int
        Files that could not be read (corrupt, non-PCM) and were left out.
    """

    waveforms: np.ndarray
    labels: np.ndarray
    speakers: list[str]
    clip_ids: list[str]
    split: list[str]
    classes: list[str]
    skipped: int = 0

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def indices(self, split: str) -> np.ndarray:
        """Positions of the clips in ``split``, ascending."""
        return np.array([i for i, s in enumerate(self.split) if s == split], dtype=np.int64)


def fix_length(wave: np.ndarray, length: int = CLIP_SAMPLES) -> np.ndarray:
    """Zero-pad or centre-crop a 1-D waveform to ``length`` samples."""
    n = wave.shape[0]
    if n >= length:
        start = (n - length) // 2
        return wave[start : start + length]
    out = np.zeros(length, dtype=wave.dtype)
    start = (length - n) // 2
    out[start : start + n] = wave
    return out
