"""Tests for the eSpeak NG wrapper and the synthetic keyword corpus."""

from __future__ import annotations

import csv
import re
import wave
from pathlib import Path

import numpy as np
import pytest

from fedspeech.data import synth
from fedspeech.data.corpus import CLIP_SAMPLES, SAMPLE_RATE
from fedspeech.data.espeak import (
    ACCENT_VOICES,
    ESPEAK_SAMPLE_RATE,
    ESpeak,
    list_accents,
    list_variants,
    voice_name,
)
from fedspeech.errors import ConfigError, DataError

N_SPEAKERS = 6
TAKES = 2
NAME_RE = re.compile(r"([0-9a-f]{8})_nohash_(\d+)\.wav")


def _build(root: Path, workers: int = 2) -> Path:
    return synth.synthesize_corpus(
        root, n_speakers=N_SPEAKERS, takes=TAKES, seed=3, progress=False, workers=workers
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("synth") / "corpus")


def _read_wav(path: Path) -> tuple[wave._wave_params, np.ndarray]:
    with wave.open(str(path), "rb") as w:
        params = w.getparams()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return params, pcm


def _speakers_csv(root: Path) -> list[dict[str, str]]:
    with open(root / "speakers.csv", newline="") as f:
        return list(csv.DictReader(f))


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# --- eSpeak wrapper ---------------------------------------------------------------------------


def test_espeak_says_yes() -> None:
    wav = ESpeak().synth("yes", voice_name("en-us", "m3"), rate=175, pitch=50, pitch_range=50)
    assert wav.dtype == np.float32 and wav.ndim == 1
    seconds = wav.shape[0] / ESPEAK_SAMPLE_RATE
    assert 0.15 < seconds < 1.5
    assert np.abs(wav).max() <= 1.0
    assert float(np.sqrt(np.mean(wav**2))) > 0.01


def test_espeak_rejects_unknown_voice() -> None:
    with pytest.raises(DataError, match="no voice"):
        ESpeak().synth("yes", "xx-nonexistent")


def test_voices_exist_in_data() -> None:
    assert list_accents() == list(ACCENT_VOICES)
    assert set(synth.VARIANTS) <= set(list_variants())
    assert len(list_variants()) >= len(synth.VARIANTS)


# --- speakers --------------------------------------------------------------------------------


def test_speaker_grid_ids_are_unique_hex() -> None:
    ids = {
        synth.speaker_id(a, v, p, r)
        for a in synth.ACCENTS
        for v in synth.VARIANTS
        for p in synth.PITCHES
        for r in synth.RATES
    }
    assert len(ids) == synth.max_speakers()
    assert all(re.fullmatch(r"[0-9a-f]{8}", i) for i in ids)


