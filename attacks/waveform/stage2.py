"""Stage 2 of the attack: recovered features -> waveform, one inverter per front-end.

Li, Zhang & Liu, "Speech privacy leakage from shared gradients in distributed learning",
recover a waveform from a Mel spectrogram by non-negative least squares onto the STFT
magnitude followed by Griffin-Lim phase retrieval; from MFCC by an inverse DCT, dB to power
and the same Mel path; the pre-emphasis is undone last. Here

* ``"mel"``  -- ``(B, n_mels, T)`` Mel power -> per-frame NNLS with the front-end's own
  filterbank (Lawson-Hanson, :func:`scipy.optimize.nnls`, by default; see
  :func:`mel_to_magnitude` for the alternatives, including the
  :func:`librosa.feature.inverse.mel_to_stft` solver) -> magnitude ->
  :func:`librosa.griffinlim` with the front-end's window, FFT size, hop, centring and zero
  padding -> inverse pre-emphasis (:func:`scipy.signal.lfilter`);
* ``"mfcc"`` -- ``(B, n_mfcc, T)`` normalised MFCC -> undo CMVN with the true or a prior
  mean/std -> transpose of the orthonormal DCT-II (the dropped coefficients are zeros) ->
  dB -> power -> the ``"mel"`` path on the 128-band filterbank;
* ``"raw"``  -- identity, for models that take the waveform itself.

Examples
--------
>>> import numpy as np
>>> INVERTERS.names()
['mel', 'mfcc', 'raw']
>>> features_to_wave(np.zeros(8000), "raw", length=10).shape
(10,)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from attacks.waveform.cmvn_prior import CmvnStats, cmvn_prior
from fedspeech.errors import ConfigError
from fedspeech.frontends import MelFrontend, MfccFrontend, build_frontend
from fedspeech.registry import Registry

__all__ = [
    "DEFAULT_N_ITER",
    "INVERTERS",
    "Inverter",
    "features_to_wave",
    "griffin_lim",
    "invert_mel",
    "invert_mfcc",
    "invert_raw",
    "mel_to_magnitude",
    "mfcc_to_mel",
    "true_cmvn_stats",
    "undo_preemphasis",
]

# Griffin-Lim iterations: librosa's own default for mel_to_audio. On 20 FSDD clips (true
# features, active-set NNLS) 32, 64, 100 and 200 iterations of librosa's fast Griffin-Lim
# scored the same within 0.01 PESQ-NB and STOI for Mel (2.06 / 0.84) and slightly worse with
# more for MFCC (1.63 -> 1.58, 0.68 -> 0.66), at a cost linear in the count (about 3 ms of
# CPU per iteration and clip): the magnitude estimated from 32 Mel bands, not the phase, is
# the bottleneck.
DEFAULT_N_ITER = 32

# NNLS solver per path (see mel_to_magnitude). On the same 20 clips (32 iterations), PESQ-NB
# / STOI for active-set, L-BFGS and librosa's solver: Mel 2.06 / 0.84, 1.85 / 0.79,
# 1.71 / 0.77; MFCC (prior CMVN) 1.63 / 0.68, 1.57 / 0.66, 1.57 / 0.66.
MEL_NNLS = "active-set"
MFCC_NNLS = "active-set"


# ``(features (B, F, T) float64 (B, samples) for "raw", frontend or None, *, n_iter, length,
# seed, **options) -> (B, samples) float32``.
Inverter = Callable[..., np.ndarray]

INVERTERS: Registry[Inverter] = Registry("waveform inverter")


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _fix_length(waves: np.ndarray, length: int | None) -> np.ndarray:
    """Zero-pad or cut ``(B, n)`` at the end, as ``istft(length=...)`` does."""
    if length is None or waves.shape[-1] == length:
        return waves
    if waves.shape[-1] > length:
        return waves[..., :length]
    pad = [(0, 0)] * (waves.ndim - 1) + [(0, length - waves.shape[-1])]
    return np.pad(waves, pad)


def undo_preemphasis(y: np.ndarray, coef: float = 0.97) -> np.ndarray:
    """Invert ``y[0] = x[0], y[t] = x[t] - coef x[t-1]`` along the last axis.

    The all-pole filter ``1 / (1 - coef z^-1)`` (``scipy.signal.lfilter([1], [1, -coef])``)
    started at rest, which is the exact inverse of the front-end's pre-emphasis.

    Parameters
    ----------
    y : np.ndarray
        ``(..., samples)`` pre-emphasised signal.
    coef : float
        Pre-emphasis coefficient (0.97 in the study); 0 returns ``y`` unchanged.

    Returns
    -------
    np.ndarray
        ``(..., samples)`` float64.
    """
    y = np.asarray(y, dtype=np.float64)
    if coef == 0.0:
        return y
    # Imported here, as scipy.optimize and librosa below: slow to import, and only the
    # stage-2 paths that use them need them.
    from scipy.signal import lfilter

    return np.asarray(lfilter([1.0], [1.0, -coef], y, axis=-1))


NNLS_METHODS = ("lbfgs", "active-set", "librosa")


def _nnls_lbfgs(basis: np.ndarray, target: np.ndarray, maxiter: int) -> np.ndarray:
    """``min ||basis @ x - target||^2, x >= 0`` for all columns at once, by L-BFGS-B."""
    from scipy.optimize import Bounds, minimize

    x0 = np.clip(np.linalg.pinv(basis) @ target, 0.0, None)
    shape = x0.shape

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        resid = basis @ x.reshape(shape) - target
        return 0.5 * float(np.sum(resid * resid)), (basis.T @ resid).ravel()

    res = minimize(
        objective,
        x0.ravel(),
        jac=True,
        method="L-BFGS-B",
        bounds=Bounds(np.zeros(x0.size), np.full(x0.size, np.inf)),
        options={"maxcor": 10, "gtol": 1e-10, "ftol": 1e-15, "maxiter": maxiter},
    )
    return np.asarray(res.x).reshape(shape)


def _nnls_active_set(basis: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The same problem frame by frame with Lawson-Hanson (:func:`scipy.optimize.nnls`)."""
    from scipy.optimize import nnls

    out = np.zeros((basis.shape[1], target.shape[1]))
    for t in range(target.shape[1]):
        if np.any(target[:, t] > 0):
            out[:, t] = nnls(basis, target[:, t])[0]
    return out


