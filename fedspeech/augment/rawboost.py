"""RawBoost data boosting for raw waveforms.

Tak, Kamble, Patino, Todisco and Evans, "RawBoost: A raw data boosting and augmentation
method applied to automatic speaker verification anti-spoofing", ICASSP 2022.

Three signal-processing distortions of a 1-D waveform and their combinations:

1. linear and non-linear convolutive noise (LnL): ``Σ_j h_j * x^j`` for ``j = 1..N_f``,
   each ``h_j`` a cascade of random FIR notch (band-stop) filters;
2. impulsive signal-dependent additive noise (ISD): up to ``P`` % of the samples get
   ``x[i] · g_sd · u₁ · u₂`` added, ``u₁, u₂ ~ U(-1, 1)``;
3. stationary signal-independent additive noise (SSI): white noise coloured by a random
   notch filter cascade, added at an SNR drawn from ``[SNRmin, SNRmax]`` dB.

Algorithms 4–7 chain them in series (1+2+3, 1+2, 1+3, 2+3); algorithm 8 runs 1 and 2 in
parallel on the clean input and adds the results. All randomness comes from the
``numpy.random.Generator`` passed in, so a seeded generator reproduces the output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import signal

__all__ = [
    "ALGORITHMS",
    "RawBoost",
    "RawBoostParams",
    "fir_filter",
    "isd_additive_noise",
    "lnl_convolutive_noise",
    "notch_filter_coeffs",
    "rawboost",
    "ssi_additive_noise",
]


@dataclass(frozen=True)
class RawBoostParams:
    """RawBoost settings; defaults are those of the reference implementation's ``main.py``.

    Parameters
    ----------
    n_f : int
        Order of the (non-)linearity ``N_f``; 1 keeps only the linear component.
    n_bands : int
        Notch filters per cascade.
    min_f, max_f : float
        Range of notch centre frequencies (Hz).
    min_bw, max_bw : float
        Range of notch widths (Hz).
    min_coeff, max_coeff : int
        Range of FIR lengths per notch (made odd).
    min_g, max_g : float
        Gain range (dB) of the linear component and of the SSI noise filter.
    min_bias_lin_nonlin, max_bias_lin_nonlin : float
        Gain offsets (dB) subtracted for the non-linear components.
    p : float
        Maximum percentage of samples hit by impulsive noise.
    g_sd : float
        Impulsive noise gain.
    snr_min, snr_max : float
        SNR range (dB) of the stationary additive noise.
    """

    n_f: int = 5
    n_bands: int = 5
    min_f: float = 20.0
    max_f: float = 8000.0
    min_bw: float = 100.0
    max_bw: float = 1000.0
    min_coeff: int = 10
    max_coeff: int = 100
    min_g: float = 0.0
    max_g: float = 0.0
    min_bias_lin_nonlin: float = 5.0
    max_bias_lin_nonlin: float = 20.0
    p: float = 10.0
    g_sd: float = 2.0
    snr_min: float = 10.0
    snr_max: float = 40.0


def _uniform(rng: np.random.Generator, a: float, b: float) -> float:
    # The reference draws U(min_g - min_bias, max_g - max_bias), whose bounds come reversed
    # with the defaults; numpy only defines uniform() for low <= high.
    lo, hi = (a, b) if a <= b else (b, a)
    return float(rng.uniform(lo, hi))


def _peak_normalise(x: np.ndarray, always: bool = False) -> np.ndarray:
    """Divide by the peak magnitude if it exceeds 1 (or always, when non-zero)."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > 1.0 or (always and peak > 0.0):
        return x / peak
    return x


