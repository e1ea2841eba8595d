"""Front-ends against librosa, on real speech (FSDD) when available and on a synthetic chirp."""

from __future__ import annotations

from collections.abc import Callable

import librosa
import numpy as np
import pytest
import scipy.signal
import soundfile
import torch

from fedspeech.errors import ConfigError
from fedspeech.frontends import (
    FRONTENDS,
    MelFrontend,
    MfccFrontend,
    build_frontend,
    dct_ortho_matrix,
)
from tests.helpers import SHARED_DATA

SR = 16_000
DATA = SHARED_DATA
FSDD_CLIP = DATA / "fsdd" / "recordings" / "3_jackson_7.wav"
needs_data = pytest.mark.skipif(
    not FSDD_CLIP.is_file(), reason=f"real speech not available ({FSDD_CLIP} absent)"
)


def preemph(y: np.ndarray, coef: float = 0.97) -> np.ndarray:
    """``y[0] = x[0]``, ``y[t] = x[t] - coef x[t-1]`` (the study's pre-emphasis)."""
    out = y.copy()
    out[1:] = y[1:] - coef * y[:-1]
    return out


def cmvn(c: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Per-coefficient mean and variance normalisation over time (last axis)."""
    return (c - c.mean(-1, keepdims=True)) / (c.std(-1, keepdims=True) + eps)


def librosa_mel(y: np.ndarray) -> np.ndarray:
    return librosa.feature.melspectrogram(
        y=preemph(y),
        sr=SR,
        n_fft=2048,
        hop_length=512,
        window="hamming",
        n_mels=32,
        power=2.0,
        center=True,
        pad_mode="constant",
    )


def librosa_mfcc(y: np.ndarray) -> np.ndarray:
    return librosa.feature.mfcc(
        y=preemph(y),
        sr=SR,
        n_mfcc=32,
        n_fft=2048,
        hop_length=512,
        window="hamming",
        n_mels=128,
        center=True,
        pad_mode="constant",
    )


def chirp_clip(seed: int = 0) -> np.ndarray:
    t = np.arange(SR) / SR
    rng = np.random.default_rng(seed)
    y = 0.5 * scipy.signal.chirp(t, f0=100.0, t1=1.0, f1=7000.0) + 0.05 * rng.standard_normal(SR)
    return y.astype(np.float32)


def fsdd_clip() -> np.ndarray:
    y8, sr8 = soundfile.read(FSDD_CLIP, dtype="float32")
    assert sr8 == 8000
    y = scipy.signal.resample_poly(y8, 2, 1).astype(np.float32)
    return librosa.util.fix_length(y, size=SR)


@pytest.fixture(scope="module")
def mel() -> MelFrontend:
    return MelFrontend()


@pytest.fixture(scope="module")
def mfcc() -> MfccFrontend:
    return MfccFrontend()


def _clips() -> list[object]:
    return [
        pytest.param(chirp_clip, id="chirp"),
        pytest.param(fsdd_clip, id="fsdd", marks=needs_data),
    ]


@pytest.mark.parametrize("make_clip", _clips())
def test_mel_matches_librosa(make_clip: Callable[[], np.ndarray], mel: MelFrontend) -> None:
    y = make_clip()
    ref = librosa_mel(y)
    out = mel(torch.from_numpy(y))
    assert out.shape == (1, 32, 32) == (1, *ref.shape)
    err = np.abs(out[0].detach().numpy() - ref).max()
    assert err <= 1e-4 * ref.max()


@pytest.mark.parametrize("make_clip", _clips())
def test_mfcc_matches_librosa(make_clip: Callable[[], np.ndarray], mfcc: MfccFrontend) -> None:
    y = make_clip()
    ref = librosa_mfcc(y)
    raw = mfcc.cepstra(torch.from_numpy(y))[0].detach().numpy()
    # dB values of order 100, float32 arithmetic: about 1e-6 relative to the largest.
    np.testing.assert_allclose(raw, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    out = mfcc(torch.from_numpy(y))[0].detach().numpy()
    np.testing.assert_allclose(out, cmvn(ref), rtol=0, atol=2e-4)


@pytest.mark.parametrize("make_clip", _clips())
def test_float64_matches_librosa_closely(
    make_clip: Callable[[], np.ndarray], mel: MelFrontend, mfcc: MfccFrontend
) -> None:
    y = make_clip().astype(np.float64)
    ref = librosa_mel(y)
    out = mel(torch.from_numpy(y))[0].numpy()
    assert out.dtype == np.float64
    assert np.abs(out - ref).max() <= 1e-7 * ref.max()
    out_c = mfcc(torch.from_numpy(y))[0].numpy()
    np.testing.assert_allclose(out_c, cmvn(librosa_mfcc(y)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("fe", ["mel", "mfcc"])
def test_shapes_and_batch_consistency(fe: str, mel: MelFrontend, mfcc: MfccFrontend) -> None:
    module = mel if fe == "mel" else mfcc
    clips = torch.from_numpy(np.stack([chirp_clip(s) for s in range(3)]))
    batch = module(clips)
    assert batch.shape == (3, 32, 32)
    assert module.n_features == 32 and module.n_frames(SR) == 32
    singles = torch.cat([module(c) for c in clips])
    torch.testing.assert_close(batch, singles, rtol=1e-5, atol=1e-5 * float(batch.abs().max()))


@pytest.mark.parametrize("fe", ["mel", "mfcc"])
def test_gradients_reach_waveform(fe: str, mel: MelFrontend, mfcc: MfccFrontend) -> None:
    module = mel if fe == "mel" else mfcc
    x = torch.from_numpy(chirp_clip()).unsqueeze(0)
    x.requires_grad_()
    # Weighted sum: the plain sum of CMVN outputs is identically 0, so its gradient is too.
    out = module(x)
    weights = torch.linspace(-1.0, 1.0, out.numel()).reshape(out.shape)
    (out * weights).sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().max() > 0


def test_mel_sum_gradient_nonzero(mel: MelFrontend) -> None:
    x = torch.from_numpy(chirp_clip()).requires_grad_()
    mel(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().max() > 0


@pytest.mark.parametrize("fe", ["mel", "mfcc"])
def test_silent_clip_is_finite(fe: str, mel: MelFrontend, mfcc: MfccFrontend) -> None:
    module = mel if fe == "mel" else mfcc
    x = torch.zeros(2, SR, requires_grad=True)
    out = module(x)
    assert torch.isfinite(out).all()
    if fe == "mfcc":
        assert out.abs().max() == 0
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_gradcheck_tiny_configs() -> None:
    x = torch.randn(2, 256, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x.requires_grad_()
    mel_fe = MelFrontend(sample_rate=8000, n_fft=64, hop_length=16, n_mels=4)
    assert torch.autograd.gradcheck(mel_fe, (x,), eps=1e-6, atol=1e-5)
    mfcc_fe = MfccFrontend(sample_rate=8000, n_fft=64, hop_length=16, n_mels=8, n_mfcc=4)
    assert mfcc_fe(x).shape == (2, 4, 17)
    assert torch.autograd.gradcheck(mfcc_fe, (x,), eps=1e-6, atol=1e-5)


def test_exposed_attributes(mel: MelFrontend, mfcc: MfccFrontend) -> None:
    for module in (mel, mfcc):
        assert (module.sample_rate, module.n_fft, module.hop_length, module.win_length) == (
            16000,
            2048,
            512,
            2048,
        )
        assert module.preemphasis == pytest.approx(0.97)
        assert "mel_basis" in dict(module.named_buffers())
        assert module.mel_basis.shape == (module.n_mels, 1025)
    assert mel.n_mels == 32 and mfcc.n_mels == 128 and mfcc.n_mfcc == 32
    np.testing.assert_allclose(
        mfcc.mel_basis.numpy(), librosa.filters.mel(sr=SR, n_fft=2048, n_mels=128)
    )
    np.testing.assert_allclose(
        mel.window.numpy(), librosa.filters.get_window("hamming", 2048), rtol=0, atol=1e-7
    )
    assert mfcc.dct_matrix.shape == (32, 128)
    eye = np.eye(16)
    np.testing.assert_allclose(
        dct_ortho_matrix(16, 16), scipy.fft.dct(eye, axis=0, norm="ortho"), atol=1e-12
    )


def test_registry_and_builder() -> None:
    assert FRONTENDS.names() == ["mel", "mfcc"]
    fe = build_frontend("mel", n_mels=16, hop_length=256)
    assert isinstance(fe, MelFrontend)
    assert fe(torch.zeros(SR)).shape == (1, 16, 63)
    assert isinstance(build_frontend("mfcc"), MfccFrontend)
    with pytest.raises(ConfigError, match="mel, mfcc"):
        build_frontend("spectrogram")
    with pytest.raises(ConfigError, match="n_bands"):
        build_frontend("mel", n_bands=3)
    with pytest.raises(ConfigError, match="n_mfcc"):
        build_frontend("mfcc", n_mels=16, n_mfcc=20)


def test_bad_input_shape(mel: MelFrontend) -> None:
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        mel(torch.zeros(1, 1, SR))