def test_choose_speakers_distinct_and_balanced() -> None:
    speakers = synth.choose_speakers(400, seed=1)
    combos = {(s.accent, s.variant, s.pitch, s.rate) for s in speakers}
    assert len(combos) == len({s.speaker_id for s in speakers}) == 400
    accents = [s.accent for s in speakers]
    assert {accents.count(a) for a in synth.ACCENTS} == {400 // len(synth.ACCENTS)}
    assert synth.choose_speakers(400, seed=1) == speakers
    assert synth.choose_speakers(400, seed=2) != speakers


def test_default_split_sizes() -> None:
    speakers = synth.choose_speakers(80, seed=0)
    split = synth.split_speakers(speakers, seed=0)
    counts = {s: list(split.values()).count(s) for s in ("train", "validation", "test")}
    assert counts == {"train": 64, "validation": 8, "test": 8}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_speakers": 0},
        {"n_speakers": synth.max_speakers() + 1},
        {"takes": 0},
        {"workers": 0},
        {"words": ()},
        {"words": ("yes", "yes")},
        {"words": ("../x",)},
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        synth.synthesize_corpus(tmp_path / "c", progress=False, **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "c").exists()


# --- corpus ----------------------------------------------------------------------------------


def test_layout(corpus: Path) -> None:
    assert (corpus / ".complete").is_file()
    dirs = sorted(p.name for p in corpus.iterdir() if p.is_dir())
    assert dirs == sorted(synth.WORDS)
    for word in synth.WORDS:
        names = sorted(p.name for p in (corpus / word).iterdir())
        assert len(names) == N_SPEAKERS * TAKES
        matches = [NAME_RE.fullmatch(n) for n in names]
        assert all(matches)
        assert {int(m.group(2)) for m in matches if m} == set(range(TAKES))
    assert not list(corpus.parent.glob(".*tmp-*"))


def test_wav_format(corpus: Path) -> None:
    for path in sorted(corpus.glob("*/*.wav")):
        params, pcm = _read_wav(path)
        assert (params.nchannels, params.sampwidth, params.framerate) == (1, 2, SAMPLE_RATE)
        assert params.nframes == CLIP_SAMPLES == pcm.shape[0]
        peak = np.abs(pcm.astype(np.int32)).max() / 32768
        assert 0.25 < peak <= 1.0, path
        # Speech sits inside the clip: the first and last 10 ms are only noise.
        edge = max(np.abs(pcm[:160].astype(np.int32)).max(), np.abs(pcm[-160:]).max())
        assert edge < 0.2 * peak * 32768, path


def test_speaker_split(corpus: Path) -> None:
    rows = _speakers_csv(corpus)
    assert len(rows) == N_SPEAKERS
    assert len({(r["accent"], r["variant"], r["pitch"], r["rate"]) for r in rows}) == N_SPEAKERS
    for r in rows:
        params = (r["accent"], r["variant"], int(r["pitch"]), int(r["rate"]))
        assert r["speaker"] == synth.speaker_id(*params)
    by_split = {
        s: {r["speaker"] for r in rows if r["split"] == s} for s in ("train", "validation", "test")
    }
    assert all(by_split.values())

    on_disk = {str(p.relative_to(corpus)) for p in corpus.glob("*/*.wav")}
    listed: dict[str, set[str]] = {}
    for name, split in (("validation_list.txt", "validation"), ("testing_list.txt", "test")):
        lines = (corpus / name).read_text().splitlines()
        assert lines == sorted(lines) and len(lines) == len(set(lines))
        assert set(lines) <= on_disk
        matches = [NAME_RE.fullmatch(line.split("/")[1]) for line in lines]
        spk = {m.group(1) for m in matches if m}
        assert all(matches)
        assert spk == by_split[split]
        # Every clip of a held-out speaker is listed.
        assert len(lines) == len(by_split[split]) * len(synth.WORDS) * TAKES
        listed[split] = spk
    assert not listed["validation"] & listed["test"]


def test_refuses_other_parameters(corpus: Path) -> None:
    with pytest.raises(DataError, match="other parameters"):
        synth.synthesize_corpus(corpus, n_speakers=N_SPEAKERS, takes=TAKES, seed=4, progress=False)


def test_deterministic(corpus: Path, tmp_path: Path) -> None:
    again = _build(tmp_path / "again", workers=1)
    assert _files(again) == _files(corpus)


def test_cache_reuse(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEDSPEECH_CACHE", str(tmp_path))
    kwargs = {"n_speakers": 2, "takes": 1, "words": ("yes", "no"), "progress": False}
    root = synth.synthesize_corpus(**kwargs)  # type: ignore[arg-type]
    assert root.parent == tmp_path / "synth"
    assert root.name == synth.corpus_key(2, 1, 0, ("yes", "no"))
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}

    def boom(*args: object, **kw: object) -> None:
        raise AssertionError("cached corpus was rebuilt")

    monkeypatch.setattr(synth, "choose_speakers", boom)
    monkeypatch.setattr(synth, "map_in_processes", boom)
    assert synth.synthesize_corpus(**kwargs) == root  # type: ignore[arg-type]
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps
    # Other parameters mean another corpus.
    with pytest.raises(AssertionError, match="rebuilt"):
        synth.synthesize_corpus(**{**kwargs, "seed": 1})  # type: ignore[arg-type]


def test_failed_build_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def fail(*args: object, **kw: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth, "_write_metadata", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        synth.synthesize_corpus(
            tmp_path / "c", n_speakers=1, takes=1, words=("go",), progress=False, workers=1
        )
    assert list(tmp_path.iterdir()) == []


def test_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a finished"):
        synth.synthesize_corpus(tmp_path / "c", n_speakers=1, takes=1, progress=False)