def notch_filter_coeffs(
    rng: np.random.Generator,
    params: RawBoostParams,
    sample_rate: int,
    gain_db: tuple[float, float] | None = None,
) -> np.ndarray:
    """Random cascade of ``n_bands`` FIR notch filters, peak-normalised then scaled.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the centre frequencies, widths, lengths and gain.
    params : RawBoostParams
        Ranges to draw from.
    sample_rate : int
        Sampling rate in Hz.
    gain_db : tuple[float, float], optional
        Gain range in dB; defaults to ``(params.min_g, params.max_g)``.

    Returns
    -------
    np.ndarray
        FIR taps whose magnitude response peaks at ``10^(G/20)``.
    """
    nyquist = sample_rate / 2.0
    taps = np.ones(1)
    for _ in range(params.n_bands):
        centre = _uniform(rng, params.min_f, min(params.max_f, nyquist))
        width = _uniform(rng, params.min_bw, params.max_bw)
        length = int(rng.integers(params.min_coeff, params.max_coeff, endpoint=False))
        # firwin needs an odd length for a band-stop response (its gain at Nyquist is 1).
        length += 1 - length % 2
        low = max(centre - width / 2.0, 1e-3)
        high = min(centre + width / 2.0, nyquist - 1e-3)
        if not low < high:
            continue
        notch = signal.firwin(length, [low, high], window="hamming", fs=sample_rate)
        taps = np.convolve(taps, notch)
    lo, hi = gain_db if gain_db is not None else (params.min_g, params.max_g)
    gain = _uniform(rng, lo, hi)
    _, response = signal.freqz(taps, 1, fs=sample_rate)
    peak = float(np.max(np.abs(response)))
    return np.asarray(10.0 ** (gain / 20.0) * taps / peak)


