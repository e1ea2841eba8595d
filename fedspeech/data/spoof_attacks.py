"""Spoofing attacks for the built-in deepfake corpus: bona fide speech re-synthesised.

Each attack takes a 16 kHz float waveform and a seed and returns a waveform of the same length,
re-synthesised by one method so that its artefacts are specific to that method:

``gl``
    Griffin-Lim phase retrieval (8 iterations) from the linear STFT magnitude
    (512-point FFT, hop 128): magnitude intact, phase only roughly consistent.
``mel``
    Mel-spectrogram inversion through a coarse 40-band HTK mel filterbank (1024-point FFT,
    hop 256): non-negative least squares back to a linear magnitude, then 8 Griffin-Lim
    iterations. Smeared spectral detail plus phase artefacts.
``lpc``
    Source-filter (LPC) vocoder: order-18 all-pole envelope per 32 ms frame, excited by a
    pulse train at an autocorrelation F0 estimate in voiced frames and white noise elsewhere,
    Hann overlap-add. The true phase and fine spectral structure are lost.
``codec``
    Telephone-like codec: down to 8 kHz, 8-bit mu-law (G.711-style) quantisation, back up to
    16 kHz, 3.6 kHz low-pass. Band limiting and quantisation noise, no vocoder at all.
``world``
    WORLD vocoder analysis/synthesis (DIO + StoneMask F0, CheapTrick envelope coded to 40
    dimensions, D4C aperiodicity) via ``pyworld``; registered only when ``pyworld`` imports.

:func:`apply_attack` runs one by name, then matches the output's RMS level to the input's (so
loudness is no cue) and checks length and finiteness. Every attack is a pure function of
``(wave, seed)``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from fedspeech.data.audio import resample
from fedspeech.data.corpus import SAMPLE_RATE
from fedspeech.registry import Registry

# Peak allowed after level matching, just under full scale so PCM16 never clips.
MAX_PEAK = 0.99


class Attack(Protocol):
    """Signature shared by every registered attack."""

    def __call__(self, wave: np.ndarray, seed: int) -> np.ndarray:
        """Re-synthesise ``(n,)`` float32 16 kHz ``wave``; returns ``(n,)`` float."""
        ...


SPOOF_ATTACKS: Registry[Attack] = Registry("spoof attack")


def _rng(seed: int, tag: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), *tag.encode()])


def _fit(y: np.ndarray, n: int) -> np.ndarray:
    """Crop or zero-pad ``y`` at the end to ``n`` samples."""
    if y.shape[0] >= n:
        return y[:n]
    return np.pad(y, (0, n - y.shape[0]))


@SPOOF_ATTACKS.register("gl")
def griffin_lim(wave: np.ndarray, seed: int) -> np.ndarray:
    """Griffin-Lim (8 iterations, random initial phase) from the ``|STFT|`` of ``wave``.

    Parameters
    ----------
    wave : np.ndarray
        ``(n,)`` float 16 kHz waveform.
    seed : int
        Seeds the initial phase.

    Returns
    -------
    np.ndarray
        ``(n,)`` float32.
    """
    import librosa

    n_fft, hop = 512, 128
    x = np.asarray(wave, dtype=np.float32)
    mag = np.abs(librosa.stft(x, n_fft=n_fft, hop_length=hop))
    y = librosa.griffinlim(
        mag, n_iter=8, hop_length=hop, n_fft=n_fft, length=x.shape[0], random_state=_rng(seed, "gl")
    )
    return np.asarray(y, dtype=np.float32)


def _nnls(basis: np.ndarray, target: np.ndarray, iters: int = 100) -> np.ndarray:
    """Non-negative ``P`` with ``basis @ P ~ target`` by multiplicative updates.

    ``basis`` is ``(m, d)``, ``target`` ``(m, t)``; returns ``(d, t)``. Starts from the clipped
    pseudo-inverse solution.
    """
    # librosa.util.nnls (L-BFGS-B) costs about 4x more CPU here and far more wall time when
    # BLAS threads compete on a busy machine.
    floor = 1e-10 * max(float(target.max()), 1e-30)
    p = np.maximum(np.linalg.pinv(basis) @ target, floor)
    numer = basis.T @ target
    for _ in range(iters):
        p *= numer / np.maximum(basis.T @ (basis @ p), 1e-30)
        # The floor keeps entries out of subnormal range, where arithmetic is very slow.
        np.maximum(p, floor, out=p)
    return p


@SPOOF_ATTACKS.register("mel")
def mel_inversion(wave: np.ndarray, seed: int) -> np.ndarray:
    """Invert a 40-band HTK mel power spectrogram: NNLS to ``|STFT|``, then 8 Griffin-Lim steps.

    The NNLS runs 100 multiplicative updates from the clipped pseudo-inverse.

    Parameters
    ----------
    wave : np.ndarray
        ``(n,)`` float 16 kHz waveform.
    seed : int
        Seeds the initial phase.

    Returns
    -------
    np.ndarray
        ``(n,)`` float32.
    """
    import librosa

    n_fft, hop, n_mels = 1024, 256, 40
    x = np.asarray(wave, dtype=np.float32)
    mel = librosa.feature.melspectrogram(
        y=x, sr=SAMPLE_RATE, n_fft=n_fft, hop_length=hop, n_mels=n_mels, htk=True, power=2.0
    )
    basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=n_fft, n_mels=n_mels, htk=True)
    mag = np.sqrt(_nnls(basis.astype(np.float64), mel.astype(np.float64)))
    # Not librosa's mel_to_audio: it gives Griffin-Lim no random_state, so it is not repeatable.
    y = librosa.griffinlim(
        mag,
        n_iter=8,
        hop_length=hop,
        n_fft=n_fft,
        length=x.shape[0],
        random_state=_rng(seed, "mel"),
    )
    return np.asarray(y, dtype=np.float32)


def _frames(x: np.ndarray, frame: int, hop: int) -> tuple[np.ndarray, int]:
    """``(n_frames, frame)`` view of ``x`` zero-padded by half a frame each side."""
    pad = frame // 2
    n_frames = 1 + int(np.ceil(x.shape[0] / hop))
    total = (n_frames - 1) * hop + frame
    padded = np.pad(x, (pad, total - x.shape[0] - pad))
    idx = np.arange(frame)[None, :] + hop * np.arange(n_frames)[:, None]
    return padded[idx], pad


def _f0_per_frame(frames: np.ndarray, fmin: float = 60.0, fmax: float = 400.0) -> np.ndarray:
    """Autocorrelation F0 in Hz per ``(n_frames, frame)`` row; 0 where unvoiced."""
    n = frames.shape[1]
    spec = np.fft.rfft(frames * np.hanning(n), 2 * n, axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, :n]
    lo, hi = int(SAMPLE_RATE / fmax), min(int(SAMPLE_RATE / fmin), n - 1)
    lag = lo + np.argmax(ac[:, lo : hi + 1], axis=1)
    strength = ac[np.arange(ac.shape[0]), lag] / np.maximum(ac[:, 0], 1e-12)
    energy = np.sqrt(np.mean(frames**2, axis=1))
    # Silence and background noise would otherwise pick a random "pitch".
    voiced = (strength > 0.35) & (energy > 0.05 * max(float(energy.max()), 1e-9))
    return np.where(voiced, SAMPLE_RATE / lag, 0.0)


@SPOOF_ATTACKS.register("lpc")
def lpc_vocoder(wave: np.ndarray, seed: int) -> np.ndarray:
    """LPC source-filter resynthesis with pulse-train or noise excitation, Hann overlap-add.

    Per 512-sample frame (hop 256): order-18 LPC ``A(z)`` of the windowed frame, F0 from the
    normalised autocorrelation, excitation through ``1/A(z)`` (128-sample warm-up), rescaled
    to the frame's RMS.

    Parameters
    ----------
    wave : np.ndarray
        ``(n,)`` float 16 kHz waveform.
    seed : int
        Seeds the noise excitation and a -100 dB analysis dither.

    Returns
    -------
    np.ndarray
        ``(n,)`` float32.
    """
    import librosa
    from scipy.signal import lfilter

    frame, hop, order, warm = 512, 256, 18, 128
    rng = _rng(seed, "lpc")
    x = np.asarray(wave, dtype=np.float64)
    n = x.shape[0]
    frames, pad = _frames(x, frame, hop)
    window = np.hanning(frame + 1)[:frame]  # periodic Hann: sums to 1 at 50 % overlap
    # The dither keeps LPC well-posed on digital silence.
    analysis = frames * window + 1e-5 * rng.standard_normal(frames.shape)
    coeffs = librosa.lpc(analysis, order=order, axis=-1)
    f0 = _f0_per_frame(frames)
    target = np.sqrt(np.mean(frames**2, axis=1))

    n_frames = frames.shape[0]
    length = (n_frames - 1) * hop + frame + warm
    noise = rng.standard_normal(length)
    out = np.zeros((n_frames - 1) * hop + frame)
    phase = 0.0
    for i in range(n_frames):
        seg = np.zeros(frame + warm)
        if f0[i] > 0:
            # Pulses continue the running phase, so the period is smooth across frames.
            step = f0[i] / SAMPLE_RATE
            ph = phase + step * np.arange(1, frame + warm + 1)
            seg[np.flatnonzero(np.diff(np.floor(np.concatenate(([phase], ph)))) > 0)] = 1.0
            seg *= np.sqrt(SAMPLE_RATE / f0[i])  # unit power
            phase = (phase + step * hop) % 1.0
        else:
            start = i * hop
            seg = noise[start : start + frame + warm].copy()
        y = lfilter([1.0], coeffs[i], seg)[warm:]
        rms = np.sqrt(np.mean(y**2))
        if rms > 0 and np.isfinite(rms):
            y *= target[i] / rms
        else:
            y = np.zeros(frame)
        out[i * hop : i * hop + frame] += y * window
    return out[pad : pad + n].astype(np.float32)


@lru_cache(maxsize=1)
def _codec_lowpass() -> np.ndarray:
    from scipy.signal import butter

    return np.asarray(butter(6, 3600, btype="low", fs=SAMPLE_RATE, output="sos"))


@SPOOF_ATTACKS.register("codec")
def mulaw_codec(wave: np.ndarray, seed: int) -> np.ndarray:
    """Telephone codec: 16 -> 8 kHz, 8-bit mu-law (mu = 255), 8 -> 16 kHz, 3.6 kHz low-pass.

    Parameters
    ----------
    wave : np.ndarray
        ``(n,)`` float 16 kHz waveform in [-1, 1].
    seed : int
        Unused; the codec is deterministic.

    Returns
    -------
    np.ndarray
        ``(n,)`` float32.
    """
    from scipy.signal import sosfiltfilt

    del seed
    mu = 255.0
    x = np.asarray(wave, dtype=np.float32)
    narrow = np.clip(resample(x, SAMPLE_RATE, 8000), -1.0, 1.0).astype(np.float64)
    code = np.sign(narrow) * np.log1p(mu * np.abs(narrow)) / np.log1p(mu)
    code = np.round((code + 1.0) * 127.5) / 127.5 - 1.0  # 256 levels
    decoded = np.sign(code) * np.expm1(np.abs(code) * np.log1p(mu)) / mu
    wide = resample(decoded.astype(np.float32), 8000, SAMPLE_RATE).astype(np.float64)
    y = sosfiltfilt(_codec_lowpass(), wide)
    return _fit(np.asarray(y, dtype=np.float32), x.shape[0])


def _load_pyworld() -> ModuleType | None:
    """The ``pyworld`` module, or None where it is not installed or cannot be imported."""
    try:
        return importlib.import_module("pyworld")
    except ModuleNotFoundError as exc:
        if exc.name != "pkg_resources":
            return None
    except ImportError:
        return None
    # pyworld 0.3.5's __init__ only imports pkg_resources for its version string, and
    # setuptools >= 81 no longer ships it; the compiled module itself works, so load that.
    spec = importlib.util.find_spec("pyworld")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for path in sorted(Path(folder).glob("pyworld*.so")) + sorted(Path(folder).glob("*.pyd")):
            loader = importlib.machinery.ExtensionFileLoader("pyworld.pyworld", str(path))
            ext_spec = importlib.util.spec_from_file_location(
                "pyworld.pyworld", path, loader=loader
            )
            if ext_spec is None:
                continue
            try:
                module = importlib.util.module_from_spec(ext_spec)
                loader.exec_module(module)
            except ImportError:
                continue
            return module
    return None


_PYWORLD = _load_pyworld()

if _PYWORLD is not None:
    _pw: ModuleType = _PYWORLD

    @SPOOF_ATTACKS.register("world")
    def world_vocoder(wave: np.ndarray, seed: int) -> np.ndarray:
        """WORLD analysis/synthesis, 5 ms frames, envelope coded to 40 dimensions and back.

        Parameters
        ----------
        wave : np.ndarray
            ``(n,)`` float 16 kHz waveform.
        seed : int
            Unused; WORLD resets its noise generator on every synthesis.

        Returns
        -------
        np.ndarray
            ``(n,)`` float32.
        """
        del seed
        x = np.ascontiguousarray(wave, dtype=np.float64)
        f0, t = _pw.dio(x, SAMPLE_RATE, frame_period=5.0)
        f0 = _pw.stonemask(x, f0, t, SAMPLE_RATE)
        sp = _pw.cheaptrick(x, f0, t, SAMPLE_RATE)
        ap = _pw.d4c(x, f0, t, SAMPLE_RATE)
        fft_size = (sp.shape[1] - 1) * 2
        coded = _pw.code_spectral_envelope(sp, SAMPLE_RATE, 40)
        sp = _pw.decode_spectral_envelope(coded, SAMPLE_RATE, fft_size)
        y = _pw.synthesize(f0, sp, ap, SAMPLE_RATE, 5.0)
        return _fit(np.asarray(y, dtype=np.float32), x.shape[0])


def single_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """Context limiting BLAS/OpenMP pools to one thread (a no-op without threadpoolctl)."""
    # The attacks do many small matrix products: on a busy machine, BLAS threads only fight
    # each other and the other workers (up to 10x slower wall time here); entering costs ~1 ms.
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1)


def available_attacks() -> list[str]:
    """Names of the attacks usable here, sorted (``world`` only where ``pyworld`` imports)."""
    return SPOOF_ATTACKS.names()


def apply_attack(name: str, wave: np.ndarray, seed: int) -> np.ndarray:
    """Run attack ``name`` on ``wave`` and match the result's RMS to the input's.

    Parameters
    ----------
    name : str
        A name in :data:`SPOOF_ATTACKS`.
    wave : np.ndarray
        ``(n,)`` float 16 kHz waveform in [-1, 1].
    seed : int
        Makes the attack repeatable; derive it from the utterance, not its position.

    Returns
    -------
    np.ndarray
        ``(n,)`` float32, same RMS as ``wave`` unless that would push the peak past 0.99.

    Raises
    ------
    ConfigError
        Unknown attack name.
    """
    attack = SPOOF_ATTACKS.get(name)
    x = np.asarray(wave, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {x.shape}")
    with single_blas_thread():
        y = np.asarray(attack(x, seed), dtype=np.float64)
    if y.shape != x.shape:
        raise RuntimeError(f"attack {name!r} changed the length {x.shape} -> {y.shape}")
    y = np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0)
    rms_in = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
    rms_out = float(np.sqrt(np.mean(y**2))) if y.size else 0.0
    if rms_out > 0.0:
        y *= rms_in / rms_out
    peak = float(np.abs(y).max()) if y.size else 0.0
    if peak > MAX_PEAK:
        y *= MAX_PEAK / peak
    return y.astype(np.float32)
