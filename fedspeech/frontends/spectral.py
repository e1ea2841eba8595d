"""Differentiable Mel and MFCC front-ends (torch modules).

The settings follow "Speech privacy leakage from shared gradients in distributed learning"
(Li, Zhang, Liu): 16 kHz audio, pre-emphasis 0.97, periodic Hamming window of 2048
samples, ``n_fft`` 2048, hop 512, centred frames with zero padding (librosa 0.11's
default), hence 32 frames for a one-second clip.

* :class:`MelFrontend` -- power spectrogram through a 32-band Slaney Mel filterbank,
  linear scale: ``(B, 32, 32)``.
* :class:`MfccFrontend` -- 128-band Mel power spectrogram in dB (``top_db`` 80 per
  example), orthonormal DCT-II, first 32 coefficients, then per-example cepstral mean and
  variance normalisation over time: ``(B, 32, 32)``.

Everything in ``forward`` is torch, so gradients reach the input waveform, which is what a
gradient-inversion attack optimises. The filterbank, window and DCT matrix are built once
(with librosa) into buffers and exposed, together with the framing settings, for attacks
that need to invert the front-end.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from fedspeech.errors import ConfigError

__all__ = ["MelFrontend", "MfccFrontend", "dct_ortho_matrix"]


def dct_ortho_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Orthonormal DCT-II matrix, as ``scipy.fft.dct(..., type=2, norm='ortho')``.

    Parameters
    ----------
    n_out : int
        Number of coefficients kept (rows), at most ``n_in``.
    n_in : int
        Length of the transformed axis (columns).

    Returns
    -------
    np.ndarray
        ``(n_out, n_in)`` float64 matrix ``D`` with ``D @ x == dct(x, norm='ortho')[:n_out]``.
    """
    k = np.arange(n_out, dtype=np.float64)[:, None]
    n = np.arange(n_in, dtype=np.float64)[None, :]
    mat = np.sqrt(2.0 / n_in) * np.cos(np.pi * k * (2.0 * n + 1.0) / (2.0 * n_in))
    mat[0, :] = np.sqrt(1.0 / n_in)
    return mat