def fir_filter(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """FIR-filter ``x`` and undo the filter's delay, keeping ``len(x)`` samples."""
    delay = (len(taps) - 1) // 2
    full = signal.oaconvolve(x, taps, mode="full")
    return np.asarray(full[delay : delay + len(x)])


def lnl_convolutive_noise(
    x: np.ndarray, rng: np.random.Generator, params: RawBoostParams, sample_rate: int = 16000
) -> np.ndarray:
    """Algorithm 1: linear and non-linear convolutive noise ``Σ_j h_j * x^j``.

    The linear term's filter gain is drawn from ``[min_g, max_g]`` dB, the non-linear
    terms' from the range shifted down by the bias parameters (``[-20, -5]`` dB by
    default), as in the reference implementation.
    """
    out = np.zeros_like(x)
    for order in range(1, params.n_f + 1):
        if order == 1:
            gains = (params.min_g, params.max_g)
        else:
            gains = (
                params.min_g - params.min_bias_lin_nonlin,
                params.max_g - params.max_bias_lin_nonlin,
            )
        taps = notch_filter_coeffs(rng, params, sample_rate, gains)
        out = out + fir_filter(x**order, taps)
    if out.size:
        out = out - out.mean()
    return _peak_normalise(out)


def isd_additive_noise(
    x: np.ndarray, rng: np.random.Generator, params: RawBoostParams
) -> np.ndarray:
    """Algorithm 2: impulsive signal-dependent noise on a random ``β ≤ P`` % of samples."""
    beta = _uniform(rng, 0.0, params.p)
    count = int(len(x) * beta / 100.0)
    y = x.copy()
    if count:
        idx = rng.choice(len(x), size=count, replace=False)
        shape = (2.0 * rng.random(count) - 1.0) * (2.0 * rng.random(count) - 1.0)
        y[idx] = x[idx] + params.g_sd * x[idx] * shape
    return _peak_normalise(y)


def ssi_additive_noise(
    x: np.ndarray, rng: np.random.Generator, params: RawBoostParams, sample_rate: int = 16000
) -> np.ndarray:
    """Algorithm 3: coloured stationary noise at an SNR in ``[snr_min, snr_max]`` dB."""
    noise = rng.standard_normal(len(x))
    noise = _peak_normalise(fir_filter(noise, notch_filter_coeffs(rng, params, sample_rate)), True)
    snr = _uniform(rng, params.snr_min, params.snr_max)
    noise_norm = float(np.linalg.norm(noise))
    if noise_norm == 0.0:
        return x.copy()
    scale = float(np.linalg.norm(x)) / (10.0 ** (snr / 20.0)) / noise_norm
    return x + scale * noise


_Step = Callable[[np.ndarray, np.random.Generator, RawBoostParams, int], np.ndarray]


def _lnl(x: np.ndarray, rng: np.random.Generator, p: RawBoostParams, sr: int) -> np.ndarray:
    return lnl_convolutive_noise(x, rng, p, sr)


def _isd(x: np.ndarray, rng: np.random.Generator, p: RawBoostParams, sr: int) -> np.ndarray:
    return isd_additive_noise(x, rng, p)


def _ssi(x: np.ndarray, rng: np.random.Generator, p: RawBoostParams, sr: int) -> np.ndarray:
    return ssi_additive_noise(x, rng, p, sr)


ALGORITHMS: dict[int, tuple[_Step, ...]] = {
    1: (_lnl,),
    2: (_isd,),
    3: (_ssi,),
    4: (_lnl, _isd, _ssi),
    5: (_lnl, _isd),
    6: (_lnl, _ssi),
    7: (_isd, _ssi),
    8: (_lnl, _isd),  # parallel, see rawboost()
}
"""Algorithm number → its steps (applied in series, except 8: in parallel)."""


def rawboost(
    wave: np.ndarray,
    algo: int,
    rng: np.random.Generator,
    sample_rate: int = 16000,
    params: RawBoostParams | None = None,
) -> np.ndarray:
    """Apply RawBoost algorithm ``algo`` (1–8) to a 1-D waveform.

    Parameters
    ----------
    wave : np.ndarray
        ``(T,)`` waveform, nominally in ``[-1, 1]``.
    algo : int
        1 LnL, 2 ISD, 3 SSI, 4 = 1+2+3, 5 = 1+2, 6 = 1+3, 7 = 2+3 (series),
        8 = 1 ‖ 2 (parallel: outputs added, then scaled down if the peak exceeds 1, as in
        the reference implementation).
    rng : numpy.random.Generator
        Source of all randomness.
    sample_rate : int
        Sampling rate in Hz.
    params : RawBoostParams, optional
        Defaults to the published settings.

    Returns
    -------
    np.ndarray
        ``(T,)`` waveform of the input's dtype.

    Examples
    --------
    >>> x = np.sin(np.linspace(0, 200, 4000)).astype(np.float32) * 0.5
    >>> y = rawboost(x, 4, np.random.default_rng(0))
    >>> y.shape, y.dtype, bool(np.isfinite(y).all())
    ((4000,), dtype('float32'), True)
    """
    if algo not in ALGORITHMS:
        raise ValueError(f"RawBoost algorithm must be 1-8, got {algo}")
    if wave.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {wave.shape}")
    params = params or RawBoostParams()
    x = wave.astype(np.float64)
    if x.size == 0:
        return wave.copy()
    steps = ALGORITHMS[algo]
    if algo == 8:
        y = _peak_normalise(sum((step(x, rng, params, sample_rate) for step in steps), x * 0))
    else:
        y = x
        for step in steps:
            y = step(y, rng, params, sample_rate)
    return y.astype(wave.dtype if np.issubdtype(wave.dtype, np.floating) else np.float32)


@dataclass(frozen=True)
class RawBoost:
    """RawBoost algorithm ``algo`` as a waveform augmentation (spec ``rawboost:<algo>``).

    Parameters
    ----------
    algo : int
        Algorithm number, 1–8 (see :func:`rawboost`).
    sample_rate : int
        Sampling rate in Hz.
    params : RawBoostParams
        Distortion settings; the published defaults.

    Examples
    --------
    >>> aug = RawBoost(3)
    >>> out = aug.batch(torch.zeros(2, 1000), np.random.default_rng(0))
    >>> out.shape
    torch.Size([2, 1000])
    """

    algo: int
    sample_rate: int = 16000
    params: RawBoostParams = field(default_factory=RawBoostParams)
    domain: str = field(default="wave", init=False)

    def __post_init__(self) -> None:
        if self.algo not in ALGORITHMS:
            raise ValueError(f"RawBoost algorithm must be 1-8, got {self.algo}")

    @property
    def spec(self) -> str:
        """The spec string that builds this augmentation."""
        return f"rawboost:{self.algo}"

    def __call__(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment one ``(T,)`` waveform."""
        return rawboost(wave, self.algo, rng, self.sample_rate, self.params)

    def batch(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Augment each row of a ``(B, T)`` tensor independently; same dtype and device."""
        if x.dim() != 2:
            raise ValueError(f"expected a (B, T) batch, got shape {tuple(x.shape)}")
        rows = x.detach().cpu().to(torch.float64).numpy()
        out = np.stack([self(row, rng) for row in rows]) if len(rows) else rows
        return torch.from_numpy(out).to(dtype=x.dtype, device=x.device)
