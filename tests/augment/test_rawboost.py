"""RawBoost 1-8 and SpecAugment frequency masking: shapes, finiteness, determinism, specs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import signal

from fedspeech.augment import AUGMENTATIONS, FrequencyMask, RawBoost, build_augmentation
from fedspeech.augment.rawboost import (
    RawBoostParams,
    fir_filter,
    isd_additive_noise,
    notch_filter_coeffs,
    rawboost,
    ssi_additive_noise,
)
from fedspeech.errors import ConfigError

ALGOS = list(range(1, 9))


def _speechlike(n: int = 8000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    tone = 0.4 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 1700 * t)
    return (tone + 0.05 * rng.standard_normal(n)).astype(np.float32)


@pytest.mark.parametrize("algo", ALGOS)
def test_keeps_length_and_stays_finite(algo: int) -> None:
    x = _speechlike()
    rng = np.random.default_rng(algo)
    for wave in (x, np.zeros(4000, dtype=np.float32), x[:7], x[:1]):
        y = rawboost(wave, algo, rng)
        assert y.shape == wave.shape
        assert y.dtype == wave.dtype
        assert np.isfinite(y).all()
    assert not np.allclose(rawboost(x, algo, rng), x)


@pytest.mark.parametrize("algo", ALGOS)
def test_deterministic_given_the_rng(algo: int) -> None:
    x = _speechlike(3000)
    a = rawboost(x, algo, np.random.default_rng(7))
    b = rawboost(x, algo, np.random.default_rng(7))
    c = rawboost(x, algo, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_silence_stays_silent_for_additive_and_impulsive_noise() -> None:
    # ISD and SSI noise scale with the signal, so silence gets none.
    zeros = np.zeros(2000)
    rng = np.random.default_rng(0)
    assert not isd_additive_noise(zeros, rng, RawBoostParams()).any()
    assert not ssi_additive_noise(zeros, rng, RawBoostParams()).any()


def test_ssi_noise_level_is_within_the_snr_range() -> None:
    x = _speechlike(16000).astype(np.float64)
    params = RawBoostParams()
    for seed in range(5):
        noise = ssi_additive_noise(x, np.random.default_rng(seed), params) - x
        snr = 20 * np.log10(np.linalg.norm(x) / np.linalg.norm(noise))
        assert params.snr_min - 1e-6 <= snr <= params.snr_max + 1e-6


def test_isd_touches_at_most_p_percent_of_samples() -> None:
    x = _speechlike(10000).astype(np.float64) * 0.3  # no peak renormalisation
    for seed in range(5):
        y = isd_additive_noise(x, np.random.default_rng(seed), RawBoostParams())
        assert np.count_nonzero(y != x) <= 0.10 * len(x)


def test_notch_filter_peak_gain_and_notch() -> None:
    params = RawBoostParams(n_bands=1, min_f=4000, max_f=4000, min_bw=1000, max_bw=1000)
    taps = notch_filter_coeffs(np.random.default_rng(0), params, 16000)
    freqs, resp = signal.freqz(taps, 1, worN=4096, fs=16000)
    assert np.max(np.abs(resp)) == pytest.approx(1.0, abs=1e-3)  # 0 dB gain by default
    at_notch = np.abs(resp[np.argmin(np.abs(freqs - 4000))])
    assert at_notch < 0.5


def test_fir_filter_compensates_delay() -> None:
    x = np.zeros(50)
    x[20] = 1.0
    taps = np.array([0.25, 0.5, 0.25])
    y = fir_filter(x, taps)
    assert y.shape == x.shape and int(np.argmax(y)) == 20
    assert fir_filter(x[:2], np.ones(101) / 101).shape == (2,)


def test_torch_batch_wrapper() -> None:
    aug = build_augmentation("rawboost:4")
    assert isinstance(aug, RawBoost) and aug.domain == "wave" and aug.spec == "rawboost:4"
    x = torch.from_numpy(_speechlike(2000)).repeat(3, 1)
    a = aug.batch(x, np.random.default_rng(1))
    b = aug.batch(x, np.random.default_rng(1))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])  # identical rows still get different draws


def test_specaugment_masks_up_to_f_consecutive_bins() -> None:
    aug = build_augmentation("specaugment:5")
    assert isinstance(aug, FrequencyMask) and aug.domain == "features"
    x = torch.ones(16, 20, 7)
    out = aug.batch(x, np.random.default_rng(0))
    assert out.shape == x.shape
    for example in out:
        masked = torch.nonzero(example[:, 0] == 0).flatten().tolist()
        assert len(masked) <= 5
        assert masked == list(range(masked[0], masked[0] + len(masked))) if masked else True
        assert torch.equal(example == 0, (example[:, :1] == 0).expand_as(example))
    assert (out == 0).any()
    again = aug.batch(x, np.random.default_rng(0))
    assert torch.equal(out, again)
    single = aug(np.ones((20, 7)), np.random.default_rng(0))
    assert single.shape == (20, 7)
    assert build_augmentation("specaugment:3:2").spec == "specaugment:3:2"


@pytest.mark.parametrize(
    "spec",
    [
        "mixup:2",
        "rawboost:9",
        "rawboost",
        "rawboost:x",
        "specaugment",
        "none:1",
        "noise",
        "noise:x",
        "noise:20:10",
        "noise:nan",
    ],
)
def test_unknown_or_bad_spec(spec: str) -> None:
    with pytest.raises(ConfigError, match="rawboost:N"):
        build_augmentation(spec)
    assert AUGMENTATIONS.names() == ["freqmask", "noise", "none", "rawboost", "specaugment"]


def test_white_noise_reaches_its_snr_on_every_clip() -> None:
    aug = build_augmentation("noise:5:15")
    assert aug.domain == "wave" and aug.spec == "noise:5:15"
    t = np.arange(16000) / 16000
    x = torch.from_numpy(np.stack([a * np.sin(2 * np.pi * 300 * t) for a in (0.1, 1.0)]))
    y = aug.batch(x.float(), np.random.default_rng(0))
    snr = 10 * torch.log10(x.square().mean(1) / (y - x).square().mean(1))
    assert ((snr > 4.8) & (snr < 15.2)).all(), snr


def test_frequency_masking_removes_one_band_of_at_most_w_hz() -> None:
    aug = build_augmentation("freqmask:2000")
    assert aug.domain == "wave" and aug.spec == "freqmask:2000"
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((8, 16000)).astype(np.float32))
    y = aug.batch(x, np.random.default_rng(1))
    for a, b in zip(x, y, strict=True):
        fa, fb = np.abs(np.fft.rfft(a.numpy())), np.abs(np.fft.rfft(b.numpy()))
        gone = np.flatnonzero(fb < 1e-3 * fa)  # 1 Hz bins
        assert len(gone) <= 2001
        if len(gone):
            assert gone[-1] - gone[0] + 1 == len(gone)  # one contiguous band
        kept = np.setdiff1d(np.arange(len(fa)), gone)
        np.testing.assert_allclose(fb[kept], fa[kept], rtol=1e-3, atol=1e-3)
    with pytest.raises(ConfigError):
        build_augmentation("freqmask:9000")
