"""Dataset loaders and WAV reading, on tiny fake datasets and on the real FSDD."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fedspeech.data import (
    CLIP_SAMPLES,
    DATASETS,
    load_dataset,
    loudest_window,
    read_clip,
    read_clips,
    resample,
)
from fedspeech.data.audio import _BadAudio
from fedspeech.data.loaders import SPEECH_COMMANDS_WORDS
from fedspeech.errors import ConfigError, DataError
from tests.helpers import FSDD

FSDD_ROOT = FSDD

SPEAKERS = ("aaaa1111", "bbbb2222", "cccc3333")
EXTRA_WORD = "marvin"


def _tone(n: int, freq: float = 440.0, sr: int = 16_000) -> np.ndarray:
    t = np.arange(n) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _write(path: Path, wave: np.ndarray, sr: int = 16_000, subtype: str = "PCM_16") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, sr, subtype=subtype)


@pytest.fixture
def speech_commands(tmp_path: Path) -> Path:
    """Ten default words plus one extra, 3 speakers x 2 takes, one corrupt and one float file.

    Speaker b's clips are listed for validation, speaker c's for test.
    """
    root = tmp_path / "sc"
    val, test = [], []
    for word in (*SPEECH_COMMANDS_WORDS, EXTRA_WORD):
        for spk in SPEAKERS:
            for take in range(2):
                rel = f"{word}/{spk}_nohash_{take}.wav"
                _write(root / rel, _tone(3200))
                if spk == SPEAKERS[1]:
                    val.append(rel)
                elif spk == SPEAKERS[2]:
                    test.append(rel)
    (root / "yes" / "dddd4444_nohash_0.wav").write_bytes(np.random.default_rng(0).bytes(700))
    _write(root / "no" / "eeee5555_nohash_0.wav", _tone(3200), subtype="FLOAT")
    _write(root / "_background_noise_" / "white_noise.wav", _tone(32000))
    (root / "validation_list.txt").write_text("\n".join(val) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    return root


def _fake_fsdd(root: Path, speakers: tuple[str, ...] = ("alice", "bob"), takes: int = 7) -> Path:
    for digit in range(10):
        for spk in speakers:
            for take in range(takes):
                _write(root / f"{digit}_{spk}_{take}.wav", _tone(4000, sr=8000), sr=8000)
    return root


# ---------------------------------------------------------------- audio


def test_read_clip_mono_average_and_rate(tmp_path: Path) -> None:
    left, right = _tone(800), np.full(800, 0.25, dtype=np.float32)
    _write(tmp_path / "st.wav", np.stack([left, right], axis=1), sr=22_050, subtype="PCM_24")
    wave, sr = read_clip(tmp_path / "st.wav")
    assert sr == 22_050
    assert wave.dtype == np.float32 and wave.shape == (800,)
    np.testing.assert_allclose(wave, (left + right) / 2, atol=1e-4)


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32"])
def test_read_clip_accepts_pcm(tmp_path: Path, subtype: str) -> None:
    _write(tmp_path / "a.wav", _tone(500), subtype=subtype)
    wave, _ = read_clip(tmp_path / "a.wav")
    np.testing.assert_allclose(wave, _tone(500), atol=1e-2)


def test_read_clip_rejects_bad_files(tmp_path: Path) -> None:
    _write(tmp_path / "float.wav", _tone(500), subtype="FLOAT")
    (tmp_path / "junk.wav").write_bytes(b"RIFF not really a wave file at all")
    (tmp_path / "empty.wav").write_bytes(b"")
    _write(tmp_path / "full.wav", _tone(4000))
    full = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(full[: len(full) // 2])
    for name in ("float", "junk", "empty", "cut", "missing"):
        with pytest.raises(_BadAudio):
            read_clip(tmp_path / f"{name}.wav")


def test_resample_reduces_ratio() -> None:
    x = _tone(8000, sr=8000)
    y = resample(x, 8000, 16_000)
    assert y.shape == (16_000,) and y.dtype == np.float32
    # A 440 Hz tone stays a 440 Hz tone.
    np.testing.assert_allclose(y[2000:-2000], _tone(16_000)[2000:-2000], atol=1e-2)
    assert resample(x, 8000, 8000) is x
    assert resample(_tone(44_100, sr=44_100), 44_100, 16_000).shape == (16_000,)


def test_loudest_window() -> None:
    wave = np.zeros(30, dtype=np.float32)
    wave[22:26] = 1.0
    out = loudest_window(wave, 10)
    assert out.shape == (10,) and out.sum() == 4
    ramp = np.arange(20, dtype=np.float32)
    np.testing.assert_array_equal(loudest_window(ramp, 8), ramp[12:])
    np.testing.assert_array_equal(loudest_window(ramp[:5], 8), ramp[:5])
    # Same energy everywhere: the centre crop, as fix_length would take.
    flat = np.ones(31, dtype=np.float32)
    assert loudest_window(flat, 11).ctypes.data - flat.ctypes.data == 10 * flat.itemsize


def test_read_clips_keeps_order_and_counts_bad(tmp_path: Path) -> None:
    paths = []
    for i in range(80):
        p = tmp_path / f"{i}.wav"
        if i % 20 == 3:
            p.write_bytes(b"garbage")
        else:
            _write(p, np.full(100, i / 100, dtype=np.float32))
        paths.append(p)
    waves, bad = read_clips(paths, length=None)
    assert bad == 4
    for i, w in enumerate(waves):
        if i % 20 == 3:
            assert w is None
        else:
            assert w is not None and abs(float(w[50]) - i / 100) < 1e-3


# ---------------------------------------------------------------- speech commands


def test_speech_commands_default_words(speech_commands: Path) -> None:
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable or non-PCM WAV files under"):
        corpus = load_dataset("speech_commands", speech_commands)
    assert corpus.classes == list(SPEECH_COMMANDS_WORDS)
    assert len(corpus) == 10 * 3 * 2
    assert corpus.skipped == 2
    assert corpus.waveforms.shape == (60, CLIP_SAMPLES)
    assert corpus.waveforms.dtype == np.float32
    assert corpus.labels.dtype == np.int64
    assert set(corpus.speakers) == set(SPEAKERS)
    for label, cid, spk, split in zip(
        corpus.labels, corpus.clip_ids, corpus.speakers, corpus.split, strict=True
    ):
        word, name = cid.split("/")
        assert corpus.classes[label] == word
        assert name.startswith(spk + "_nohash_")
        assert split == {"aaaa1111": "train", "bbbb2222": "validation", "cccc3333": "test"}[spk]
    assert len(corpus.indices("train")) == len(corpus.indices("test")) == 20
    # The 0.2 s tone is zero-padded around the centre.
    row = corpus.waveforms[0]
    assert np.all(row[:6000] == 0) and np.abs(row[7000:9000]).max() > 0.4


def test_speech_commands_all_and_list(speech_commands: Path) -> None:
    with pytest.warns(UserWarning):
        every = load_dataset("speech_commands_v2", speech_commands, words="all")
    assert every.classes == sorted([*SPEECH_COMMANDS_WORDS, EXTRA_WORD])
    assert not any(c.startswith("_background") for c in every.clip_ids)
    assert len(every) == 11 * 6

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        some = load_dataset("speech_commands_v1", speech_commands, words=["up", "marvin"])
    assert some.classes == ["up", "marvin"]
    assert [some.classes[lab] for lab in some.labels] == [c.split("/")[0] for c in some.clip_ids]
    assert load_dataset("synth", speech_commands, words="up,marvin").clip_ids == some.clip_ids


def test_speech_commands_word_errors(speech_commands: Path) -> None:
    with pytest.raises(DataError, match="sheila"):
        load_dataset("speech_commands", speech_commands, words=["yes", "sheila"])
    with pytest.raises(ConfigError, match="twice"):
        load_dataset("speech_commands", speech_commands, words=["yes", "yes"])


def test_speech_commands_resamples(tmp_path: Path) -> None:
    root = tmp_path / "sc"
    _write(root / "go" / "abc_nohash_0.wav", _tone(4000, sr=8000), sr=8000)
    (root / "validation_list.txt").write_text("")
    (root / "testing_list.txt").write_text("")
    corpus = load_dataset("speech_commands", root, words="all")
    nonzero = np.flatnonzero(np.abs(corpus.waveforms[0]) > 1e-3)
    assert corpus.split == ["train"]
    assert 7900 <= nonzero[-1] - nonzero[0] <= 8000


def test_speech_commands_split_lists(speech_commands: Path) -> None:
    (speech_commands / "testing_list.txt").unlink()
    with pytest.raises(DataError, match="testing_list.txt"):
        load_dataset("speech_commands", speech_commands)
    (speech_commands / "validation_list.txt").unlink()
    with pytest.warns(UserWarning) as caught:
        corpus = load_dataset("speech_commands", speech_commands)
    messages = [str(w.message) for w in caught]
    assert any("splitting by speaker hash" in m for m in messages)
    assert any(m.startswith("skipped 2 unreadable") for m in messages)
    by_speaker: dict[str, set[str]] = {}
    for spk, split in zip(corpus.speakers, corpus.split, strict=True):
        by_speaker.setdefault(spk, set()).add(split)
    assert all(len(s) == 1 for s in by_speaker.values())


def test_all_files_bad(tmp_path: Path) -> None:
    (tmp_path / "yes").mkdir()
    (tmp_path / "yes" / "a_nohash_0.wav").write_bytes(b"nope")
    (tmp_path / "validation_list.txt").write_text("")
    (tmp_path / "testing_list.txt").write_text("")
    with pytest.warns(UserWarning), pytest.raises(DataError, match="no readable"):
        load_dataset("speech_commands", tmp_path, words="all")


# ---------------------------------------------------------------- errors


def test_load_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("speech_commands", tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"no Speech Commands clips found under"):
        load_dataset("speech_commands", tmp_path)
    with pytest.raises(DataError, match=r"no FSDD clips found under"):
        load_dataset("fsdd", tmp_path)
    with pytest.raises(ConfigError, match=r"unknown dataset 'timit'; known: .*fsdd"):
        load_dataset("timit", tmp_path)
    with pytest.raises(DataError, match="no data root"):
        load_dataset("fsdd", None)
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        load_dataset("fsdd", tmp_path / "f.txt")


def test_registry_names() -> None:
    for name in ("speech_commands", "speech_commands_v1", "speech_commands_v2", "synth", "fsdd"):
        assert name in DATASETS


# ---------------------------------------------------------------- FSDD


def test_fsdd_fake_layouts(tmp_path: Path) -> None:
    rec = _fake_fsdd(tmp_path / "fsdd" / "recordings")
    (rec / "README.wav").write_bytes(b"ignored: not a digit_speaker_take name")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = load_dataset("fsdd", tmp_path / "fsdd")
        b = load_dataset("fsdd", rec)
    assert a.clip_ids == b.clip_ids
    assert a.clip_ids[0] == "recordings/0_alice_0.wav"
    assert len(a) == 140 and a.skipped == 0
    assert len(a.indices("test")) == 100 and len(a.indices("validation")) == 0
    assert a.classes[3] == "three"
    two = load_dataset("fsdd", rec, words=["7", "two"])
    assert two.classes == ["seven", "two"]
    assert [int(c.split("/")[1][0]) for c in two.clip_ids[:1]] == [7]
    with pytest.raises(ConfigError):
        load_dataset("fsdd", rec, words=["eleven"])


@pytest.mark.skipif(not FSDD_ROOT.is_dir(), reason=f"real FSDD not present at {FSDD_ROOT}")
def test_fsdd_real() -> None:
    corpus = load_dataset("fsdd", FSDD_ROOT)
    assert len(corpus) == 3000 and corpus.skipped == 0
    assert len(corpus.indices("test")) == 300
    assert len(corpus.indices("train")) == 2700
    assert len(set(corpus.speakers)) == 6
    assert corpus.waveforms.shape == (3000, CLIP_SAMPLES)
    assert np.bincount(corpus.labels).tolist() == [300] * 10
    assert float(np.abs(corpus.waveforms).max()) <= 1.0
    # Every clip keeps its word after fitting to 1 s (some of theo's takes peak near 0.01).
    assert np.all(np.abs(corpus.waveforms).max(axis=1) > 0.005)
