"""Signal-level leakage metrics behind the :data:`METRICS` registry.

Each metric is ``(original, reconstruction, sr=16000, **ctx) -> float`` on 1-D arrays; the
lengths are aligned by cutting the longer one. Failures of the underlying library (PESQ
finds no utterance in silence, a clip is too short, ...) give NaN, a :class:`RuntimeWarning`
and a count in :func:`failure_counts`, never an exception.

Examples
--------
>>> import numpy as np
>>> f_mse(np.ones((2, 3)), np.zeros((2, 3)))
1.0
>>> w_mse(np.array([0.0, 1.0]), np.array([0.0, 0.5, 9.0]))
0.0
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from math import gcd

import numpy as np
import torch

from fedspeech.registry import Registry

__all__ = [
    "METRICS",
    "Metric",
    "align",
    "f_mse",
    "failure_counts",
    "pcm16",
    "peak_normalize",
    "pesq_nb",
    "pesq_wb",
    "resample",
    "reset_failure_counts",
    "stoi",
    "stoi_tiled_count",
    "w_mse",
]

Metric = Callable[..., float]

METRICS: Registry[Metric] = Registry("metric")

_FAILURES: Counter[str] = Counter()
_TILED: Counter[str] = Counter()


def failure_counts() -> dict[str, int]:
    """Metric name -> number of calls that returned NaN because the library failed."""
    return dict(_FAILURES)


def reset_failure_counts() -> None:
    """Zero :func:`failure_counts` and :func:`stoi_tiled_count`."""
    _FAILURES.clear()
    _TILED.clear()


def _fail(metric: str, err: BaseException) -> float:
    _FAILURES[metric] += 1
    warnings.warn(
        f"{metric} could not score this pair ({type(err).__name__}: {err}); scored NaN "
        f"({_FAILURES[metric]} so far)",
        RuntimeWarning,
        stacklevel=3,
    )
    return float("nan")


def _array(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def align(original: np.ndarray, reconstruction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both 1-D waveforms as float64, cut to the shorter one's length.

    Raises
    ------
    ValueError
        If either is not 1-D.
    """
    a, b = _array(original), _array(reconstruction)
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError(f"expected two 1-D waveforms, got shapes {a.shape} and {b.shape}")
    n = min(a.shape[0], b.shape[0])
    return a[:n], b[:n]


def peak_normalize(x: np.ndarray, peak: float = 1.0) -> np.ndarray:
    """``x`` scaled to ``max |x| = peak`` (unchanged if silent)."""
    m = float(np.max(np.abs(x))) if x.size else 0.0
    return x * (peak / m) if m > 1e-12 else x