class _SpectralFrontend(nn.Module):
    """Shared part: pre-emphasis, centred STFT, power spectrum and Mel filterbank.

    Parameters
    ----------
    sample_rate, n_fft, hop_length, win_length, n_mels, preemphasis, f_min, f_max, center
        See :class:`MelFrontend`.
    """

    mel_basis: torch.Tensor
    window: torch.Tensor

    def __init__(
        self,
        *,
        sample_rate: int,
        n_fft: int,
        hop_length: int,
        win_length: int | None,
        n_mels: int,
        preemphasis: float,
        f_min: float,
        f_max: float | None,
        center: bool,
    ) -> None:
        super().__init__()
        win_length = n_fft if win_length is None else win_length
        if sample_rate <= 0:
            raise ConfigError(f"sample_rate must be positive, got {sample_rate}")
        if n_fft < 2:
            raise ConfigError(f"n_fft must be at least 2, got {n_fft}")
        if hop_length <= 0:
            raise ConfigError(f"hop_length must be positive, got {hop_length}")
        if not 0 < win_length <= n_fft:
            raise ConfigError(f"win_length must be in [1, n_fft={n_fft}], got {win_length}")
        if n_mels <= 0:
            raise ConfigError(f"n_mels must be positive, got {n_mels}")
        if not 0.0 <= preemphasis < 1.0:
            raise ConfigError(f"preemphasis must be in [0, 1), got {preemphasis}")
        nyquist = sample_rate / 2.0
        top = nyquist if f_max is None else f_max
        if not 0.0 <= f_min < top <= nyquist:
            raise ConfigError(
                f"need 0 <= f_min < f_max <= sample_rate/2, got f_min={f_min}, f_max={f_max}"
            )

        self.sample_rate = int(sample_rate)
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.win_length = int(win_length)
        self.n_mels = int(n_mels)
        self.preemphasis = float(preemphasis)
        self.f_min = float(f_min)
        self.f_max = float(top)
        self.center = bool(center)

        # librosa is slow to import; only constructing a front-end needs it.
        import librosa

        mel = librosa.filters.mel(
            sr=self.sample_rate,
            n_fft=self.n_fft,
            n_mels=self.n_mels,
            fmin=self.f_min,
            fmax=self.f_max,
        )
        window = librosa.filters.get_window("hamming", self.win_length, fftbins=True)
        self.register_buffer("mel_basis", torch.as_tensor(mel, dtype=torch.float32))
        self.register_buffer("window", torch.as_tensor(window, dtype=torch.float32))

    def n_frames(self, num_samples: int) -> int:
        """Number of STFT frames for a clip of ``num_samples`` samples."""
        if self.center:
            return 1 + num_samples // self.hop_length
        if num_samples < self.n_fft:
            raise ValueError(f"clip of {num_samples} samples is shorter than n_fft={self.n_fft}")
        return 1 + (num_samples - self.n_fft) // self.hop_length

    def _as_batch(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(T,)`` or ``(B, T)`` waveform -> floating ``(B, T)``."""
        if waveform.dim() == 1:
            waveform = waveform.unsqueeze(0)
        if waveform.dim() != 2:
            raise ValueError(
                f"expected a waveform of shape (T,) or (B, T), got {tuple(waveform.shape)}"
            )
        if not waveform.is_floating_point():
            waveform = waveform.to(self.mel_basis.dtype)
        return waveform

    def _preemphasise(self, x: torch.Tensor) -> torch.Tensor:
        """``y[0] = x[0]``, ``y[t] = x[t] - a x[t-1]`` along the last axis."""
        if self.preemphasis == 0.0:
            return x
        return torch.cat([x[..., :1], x[..., 1:] - self.preemphasis * x[..., :-1]], dim=-1)

    def mel_power(self, waveform: torch.Tensor) -> torch.Tensor:
        """Mel power spectrogram.

        Parameters
        ----------
        waveform : torch.Tensor
            ``(B, T)`` or ``(T,)`` float waveform.

        Returns
        -------
        torch.Tensor
            ``(B, n_mels, n_frames(T))`` Mel-filtered power (|STFT|^2), linear scale.
        """
        x = self._preemphasise(self._as_batch(waveform))
        # Cast buffers rather than the input, so float64 inputs (gradcheck) stay float64.
        window = self.window.to(dtype=x.dtype, device=x.device)
        spec = torch.stft(
            x,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=window,
            center=self.center,
            pad_mode="constant",
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        # re^2 + im^2 rather than abs()**2: smooth at zero, so silent frames get zero gradient.
        power = spec.real.square() + spec.imag.square()
        return torch.matmul(self.mel_basis.to(dtype=x.dtype, device=x.device), power)


class MelFrontend(_SpectralFrontend):
    """Linear-scale Mel power spectrogram, as in Li, Zhang & Liu.

    Pre-emphasis, centred zero-padded STFT with a periodic Hamming window, power 2, Slaney
    Mel filterbank (``librosa.filters.mel`` defaults); no log. Matches
    ``librosa.feature.melspectrogram(y=preemph(y), window='hamming', pad_mode='constant')``.

    Parameters
    ----------
    sample_rate : int
        Sampling rate in Hz (16000).
    n_fft : int
        FFT size (2048).
    hop_length : int
        Frame shift in samples (512).
    win_length : int or None
        Hamming window length, ``None`` for ``n_fft`` (2048).
    n_mels : int
        Mel bands (32).
    preemphasis : float
        Pre-emphasis coefficient ``a`` in ``y[t] = x[t] - a x[t-1]`` (0.97); 0 disables it.
    f_min, f_max : float
        Filterbank edges in Hz (0 and ``sample_rate / 2``).
    center : bool
        Centre frames, zero-padding ``n_fft // 2`` on each side (True).

    Attributes
    ----------
    mel_basis : torch.Tensor
        Buffer ``(n_mels, n_fft // 2 + 1)``.
    window : torch.Tensor
        Buffer ``(win_length,)``, periodic Hamming.
    n_features : int
        Feature rows of the output (``n_mels``).

    Examples
    --------
    >>> import torch
    >>> fe = MelFrontend()
    >>> fe(torch.zeros(2, 16000)).shape
    torch.Size([2, 32, 32])
    >>> fe.n_features, fe.n_frames(16000)
    (32, 32)
    """

    def __init__(
        self,
        *,
        sample_rate: int = 16_000,
        n_fft: int = 2048,
        hop_length: int = 512,
        win_length: int | None = None,
        n_mels: int = 32,
        preemphasis: float = 0.97,
        f_min: float = 0.0,
        f_max: float | None = None,
        center: bool = True,
    ) -> None:
        super().__init__(
            sample_rate=sample_rate,
            n_fft=n_fft,
            hop_length=hop_length,
            win_length=win_length,
            n_mels=n_mels,
            preemphasis=preemphasis,
            f_min=f_min,
            f_max=f_max,
            center=center,
        )
        self.n_features = self.n_mels

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Waveform ``(B, T)`` or ``(T,)`` -> Mel power ``(B, n_mels, n_frames(T))``."""
        return self.mel_power(waveform)


class MfccFrontend(_SpectralFrontend):
    """MFCC with per-example cepstral mean and variance normalisation, as in Li, Zhang & Liu.

    Mel power spectrogram (128 bands, same framing as :class:`MelFrontend`) -> dB as
    ``librosa.power_to_db(S, ref=1.0, amin=1e-10, top_db=80)`` with the ``top_db`` floor
    taken per example -> orthonormal DCT-II -> first ``n_mfcc`` coefficients -> for each
    example and coefficient, ``(c - mean_t c) / (std_t c + eps)`` with the population std.

    Parameters
    ----------
    sample_rate, n_fft, hop_length, win_length, preemphasis, f_min, f_max, center
        As in :class:`MelFrontend`.
    n_mels : int
        Mel bands before the DCT (128).
    n_mfcc : int
        Cepstral coefficients kept (32), at most ``n_mels``.
    amin : float
        Power floor before the log (1e-10).
    top_db : float or None
        Dynamic range kept below each example's maximum, in dB (80); ``None`` keeps all.
    cmvn : bool
        Apply the mean and variance normalisation (True).
    eps : float
        Added to the std in CMVN (1e-5). It bounds the output, and its gradient, when a
        coefficient is (nearly) constant over time, e.g. for a silent clip, where the
        output is then 0 instead of NaN.

    Attributes
    ----------
    mel_basis : torch.Tensor
        Buffer ``(n_mels, n_fft // 2 + 1)``.
    dct_matrix : torch.Tensor
        Buffer ``(n_mfcc, n_mels)``, orthonormal DCT-II rows.
    n_features : int
        Feature rows of the output (``n_mfcc``).

    Examples
    --------
    >>> import torch
    >>> fe = MfccFrontend()
    >>> out = fe(torch.randn(16000))
    >>> out.shape
    torch.Size([1, 32, 32])
    >>> bool(out.mean(-1).abs().max() < 1e-4)
    True
    """

    dct_matrix: torch.Tensor

    def __init__(
        self,
        *,
        sample_rate: int = 16_000,
        n_fft: int = 2048,
        hop_length: int = 512,
        win_length: int | None = None,
        n_mels: int = 128,
        n_mfcc: int = 32,
        preemphasis: float = 0.97,
        f_min: float = 0.0,
        f_max: float | None = None,
        center: bool = True,
        amin: float = 1e-10,
        top_db: float | None = 80.0,
        cmvn: bool = True,
        eps: float = 1e-5,
    ) -> None:
        super().__init__(
            sample_rate=sample_rate,
            n_fft=n_fft,
            hop_length=hop_length,
            win_length=win_length,
            n_mels=n_mels,
            preemphasis=preemphasis,
            f_min=f_min,
            f_max=f_max,
            center=center,
        )
        if not 0 < n_mfcc <= n_mels:
            raise ConfigError(f"n_mfcc must be in [1, n_mels={n_mels}], got {n_mfcc}")
        if amin <= 0:
            raise ConfigError(f"amin must be positive, got {amin}")
        if top_db is not None and top_db < 0:
            raise ConfigError(f"top_db must be non-negative, got {top_db}")
        if eps <= 0:
            raise ConfigError(f"eps must be positive, got {eps}")
        self.n_mfcc = int(n_mfcc)
        self.amin = float(amin)
        self.top_db = None if top_db is None else float(top_db)
        self.cmvn = bool(cmvn)
        self.eps = float(eps)
        self.n_features = self.n_mfcc
        dct = dct_ortho_matrix(self.n_mfcc, self.n_mels)
        self.register_buffer("dct_matrix", torch.as_tensor(dct, dtype=torch.float32))

    def power_to_db(self, mel: torch.Tensor) -> torch.Tensor:
        """Mel power ``(B, n_mels, frames)`` -> dB re 1.0, floored ``top_db`` under each peak."""
        db = 10.0 * torch.log10(torch.clamp(mel, min=self.amin))
        if self.top_db is not None:
            peak = db.amax(dim=(-2, -1), keepdim=True)
            db = torch.maximum(db, peak - self.top_db)
        return db

    def cepstra(self, waveform: torch.Tensor) -> torch.Tensor:
        """MFCC before CMVN: ``(B, T)`` or ``(T,)`` -> ``(B, n_mfcc, n_frames(T))``."""
        db = self.power_to_db(self.mel_power(waveform))
        return torch.matmul(self.dct_matrix.to(dtype=db.dtype, device=db.device), db)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Waveform ``(B, T)`` or ``(T,)`` -> normalised MFCC ``(B, n_mfcc, n_frames(T))``."""
        cep = self.cepstra(waveform)
        if not self.cmvn:
            return cep
        centred = cep - cep.mean(dim=-1, keepdim=True)
        var = centred.square().mean(dim=-1, keepdim=True)
        # sqrt has an infinite derivative at 0; the floor (far below eps) keeps constant
        # coefficients, e.g. of a silent clip, at a zero rather than NaN gradient.
        tiny = torch.finfo(var.dtype).tiny
        std = torch.sqrt(torch.clamp(var, min=math.sqrt(tiny)))
        return centred / (std + self.eps)