def mel_to_magnitude(
    mel_power: np.ndarray,
    mel_basis: np.ndarray,
    *,
    method: str = "lbfgs",
    maxiter: int = 100,
) -> np.ndarray:
    """Mel power spectrogram -> linear STFT magnitude by non-negative least squares.

    Solves ``min ||basis @ P - M||^2, P >= 0`` for the power ``P`` of each frame and returns
    ``sqrt(P)``. The system is underdetermined (``n_mels`` equations, ``n_fft // 2 + 1``
    unknowns), so the method decides which of the exact solutions is returned:

    * ``"lbfgs"`` -- L-BFGS-B from the clipped pseudo-inverse, the scheme of
      :func:`librosa.util.nnls` but iterated to convergence; stays close to the smooth
      minimum-norm solution.
    * ``"active-set"`` -- Lawson-Hanson (:func:`scipy.optimize.nnls`) per frame; a sparse
      vertex solution (at most ``n_mels`` non-zero bins per frame).
    * ``"librosa"`` -- :func:`librosa.util.nnls` as :func:`librosa.feature.inverse.mel_to_stft`
      calls it. Its objective is divided by the array size, so on these filterbanks
      L-BFGS-B's gradient tolerance is met at the start and it returns the clipped
      pseudo-inverse, whose Mel spectrum is off by several per cent.

    Every frame is scaled to unit peak (and the filterbank to unit maximum) before solving,
    so quiet frames converge as well as loud ones.

    Parameters
    ----------
    mel_power : np.ndarray
        ``(B, n_mels, T)`` Mel power; negative values (stage-1 noise) count as 0.
    mel_basis : np.ndarray
        ``(n_mels, n_fft // 2 + 1)`` filterbank that made it.
    method : str
        One of :data:`NNLS_METHODS`.
    maxiter : int
        L-BFGS-B iteration cap per example (``"lbfgs"`` only).

    Returns
    -------
    np.ndarray
        ``(B, n_fft // 2 + 1, T)`` magnitude.
    """
    if method not in NNLS_METHODS:
        raise ConfigError(f"unknown NNLS method {method!r}; known: {', '.join(NNLS_METHODS)}")
    basis = np.asarray(mel_basis, dtype=np.float64)
    mel = np.clip(np.asarray(mel_power, dtype=np.float64), 0.0, None)
    peak = float(basis.max())
    basis = basis / peak
    scale = mel.max(axis=-2, keepdims=True)
    scale = np.where(scale > 0, scale, 1.0)
    target = mel / scale
    if method == "librosa":
        import librosa

        power = librosa.util.nnls(basis, target)
    elif method == "lbfgs":
        power = np.stack([_nnls_lbfgs(basis, m, maxiter) for m in target])
    else:
        power = np.stack([_nnls_active_set(basis, m) for m in target])
    return np.sqrt(np.clip(power * (scale / peak), 0.0, None))