def resample(x: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
    """Polyphase resampling of a 1-D signal (``scipy.signal.resample_poly``); ``x`` itself
    when the rates are equal.

    Examples
    --------
    >>> resample(np.ones(160), 16_000, 8000).shape
    (80,)
    """
    if sr_from == sr_to:
        return x
    # Imported here: scipy.signal is slow to import and most scoring never resamples.
    from scipy.signal import resample_poly

    g = gcd(int(sr_from), int(sr_to))
    return np.asarray(resample_poly(x, sr_to // g, sr_from // g))


@METRICS.register("f_mse")
def f_mse(
    features_true: np.ndarray | torch.Tensor,
    features_rec: np.ndarray | torch.Tensor,
    sr: int = 16_000,
    **ctx: object,
) -> float:
    """Feature MSE (the study's F-MSE): ``mean((true - rec)^2)`` over all elements.

    Parameters
    ----------
    features_true, features_rec : np.ndarray or torch.Tensor
        Same shape, e.g. ``(F, T)``; ``sr`` is ignored.

    Raises
    ------
    ValueError
        Shapes differ.
    """
    a, b = _array(features_true), _array(features_rec)
    if a.shape != b.shape:
        raise ValueError(f"feature shapes differ: {a.shape} vs {b.shape}")
    return float(np.mean(np.square(a - b)))


@METRICS.register("w_mse")
def w_mse(
    original: np.ndarray,
    reconstruction: np.ndarray,
    sr: int = 16_000,
    *,
    normalize: bool = True,
    **ctx: object,
) -> float:
    """Waveform MSE (the study's W-MSE), after peak-normalising both signals to 1.

    The study does not say how it scaled the waveforms; here both are peak-normalised,
    because MFCC with CMVN discards the level altogether and Griffin-Lim output has none
    that matters, so an unnormalised MSE would mostly measure gain. Because Griffin-Lim's
    phase is not the original's, the value stays near the two signals' summed power even for
    a perfect-sounding reconstruction; it is a weak leakage measure, kept for comparison.

    Parameters
    ----------
    original, reconstruction : np.ndarray
        1-D waveforms (lengths aligned by cutting).
    normalize : bool
        Peak-normalise both first (True).
    """
    a, b = align(original, reconstruction)
    if normalize:
        a, b = peak_normalize(a), peak_normalize(b)
    return float(np.mean(np.square(a - b))) if a.size else float("nan")


def _unscorable(a: np.ndarray, b: np.ndarray) -> str | None:
    """Why a pair cannot be scored at all, or None."""
    if a.size == 0:
        return "empty signals"
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return "NaN or infinite samples"
    if float(np.max(np.abs(a))) == 0.0:
        return "silent reference"
    return None


def pcm16(x: np.ndarray) -> np.ndarray:
    """``x`` as 16-bit PCM would hold it: scaled down to peak 1 if louder, rounded to 2^-15.

    PESQ (ITU-T P.862) is defined on 16-bit PCM. Fed floats, the ``pesq`` package's score
    jumps by up to 0.2 when a reconstruction gains noise far below one 16-bit step (1e-6 of
    full scale) in the digital silence that pads a clip; on the 16-bit signal such noise
    is gone, as it is from the WAVs the audit writes.

    Examples
    --------
    >>> import numpy as np
    >>> pcm16(np.array([0.0, 1e-6, 0.5, -2.0])).tolist()
    [0.0, 0.0, 0.25, -1.0]
    """
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > 1.0:
        x = x / peak
    return np.round(x * 32768.0).clip(-32768, 32767) / 32768.0


def _pesq(metric: str, fs: int, mode: str, a: np.ndarray, b: np.ndarray) -> float:
    import pesq as pesq_lib  # imported here, as pystoi below: only scoring needs them

    why = _unscorable(a, b)
    if why is not None:
        return _fail(metric, ValueError(why))
    a, b = pcm16(a), pcm16(b)
    if float(np.max(np.abs(a))) == 0.0:
        return _fail(metric, ValueError("silent reference at 16-bit resolution"))
    try:
        return float(pesq_lib.pesq(fs, a.astype(np.float32), b.astype(np.float32), mode))
    except (pesq_lib.PesqError, ValueError) as err:
        return _fail(metric, err)


@METRICS.register("pesq_nb")
def pesq_nb(
    original: np.ndarray, reconstruction: np.ndarray, sr: int = 16_000, **ctx: object
) -> float:
    """Narrow-band PESQ (ITU-T P.862 + P.862.1 MOS-LQO, 1.0-4.5), the study's PESQ scale.

    Both signals are resampled to 8 kHz (``scipy.signal.resample_poly``), taken to 16-bit
    PCM (:func:`pcm16`) and scored by ``pesq.pesq(8000, ref, deg, 'nb')``. NaN (with a
    warning) when PESQ fails, e.g. finds no utterance.
    """
    a, b = align(original, reconstruction)
    return _pesq("pesq_nb", 8000, "nb", resample(a, sr, 8000), resample(b, sr, 8000))


@METRICS.register("pesq_wb")
def pesq_wb(
    original: np.ndarray, reconstruction: np.ndarray, sr: int = 16_000, **ctx: object
) -> float:
    """Wide-band PESQ (ITU-T P.862.2, 1.0-4.64) at 16 kHz via ``pesq.pesq(16000, ..., 'wb')``,
    on 16-bit PCM (:func:`pcm16`).

    NaN (with a warning) when PESQ fails.
    """
    a, b = align(original, reconstruction)
    return _pesq("pesq_wb", 16_000, "wb", resample(a, sr, 16_000), resample(b, sr, 16_000))


# pystoi needs 30 non-silent frames of 25.6 ms (hop 12.8 ms at 10 kHz), about 0.4 s of
# speech; most FSDD digits and many keywords have less.
_STOI_MAX_TILES = 8


def _stoi_once(a: np.ndarray, b: np.ndarray, sr: int) -> float:
    from pystoi import stoi as stoi_lib

    with warnings.catch_warnings():
        # pystoi warns and returns 1e-5 when too few frames remain; handled by the caller.
        warnings.filterwarnings("ignore", message="Not enough STFT frames")
        return float(stoi_lib(a, b, sr, extended=False))


@METRICS.register("stoi")
def stoi(
    original: np.ndarray,
    reconstruction: np.ndarray,
    sr: int = 16_000,
    *,
    tile_short: bool = True,
    **ctx: object,
) -> float:
    """Short-Time Objective Intelligibility (Taal et al. 2011), ``pystoi.stoi(extended=False)``.

    About 0-1 (1 for identical signals), level-invariant; pystoi resamples to 10 kHz and
    drops frames 40 dB below the loudest. Its 384 ms analysis segments need about 0.4 s of
    speech, more than most one-word clips hold, and pystoi then returns 1e-5. With
    ``tile_short`` both signals are repeated end to end, identically, until enough frames
    remain (counted in :func:`stoi_tiled_count`); this departs from the standard only for
    clips the standard cannot score. NaN (with a warning) if it still fails.
    """
    a, b = align(original, reconstruction)
    why = _unscorable(a, b)
    if why is not None:
        return _fail("stoi", ValueError(why))
    try:
        value = _stoi_once(a, b, sr)
        tiles = 1
        while value == 1e-5 and tile_short and tiles < _STOI_MAX_TILES:
            tiles += 1
            value = _stoi_once(np.tile(a, tiles), np.tile(b, tiles), sr)
    except (ValueError, RuntimeError, IndexError) as err:
        return _fail("stoi", err)
    if value == 1e-5:
        return _fail("stoi", RuntimeError("too few non-silent frames"))
    if tiles > 1:
        _TILED["stoi"] += 1
    return value


def stoi_tiled_count() -> int:
    """How many STOI scores needed the short-clip tiling (not failures)."""
    return _TILED["stoi"]
