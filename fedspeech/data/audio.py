"""Reading WAV clips: strict PCM decoding, resampling and bulk loading.

Only integer PCM files are accepted; anything else (float or compressed subtypes, garbage,
truncated data) is reported as bad so that loaders can skip it and say how many they skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf

from fedspeech.data.corpus import CLIP_SAMPLES, SAMPLE_RATE, fix_length
from fedspeech.errors import DataError

PCM_SUBTYPES = frozenset({"PCM_U8", "PCM_S8", "PCM_16", "PCM_24", "PCM_32"})

# Sizes that streaming writers put in a header when they do not know the data length yet.
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)


class _BadAudio(DataError):
    """A file that is unreadable, truncated, empty or not integer PCM."""


def _declared_data_end(path: Path) -> int | None:
    """Byte offset where a RIFF/WAVE file's ``data`` chunk claims to end, if it says so."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            size = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"data":
                return None if size in _UNKNOWN_SIZES else f.tell() + size
            f.seek(size + (size & 1), os.SEEK_CUR)


def read_clip(path: Path | str) -> tuple[np.ndarray, int]:
    """Read an integer-PCM audio file as mono float32.

    Parameters
    ----------
    path : Path or str
        Audio file (normally WAV).

    Returns
    -------
    wave : np.ndarray
        ``(n,)`` float32 in [-1, 1], channels averaged.
    sample_rate : int
        The file's sample rate in Hz.

    Raises
    ------
    _BadAudio
        If the file cannot be decoded, has no frames, is not integer PCM, or its data chunk
        is shorter than its header says.
    """
    path = Path(path)
    try:
        with sf.SoundFile(path) as f:
            if f.subtype not in PCM_SUBTYPES:
                raise _BadAudio(f"{path}: subtype {f.subtype} is not integer PCM")
            if f.frames <= 0:
                raise _BadAudio(f"{path}: no audio frames")
            # libsndfile silently shortens a cut-off data chunk, so compare with the header.
            if f.format == "WAV":
                end = _declared_data_end(path)
                if end is not None and end > path.stat().st_size:
                    raise _BadAudio(f"{path}: truncated data chunk")
            data = f.read(dtype="float32", always_2d=True)
            sample_rate = int(f.samplerate)
    except (sf.SoundFileError, OSError, ValueError) as exc:
        raise _BadAudio(f"{path}: {exc}") from exc
    wave = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(wave, dtype=np.float32), sample_rate


def resample(x: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
    """Polyphase resampling of a 1-D signal from ``sr_from`` to ``sr_to`` Hz.

    The ratio is reduced first (8000 -> 16000 is up 2, down 1). Returns float32; ``x`` itself
    when the rates are equal.
    """
    if sr_from <= 0 or sr_to <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_from} -> {sr_to}")
    if sr_from == sr_to:
        return x
    # Imported here: scipy.signal takes about a second to import and most runs never resample.
    from scipy.signal import resample_poly

    g = gcd(sr_from, sr_to)
    up, down = sr_to // g, sr_from // g
    y = resample_poly(np.asarray(x, dtype=np.float32), up, down, window=_lowpass(up, down))
    return np.asarray(y, dtype=np.float32)


@lru_cache(maxsize=16)
def _lowpass(up: int, down: int) -> np.ndarray:
    """The filter ``resample_poly`` designs by default, built once per ratio."""
    # Designing it on every call took over half the time of loading FSDD.
    from scipy.signal import firwin

    max_rate = max(up, down)
    h = np.asarray(firwin(20 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0)), np.float32)
    h.flags.writeable = False
    return h


def _load_one(path: Path, sample_rate: int | None, length: int | None) -> np.ndarray | None:
    try:
        wave, sr = read_clip(path)
    except _BadAudio:
        return None
    if sample_rate is not None and sample_rate != sr:
        # Resampling can overshoot full scale a little; decoded PCM never does.
        wave = np.clip(resample(wave, sr, sample_rate), -1.0, 1.0)
    if length is not None:
        wave = fix_length(loudest_window(wave, length), length)
    return wave


def loudest_window(wave: np.ndarray, length: int) -> np.ndarray:
    """The ``length``-sample stretch of ``wave`` with the most energy (``wave`` if shorter).

    A centre crop can miss the word entirely: two FSDD clips of about 2.3 s keep under 0.001
    of full scale in their middle second.
    """
    n = wave.shape[0]
    if n <= length:
        return wave
    energy = np.concatenate(([0.0], np.cumsum(np.square(wave, dtype=np.float64))))
    window = energy[length:] - energy[:-length]
    # Ties (e.g. pure silence) resolve to the leftmost maximum; prefer the centre crop then.
    best = int(np.argmax(window))
    if window[best] <= window[(n - length) // 2]:
        best = (n - length) // 2
    return wave[best : best + length]


def read_clips(
    paths: Sequence[Path | str],
    *,
    sample_rate: int | None = SAMPLE_RATE,
    length: int | None = CLIP_SAMPLES,
    progress: bool = False,
    workers: int | None = None,
) -> tuple[list[np.ndarray | None], int]:
    """Read many clips, resampled and fixed in length, skipping bad files.

    Parameters
    ----------
    paths : sequence of Path or str
        Files to read.
    sample_rate : int or None
        Resample every clip to this rate; None keeps each file's own rate.
    length : int or None
        Fit every clip to this many samples, None keeping the length: shorter clips are
        zero-padded around the centre, longer ones cut to their loudest stretch.
    progress : bool
        Show a progress bar on stderr.
    workers : int or None
        Reader threads; None picks ``min(4, cpu count)``.

    Returns
    -------
    waves : list of np.ndarray or None
        One entry per path, in order; None where the file was bad, so callers can keep
        their labels aligned.
    bad : int
        Number of bad files.
    """
    items = [Path(p) for p in paths]
    n_workers = workers if workers is not None else min(4, os.cpu_count() or 1)

    def run(it: Iterator[np.ndarray | None]) -> list[np.ndarray | None]:
        if not progress:
            return list(it)
        from tqdm import tqdm

        return list(tqdm(it, total=len(items), desc="reading clips", unit="clip"))

    if n_workers <= 1 or len(items) < 64:
        waves = run(_load_one(p, sample_rate, length) for p in items)
    else:
        with ThreadPoolExecutor(n_workers) as pool:
            waves = run(pool.map(lambda p: _load_one(p, sample_rate, length), items))
    bad = sum(w is None for w in waves)
    return waves, bad
