"""Leakage metrics: quality (PESQ, STOI, MSE), EER, speaker re-identification, content."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator

import numpy as np
import pytest

from attacks.scoring import (
    METRICS,
    SPEAKER_MODELS,
    ContentClassifier,
    SpeakerVerifier,
    build_speaker_model,
    cosine,
    eer,
    f_mse,
    failure_counts,
    pcm16,
    pesq_nb,
    pesq_wb,
    reset_failure_counts,
    score_sample,
    stoi,
    stoi_tiled_count,
    summarize,
    w_mse,
)
from fedspeech.errors import ConfigError, FedspeechError
from tests.helpers import SHARED_DATA

DATA = SHARED_DATA
RECORDINGS = DATA / "fsdd" / "recordings"
LIBRI = DATA / "librispeech" / "test-other"
needs_fsdd = pytest.mark.skipif(
    not RECORDINGS.is_dir(),
    reason=f"real FSDD data not found at {RECORDINGS} (only on developer and CI machines)",
)
needs_libri = pytest.mark.skipif(
    not LIBRI.is_dir(),
    reason=f"LibriSpeech test-other not found at {LIBRI} (only on developer and CI machines)",
)


def _fsdd(names: list[str]) -> np.ndarray:
    from fedspeech.data.audio import read_clips

    waves, bad = read_clips([RECORDINGS / n for n in names], workers=1)
    assert bad == 0
    x = np.stack([w for w in waves if w is not None]).astype(np.float64)
    return (0.9 * x / np.abs(x).max(axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """One torch thread: the encoders' small matrix products only slow down with more on a
    busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """A 16 kHz FSDD digit, peak 0.9, with about 0.54 s of speech."""
    return _fsdd(["1_jackson_0.wav"])[0]


def test_registry() -> None:
    assert {"f_mse", "w_mse", "pesq_nb", "pesq_wb", "stoi", "speaker_cosine"} <= set(
        METRICS.names()
    )
    # Other tests may register stand-in encoders; the shipped ones must be there.
    assert {"ecapa", "resemblyzer"} <= set(SPEAKER_MODELS.names())