def griffin_lim(
    magnitude: np.ndarray,
    frontend: MelFrontend | MfccFrontend,
    *,
    n_iter: int = DEFAULT_N_ITER,
    length: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Phase retrieval with the front-end's framing (:func:`librosa.griffinlim`).

    Fast Griffin-Lim (Perraudin et al., momentum 0.99, librosa's default) from random
    phases, with the front-end's window array, ``n_fft``, hop, centring and zero padding.

    Parameters
    ----------
    magnitude : np.ndarray
        ``(B, n_fft // 2 + 1, T)`` STFT magnitude.
    frontend : nn.Module
        A spectral front-end (``n_fft``, ``hop_length``, ``win_length``, ``window``,
        ``center``).
    n_iter : int
        Griffin-Lim iterations.
    length : int or None
        Output samples (None: ``hop * (T - 1)`` when centred).
    seed : int
        Seed of the random initial phase.

    Returns
    -------
    np.ndarray
        ``(B, samples)`` float64, still pre-emphasised.
    """
    import librosa

    if n_iter < 1:
        raise ConfigError(f"Griffin-Lim needs at least one iteration, got n_iter={n_iter}")
    window = np.asarray(frontend.window.detach().cpu().numpy(), dtype=np.float64)
    return np.asarray(
        librosa.griffinlim(
            np.asarray(magnitude, dtype=np.float64),
            n_iter=n_iter,
            hop_length=int(frontend.hop_length),
            win_length=int(frontend.win_length),
            n_fft=int(frontend.n_fft),
            window=window,
            center=bool(frontend.center),
            pad_mode="constant",
            length=length,
            init="random",
            random_state=seed,
        ),
        dtype=np.float64,
    )


def _mel_power_to_wave(
    mel_power: np.ndarray,
    frontend: MelFrontend | MfccFrontend,
    n_iter: int,
    length: int | None,
    seed: int,
    nnls: str,
) -> np.ndarray:
    basis = frontend.mel_basis.detach().cpu().numpy()
    mag = mel_to_magnitude(mel_power, basis, method=nnls)
    wave = griffin_lim(mag, frontend, n_iter=n_iter, length=length, seed=seed)
    return undo_preemphasis(wave, float(frontend.preemphasis)).astype(np.float32)


@INVERTERS.register("mel")
def invert_mel(
    features: np.ndarray,
    frontend: MelFrontend | None,
    *,
    n_iter: int = DEFAULT_N_ITER,
    length: int | None = 16_000,
    seed: int = 0,
    nnls: str = MEL_NNLS,
) -> np.ndarray:
    """Mel power ``(B, n_mels, T)`` -> waveform ``(B, samples)`` (NNLS, Griffin-Lim).

    ``nnls`` picks the solver of :func:`mel_to_magnitude`.
    """
    fe = frontend if frontend is not None else MelFrontend()
    return _mel_power_to_wave(features, fe, n_iter, length, seed, nnls)


def true_cmvn_stats(frontend: MfccFrontend, waves: np.ndarray | torch.Tensor) -> CmvnStats:
    """The per-example CMVN statistics the front-end used (analysis only).

    An attacker never sees these; they let an analysis separate the loss due to CMVN from
    the rest of stage 2.

    Parameters
    ----------
    frontend : MfccFrontend
        The front-end that made the features.
    waves : np.ndarray or torch.Tensor
        ``(samples,)`` or ``(B, samples)`` waveforms.

    Returns
    -------
    mean, std : np.ndarray
        ``(B, n_mfcc)`` each: mean and population std over time of the cepstra before CMVN.
    """
    x = torch.as_tensor(np.asarray(waves, dtype=np.float32))
    with torch.no_grad():
        cep = frontend.cepstra(x).double().numpy()
    return cep.mean(axis=-1), cep.std(axis=-1)


def mfcc_to_mel(
    features: np.ndarray, frontend: MfccFrontend, cmvn_stats: CmvnStats | None = None
) -> np.ndarray:
    """Normalised MFCC -> Mel power, undoing CMVN, the DCT and the dB scale.

    Parameters
    ----------
    features : np.ndarray
        ``(B, n_mfcc, T)`` MFCC after CMVN (as :class:`MfccFrontend` returns them).
    frontend : MfccFrontend
        Supplies ``dct_matrix``, ``cmvn`` and ``eps``.
    cmvn_stats : (mean, std) or None
        Each ``(n_mfcc,)`` or ``(B, n_mfcc)``. None uses :func:`cmvn_prior`'s stored table,
        the attacker's guess, since the true per-utterance statistics never leave the
        client; front-end settings it does not cover need the guess passed in, e.g.
        ``cmvn_prior(frontend, speech)``.

    Returns
    -------
    np.ndarray
        ``(B, n_mels, T)`` Mel power. The ``top_db`` floor is not undone: it only raised
        values 80 dB below the peak, which stay negligible.
    """
    cep = np.asarray(features, dtype=np.float64)
    if bool(frontend.cmvn):
        mean, std = cmvn_prior(frontend) if cmvn_stats is None else cmvn_stats
        mean = np.asarray(mean, dtype=np.float64)
        std = np.asarray(std, dtype=np.float64)
        if mean.shape[-1] != cep.shape[1] or std.shape[-1] != cep.shape[1]:
            raise ConfigError(
                f"cmvn_stats have {mean.shape[-1]} and {std.shape[-1]} coefficients, "
                f"features {cep.shape[1]}"
            )
        cep = cep * (std[..., :, None] + float(frontend.eps)) + mean[..., :, None]
    dct = frontend.dct_matrix.detach().cpu().numpy().astype(np.float64)
    # The orthonormal DCT's inverse is its transpose; the missing rows are zero coefficients.
    db = np.einsum("cm,bct->bmt", dct, cep)
    return np.asarray(10.0 ** (db / 10.0))


@INVERTERS.register("mfcc")
def invert_mfcc(
    features: np.ndarray,
    frontend: MfccFrontend | None,
    *,
    n_iter: int = DEFAULT_N_ITER,
    length: int | None = 16_000,
    seed: int = 0,
    cmvn_stats: CmvnStats | None = None,
    nnls: str = MFCC_NNLS,
) -> np.ndarray:
    """Normalised MFCC ``(B, n_mfcc, T)`` -> waveform ``(B, samples)``; see :func:`mfcc_to_mel`.

    ``nnls`` picks the solver of :func:`mel_to_magnitude`.
    """
    fe = frontend if frontend is not None else MfccFrontend()
    mel = mfcc_to_mel(features, fe, cmvn_stats)
    return _mel_power_to_wave(mel, fe, n_iter, length, seed, nnls)


@INVERTERS.register("raw")
def invert_raw(
    features: np.ndarray,
    frontend: nn.Module | None,
    *,
    n_iter: int = DEFAULT_N_ITER,
    length: int | None = 16_000,
    seed: int = 0,
) -> np.ndarray:
    """Identity for raw-waveform models: ``(B, samples)`` -> ``(B, length)`` (end pad/cut)."""
    del frontend, n_iter, seed
    return _fix_length(np.asarray(features, dtype=np.float32), length)


def _frontend_name(frontend: nn.Module) -> str:
    if isinstance(frontend, MfccFrontend):
        return "mfcc"
    if isinstance(frontend, MelFrontend):
        return "mel"
    name = getattr(frontend, "inverter_name", None)
    if isinstance(name, str):
        return name
    raise ConfigError(
        f"no waveform inverter for front-end {type(frontend).__name__}; "
        f"known: {', '.join(INVERTERS.names())}"
    )


def features_to_wave(
    features: np.ndarray | torch.Tensor,
    frontend: nn.Module | str,
    *,
    n_iter: int = DEFAULT_N_ITER,
    length: int | None = 16_000,
    seed: int = 0,
    **kwargs: Any,
) -> np.ndarray:
    """Invert features to a waveform with the inverter registered for the front-end.

    Parameters
    ----------
    features : np.ndarray or torch.Tensor
        ``(F, T)`` or ``(B, F, T)`` features as the front-end returns them; for ``"raw"``
        ``(samples,)`` or ``(B, samples)``.
    frontend : nn.Module or str
        The front-end that made them (its settings drive the inversion), or a name in
        :data:`INVERTERS` for the study's default settings.
    n_iter : int
        Griffin-Lim iterations (:data:`DEFAULT_N_ITER`).
    length : int or None
        Output samples; None keeps what the frames give (``hop * (T - 1)``).
    seed : int
        Seed of Griffin-Lim's random initial phase.
    **kwargs
        Passed to the inverter, e.g. ``cmvn_stats=(mean, std)`` for ``"mfcc"``.

    Returns
    -------
    np.ndarray
        ``(samples,)`` float32 for one example, ``(B, samples)`` for a batch.

    Raises
    ------
    ConfigError
        Unknown front-end, or features whose row count does not match it.
    ValueError
        Features of the wrong rank, or containing NaN or infinity.
    """
    if isinstance(frontend, str):
        name = frontend
        inverter: Callable[..., np.ndarray] = INVERTERS.get(name)
        module: nn.Module | None = None if name == "raw" else build_frontend(name)
    else:
        name = _frontend_name(frontend)
        inverter = INVERTERS.get(name)
        module = frontend
    x = _to_numpy(features)
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain NaN or infinity")
    single_rank = 1 if name == "raw" else 2
    if x.ndim not in (single_rank, single_rank + 1):
        expect = "(samples,) or (B, samples)" if name == "raw" else "(F, T) or (B, F, T)"
        raise ValueError(f"expected features of shape {expect}, got {x.shape}")
    single = x.ndim == single_rank
    if single:
        x = x[None]
    if module is not None:
        n_features: Any = getattr(module, "n_features", x.shape[1])
        rows = int(n_features)
        if x.shape[1] != rows:
            raise ConfigError(f"features have {x.shape[1]} rows, the {name} front-end {rows}")
    out = inverter(x, module, n_iter=n_iter, length=length, seed=seed, **kwargs)
    return out[0] if single else out