def test_mse_hand_cases() -> None:
    assert f_mse(np.array([[1.0, 2.0]]), np.array([[1.0, 0.0]])) == 2.0
    with pytest.raises(ValueError, match="shapes differ"):
        f_mse(np.zeros(3), np.zeros(4))
    # Peak-normalised to 1 and cut to the shorter length: [0, 1] vs [0, 1].
    assert w_mse(np.array([0.0, 0.5]), np.array([0.0, 2.0, 7.0])) == 0.0
    assert w_mse(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == 1.0
    assert w_mse(np.array([0.0, 0.5]), np.array([0.0, 2.0]), normalize=False) == pytest.approx(
        1.125
    )


def test_eer_hand_cases() -> None:
    # FAR = #diff >= t / 4, FRR = #same < t / 4; both are 1/4 for t in (0.4, 0.5].
    assert eer([0.9, 0.8, 0.7, 0.4], [0.5, 0.3, 0.2, 0.1]) == (0.25, 0.45)
    # Separable: zero error anywhere in (0.2, 0.8]; the midpoint is returned.
    assert eer([0.9, 0.8], [0.2, 0.1]) == (0.0, 0.5)
    # |FAR - FRR| = 1/6 on (0.3, 0.6] (FRR 1/3, FAR 1/2) and on (0.6, 0.7] (2/3, 1/2); the
    # first has the lower mean error, 5/12.
    rate, thr = eer([0.8, 0.6, 0.3], [0.7, 0.2])
    assert rate == pytest.approx(5 / 12)
    assert thr == pytest.approx(0.45)
    with pytest.raises(ValueError):
        eer([], [0.1])


def test_cosine_of_zero_vector() -> None:
    assert cosine(np.zeros(4), np.ones(4)) == 0.0
    assert cosine(np.array([1.0, 0.0]), np.array([2.0, 0.0])) == pytest.approx(1.0)


def test_pesq_and_stoi_failures_give_nan() -> None:
    reset_failure_counts()
    silence = np.zeros(16_000)
    with pytest.warns(RuntimeWarning, match="pesq_nb"):
        assert math.isnan(pesq_nb(silence, silence))
    with pytest.warns(RuntimeWarning, match="stoi"):
        assert math.isnan(stoi(silence, silence))
    assert failure_counts() == {"pesq_nb": 1, "stoi": 1}
    reset_failure_counts()


@needs_fsdd
def test_pesq_ignores_noise_below_one_16_bit_step() -> None:
    # Stage 2 of this clip's true Mel features, and the same with noise of 1e-6 of full
    # scale (a thirtieth of a 16-bit step) in the digital silence that pads the clip: on
    # the float signals the pesq package scored 1.70 for one and 1.52 for the other.
    import torch

    from attacks.waveform import features_to_wave
    from fedspeech.data.audio import read_clip, resample
    from fedspeech.data.corpus import fix_length
    from fedspeech.frontends import build_frontend
    from fedspeech.tasks.prepare import peak_normalize

    x, sr = read_clip(RECORDINGS / "2_yweweler_3.wav")
    wave = peak_normalize(fix_length(resample(x, sr, 16_000))[None])[0]
    mel = build_frontend("mel")(torch.from_numpy(wave[None]))[0].numpy()
    rec = features_to_wave(mel, "mel")
    assert float(np.abs(wave[:2000]).max()) == 0.0  # the padding is digital silence
    rng = np.random.default_rng(0)
    noisy = [rec + 1e-6 * rng.standard_normal(rec.shape) for _ in range(4)]
    for other in noisy:  # only samples next to a rounding boundary move, by one step
        assert float(np.abs(pcm16(other) - pcm16(rec)).max()) <= 2.0**-15
    scores = [pesq_nb(wave, r) for r in [rec, *noisy]]
    assert max(scores) - min(scores) < 1e-3, scores
    assert 1.0 < scores[0] < 4.5


@needs_fsdd
def test_pesq_stoi_identity_and_noise(speech: np.ndarray) -> None:
    reset_failure_counts()
    noise = np.random.default_rng(0).standard_normal(speech.shape) * speech.std()
    assert pesq_nb(speech, speech) > 4.4
    assert pesq_wb(speech, speech) > 4.5
    assert pesq_nb(speech, noise) < 1.5
    assert pesq_wb(speech, noise) < 1.3
    assert stoi(speech, speech) == pytest.approx(1.0, abs=1e-6)
    assert stoi(speech, noise) < 0.5
    # Level-free, as STOI is.
    assert stoi(speech, 0.1 * speech) == pytest.approx(1.0, abs=1e-6)
    assert failure_counts() == {}


@needs_fsdd
def test_stoi_tiles_clips_too_short_for_pystoi() -> None:
    short = _fsdd(["1_lucas_1.wav"])[0]  # about 0.27 s of speech, under pystoi's 0.4 s
    reset_failure_counts()
    before = stoi_tiled_count()
    assert stoi(short, short) == pytest.approx(1.0, abs=1e-6)
    assert stoi_tiled_count() == before + 1
    with pytest.warns(RuntimeWarning, match="too few non-silent frames"):
        assert math.isnan(stoi(short, short, tile_short=False))
    reset_failure_counts()


def test_score_sample_and_summarize() -> None:
    t = np.arange(16_000) / 16_000
    x = np.sin(2 * np.pi * 300 * t) * np.exp(-(((t - 0.5) / 0.15) ** 2))
    row = score_sample(np.ones((2, 2)), np.zeros((2, 2)), x, x, metrics=("f_mse", "w_mse"))
    assert row == {"f_mse": 1.0, "w_mse": 0.0}
    assert math.isnan(score_sample(None, None, x, x, metrics=("f_mse",))["f_mse"])
    summary = summarize([{"a": 1.0, "b": True}, {"a": float("nan"), "b": False}, {"a": 3.0}])
    assert summary["a"] == {"mean": 2.0, "std": 1.0, "n": 2}
    assert summary["b"] == {"mean": 0.5, "std": 0.5, "n": 2}


@needs_fsdd
def test_score_sample_default_keys(speech: np.ndarray) -> None:
    row = score_sample(np.zeros((32, 32)), np.zeros((32, 32)), speech, speech)
    assert list(row) == ["f_mse", "w_mse", "pesq_nb", "pesq_wb", "stoi"]
    assert row["f_mse"] == 0.0 and row["stoi"] > 0.99


class _ToneEncoder:
    """A stand-in speaker model: the spectrum in 64 coarse bands (speakers = pitches)."""

    def embed(self, wave16k: np.ndarray) -> np.ndarray:
        spec = np.abs(np.fft.rfft(wave16k, 2048))[:1024]
        return spec.reshape(64, 16).sum(axis=1)


def test_verifier_logic_with_a_stand_in_encoder() -> None:
    t = np.arange(8000) / 16_000
    rng = np.random.default_rng(0)

    def voice(f0: float) -> np.ndarray:
        return np.sin(2 * np.pi * f0 * t) + 0.05 * rng.standard_normal(t.size)

    waves = [voice(f) for f in (200, 200, 200, 900, 900, 900, 2500, 2500)]
    speakers = ["a", "a", "a", "b", "b", "b", "c", "c"]
    ver = SpeakerVerifier(_ToneEncoder())
    with pytest.raises(ConfigError, match="fit"):
        ver.reidentified(waves[0], waves[1])
    ver.fit(waves, speakers)
    assert ver.eer_ == 0.0 and ver.n_same_ == 7 and ver.n_diff_ == 21
    assert ver.reidentified(waves[0], voice(200))[1]
    assert not ver.reidentified(waves[0], voice(900))[1]
    with pytest.raises(ConfigError, match="two speakers"):
        SpeakerVerifier(_ToneEncoder()).fit(waves[:3], speakers[:3])


@pytest.mark.skipif(
    importlib.util.find_spec("speechbrain") is not None, reason="SpeechBrain is installed"
)
def test_ecapa_needs_the_optional_extra() -> None:
    with pytest.raises(FedspeechError, match=r"pip install 'fedspeech\[ecapa\]'"):
        build_speaker_model("ecapa")


@pytest.mark.usefixtures("one_thread")
def test_resemblyzer_handles_silence() -> None:
    enc = build_speaker_model("resemblyzer")
    emb = enc.embed(np.zeros(16_000, dtype=np.float32))
    assert emb.shape == (256,) and not emb.any()
    assert enc.embed(np.random.default_rng(0).standard_normal(8000) * 0.01).shape == (256,)


@needs_libri
@pytest.mark.usefixtures("one_thread")
def test_speaker_verifier_on_librispeech() -> None:
    import soundfile as sf

    enroll: list[np.ndarray] = []
    speakers: list[str] = []
    probes: dict[str, np.ndarray] = {}
    for folder in sorted(p for p in LIBRI.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.flac"))
        # Three seconds per utterance keep the test short; enough for a GE2E embedding.
        for f in files[:3]:
            x, sr = sf.read(f, dtype="float32")
            assert sr == 16_000
            enroll.append(x[: 3 * sr])
            speakers.append(folder.name)
        x, _ = sf.read(files[3], dtype="float32")
        probes[folder.name] = x[: 3 * 16_000]
    assert len(set(speakers)) == 10
    ver = SpeakerVerifier("resemblyzer").fit(enroll, speakers)
    assert ver.eer_ is not None and ver.eer_ < 0.15
    assert 0.3 < ver.threshold_ < 0.95  # type: ignore[operator]
    names = list(probes)
    same = [ver.reidentified(enroll[speakers.index(s)], probes[s])[1] for s in names]
    diff = [
        ver.reidentified(enroll[speakers.index(s)], probes[names[(i + 1) % len(names)]])[1]
        for i, s in enumerate(names)
    ]
    assert np.mean(same) >= 0.8
    assert np.mean(diff) <= 0.2


@needs_fsdd
def test_content_classifier_learns_fsdd_digits() -> None:
    digits, spk = (0, 1, 2, 3), ("george", "jackson", "lucas")
    train = [(d, s, k) for d in digits for s in spk for k in range(5, 11)]
    test = [(d, s, k) for d in digits for s in spk for k in range(2)]
    x_tr = _fsdd([f"{d}_{s}_{k}.wav" for d, s, k in train])
    x_te = _fsdd([f"{d}_{s}_{k}.wav" for d, s, k in test])
    y_tr = np.array([d for d, _, _ in train])
    y_te = np.array([d for d, _, _ in test])
    cc = ContentClassifier(epochs=10, threads=1).fit(x_tr, y_tr, "mfcc")
    assert cc.train_accuracy_ > 0.9
    assert cc.predict(x_te).shape == (len(test),)
    assert cc.content_rate(x_te, y_te) >= 0.6  # chance: 0.25
    # What a listener hears: scaled clips score the same, noise does not.
    assert cc.content_rate(0.05 * x_te, y_te) == cc.content_rate(x_te, y_te)
    noise = np.random.default_rng(0).standard_normal(x_te.shape).astype(np.float32)
    assert cc.content_rate(noise, y_te) < 0.5
