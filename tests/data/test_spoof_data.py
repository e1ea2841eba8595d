"""Tests for the speech-deepfake data: attacks, the built-in corpus and the real-set loaders."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fedspeech.data.corpus import SAMPLE_RATE
from fedspeech.data.spoof import (
    BONAFIDE,
    DEFAULT_ATTACKS,
    DEFAULT_UNSEEN,
    PROTOCOL,
    SpoofCorpus,
    build_spoof_corpus,
    clip_seed,
    find_bonafide,
    fit_length,
    read_protocol,
    select_per_speaker,
    split_speakers,
)
from fedspeech.data.spoof_attacks import SPOOF_ATTACKS, apply_attack, available_attacks
from fedspeech.data.spoof_loaders import (
    FOR_ATTACK,
    ITW_ATTACK,
    SPOOF_DATASETS,
    load_spoof_dataset,
)
from fedspeech.errors import ConfigError, DataError

SPEAKERS = ("alice", "bob", "carol", "dave")
UTTS = 3


def _voice(seed: int, seconds: float = 1.0, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A crude voiced utterance: harmonics of a gliding F0 under an envelope, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = rng.uniform(90, 220) * (1 + 0.1 * np.sin(2 * np.pi * 2 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 12) if k * f0.max() < sr / 2)
    env = np.clip(np.sin(np.pi * t / seconds) * 1.5, 0, 1)
    y = 0.3 * env * np.asarray(x) / 2 + 0.003 * rng.standard_normal(t.shape)
    return y.astype(np.float32)


def _write(path: Path, x: np.ndarray, sr: int = SAMPLE_RATE, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, sr, subtype="PCM_16", format=fmt)


@pytest.fixture(scope="module")
def bona_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bona")
    for s, spk in enumerate(SPEAKERS):
        for u in range(UTTS):
            _write(root / spk / f"utt{u}.wav", _voice(10 * s + u))
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDSPEECH_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def built(bona_root: Path, cache: Path) -> Path:
    return build_spoof_corpus(bona_root, seed=1, progress=False, workers=1)


# --- attacks -----------------------------------------------------------------------------------


def test_at_least_four_attacks() -> None:
    assert {"gl", "mel", "lpc", "codec"} <= set(available_attacks())
    assert set(DEFAULT_ATTACKS) <= set(available_attacks())
    assert set(DEFAULT_UNSEEN) < set(DEFAULT_ATTACKS)


@pytest.mark.parametrize("name", available_attacks())
def test_attack_keeps_length_is_finite_differs_and_repeats(name: str) -> None:
    x = _voice(3, seconds=0.8)
    # A fricative-like noise burst, so that band limiting changes the signal too.
    x[4000:6000] += 0.05 * np.random.default_rng(0).standard_normal(2000).astype(np.float32)
    y = apply_attack(name, x, seed=5)
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.all(np.isfinite(y))
    assert np.abs(y).max() <= 0.99 + 1e-6
    # Level-matched, yet a clearly different waveform (under 25 dB SNR against the input).
    assert np.sqrt(np.mean(y**2)) == pytest.approx(np.sqrt(np.mean(x**2)), rel=0.05)
    snr = 10 * np.log10(np.sum(x**2) / np.sum((x - y) ** 2))
    assert snr < 25
    np.testing.assert_array_equal(y, apply_attack(name, x, seed=5))


def test_attack_errors() -> None:
    with pytest.raises(ConfigError, match="unknown spoof attack"):
        apply_attack("nope", _voice(0), 0)
    with pytest.raises(ValueError, match="1-D"):
        apply_attack("gl", np.zeros((2, 16000), np.float32), 0)
    assert "gl" in SPOOF_ATTACKS


# --- helpers -----------------------------------------------------------------------------------


def test_fit_length_repeats_and_crops() -> None:
    x = np.arange(1, 4, dtype=np.float32)
    np.testing.assert_array_equal(fit_length(x, 8), [1, 2, 3, 1, 2, 3, 1, 2])
    np.testing.assert_array_equal(fit_length(x, 2), [1, 2])
    assert fit_length(np.zeros(0, np.float32), 4).tolist() == [0, 0, 0, 0]


def test_find_bonafide_speaker_rules(tmp_path: Path) -> None:
    for rel in (
        "sc/yes/abcd1234_nohash_0.wav",
        "sc/_background_noise_/noise.wav",
        "fsdd/recordings/3_jackson_12.wav",
        "tree/p225/p225_001.flac",
        "flat/spk7-utt1.wav",
        "flat/spk8_utt2.WAV",
        "flat/notes.txt",
        "tree/.hidden/x.wav",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).touch()
    got = {s.path.relative_to(tmp_path).as_posix(): s for s in find_bonafide(tmp_path / "sc")}
    assert [(s.speaker, s.utt) for s in got.values()] == [("abcd1234", "yes-abcd1234_nohash_0")]
    assert [s.speaker for s in find_bonafide(tmp_path / "fsdd")] == ["jackson"]
    assert [s.speaker for s in find_bonafide(tmp_path / "tree")] == ["p225"]
    flat = find_bonafide(tmp_path / "flat")
    assert [(s.speaker, s.utt) for s in flat] == [("spk7", "spk7-utt1"), ("spk8", "spk8_utt2")]


def test_split_and_selection_are_deterministic() -> None:
    speakers = [f"s{i}" for i in range(20)]
    split = split_speakers(speakers, seed=4)
    assert split == split_speakers(reversed(speakers), seed=4)
    counts = {k: list(split.values()).count(k) for k in ("train", "validation", "test")}
    assert counts == {"train": 14, "validation": 2, "test": 4}
    with pytest.raises(DataError, match="at least 3 speakers"):
        split_speakers(["a", "b"])


def test_select_per_speaker(tmp_path: Path) -> None:
    for spk in ("a", "b"):
        for u in range(6):
            (tmp_path / spk).mkdir(exist_ok=True)
            (tmp_path / spk / f"{u}.wav").touch()
    found = find_bonafide(tmp_path)
    picked = select_per_speaker(found, 2, seed=0)
    assert picked == select_per_speaker(found, 2, seed=0)
    assert sorted(s.speaker for s in picked) == ["a", "a", "b", "b"]
    assert select_per_speaker(found, None) == found


# --- built-in corpus ---------------------------------------------------------------------------


def test_builtin_layout(built: Path, bona_root: Path, cache: Path) -> None:
    assert built.parent == cache / "spoof"
    assert (built / ".complete").is_file()
    rows = read_protocol(built)
    attacks = {r[2] for r in rows}
    assert attacks == {BONAFIDE, *DEFAULT_ATTACKS}
    assert sum(r[3] == BONAFIDE for r in rows) == len(SPEAKERS) * UTTS
    assert len({(r[1], r[2]) for r in rows}) == len(rows)
    for speaker, utt, attack, _label, _split in rows:
        sub = f"bonafide/{speaker}" if attack == BONAFIDE else f"spoof/{attack}/{speaker}"
        info = sf.info(built / sub / f"{utt}.wav")
        assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
        assert info.frames == SAMPLE_RATE
    # Bona fide clips are the source audio, sample for sample.
    src, _ = sf.read(bona_root / "bob" / "utt1.wav", dtype="int16")
    out, _ = sf.read(built / "bonafide" / "bob" / "bob-utt1.wav", dtype="int16")
    np.testing.assert_array_equal(src, out)


def test_builtin_splits_and_unseen(built: Path) -> None:
    rows = read_protocol(built)
    by_split: dict[str, set[str]] = {}
    for speaker, _utt, _attack, _label, split in rows:
        by_split.setdefault(split, set()).add(speaker)
    assert set(by_split) == {"train", "validation", "test"}
    assert sum(len(v) for v in by_split.values()) == len(SPEAKERS)  # disjoint
    for _speaker, _utt, attack, _label, split in rows:
        if attack in DEFAULT_UNSEEN:
            assert split == "test"
    test_attacks = {r[2] for r in rows if r[4] == "test"}
    assert test_attacks == {BONAFIDE, *DEFAULT_ATTACKS}


def test_builtin_reloads(built: Path) -> None:
    corpus = load_spoof_dataset("builtin", built)
    again = load_spoof_dataset("builtin", str(built))
    np.testing.assert_array_equal(corpus.waveforms, again.waveforms)
    assert corpus.clip_ids == again.clip_ids and corpus.attacks == again.attacks
    assert corpus.waveforms.shape == (len(read_protocol(built)), SAMPLE_RATE)
    assert corpus.waveforms.dtype == np.float32 and corpus.labels.dtype == np.int64
    assert all(
        (lab == 1) == (a == BONAFIDE) for lab, a in zip(corpus.labels, corpus.attacks, strict=True)
    )
    assert corpus.skipped == 0

    # A spoof is the attack applied to the bona fide clip, up to PCM16 rounding.
    i = corpus.attacks.index("gl")
    spk, clip = corpus.speakers[i], corpus.clip_ids[i]
    utt = Path(clip).stem
    j = corpus.clip_ids.index(f"bonafide/{spk}/{utt}.wav")
    expected = apply_attack("gl", corpus.waveforms[j], clip_seed(1, spk, utt, "gl"))
    np.testing.assert_allclose(corpus.waveforms[i], expected, atol=1.01 / 32768)

    seen, unseen = corpus.seen_unseen()
    assert set(corpus.attacks[k] for k in seen) == {BONAFIDE, "gl", "mel", "codec"}
    assert set(corpus.attacks[k] for k in unseen) == {BONAFIDE, "lpc"}
    assert corpus.attack_ids("train") == ["codec", "gl", "mel"]
    train = load_spoof_dataset("builtin", built, splits=["train"], num_samples=20000)
    assert set(train.split) == {"train"} and train.num_samples == 20000
    np.testing.assert_array_equal(train.waveforms[:, 16000:], train.waveforms[:, :4000])
    sub = corpus.subset(seen)
    assert isinstance(sub, SpoofCorpus) and len(sub) == len(seen)


def test_builtin_is_cached_and_parallel_build_is_identical(
    built: Path, bona_root: Path, tmp_path: Path
) -> None:
    assert build_spoof_corpus(bona_root, seed=1, progress=False, workers=1) == built

    # Only the cheap codec attack: what matters is that worker processes change nothing.
    def build(workers: int, out: str) -> Path:
        return build_spoof_corpus(
            bona_root,
            attacks=("codec",),
            unseen=(),
            progress=False,
            workers=workers,
            max_per_speaker=2,
            out_root=tmp_path / out,
        )

    one, two = build(1, "one"), build(2, "two")
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    assert len(files) == 2 + 2 * 2 * len(SPEAKERS)
    for rel in files:
        assert (one / rel).read_bytes() == (two / rel).read_bytes(), rel


def test_build_errors(bona_root: Path, cache: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown spoof attack"):
        build_spoof_corpus(bona_root, attacks=("gl", "nope"), progress=False)
    with pytest.raises(ConfigError, match="not in attacks"):
        build_spoof_corpus(bona_root, attacks=("gl",), unseen=("lpc",), progress=False)
    with pytest.raises(ConfigError, match="at least one"):
        build_spoof_corpus(bona_root, attacks=("gl",), unseen=("gl",), progress=False)
    with pytest.raises(ConfigError, match="max_per_speaker"):
        build_spoof_corpus(bona_root, max_per_speaker=0, progress=False)
    with pytest.raises(DataError, match="not a directory"):
        build_spoof_corpus(tmp_path / "missing", progress=False)
    with pytest.raises(DataError, match="no .wav or .flac"):
        build_spoof_corpus(tmp_path, progress=False)
    two = tmp_path / "two"
    for spk in ("a", "b"):
        _write(two / spk / "x.wav", _voice(1))
    with pytest.raises(DataError, match="at least 3 speakers"):
        build_spoof_corpus(two, progress=False)


def test_build_skips_bad_sources(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "src"
    for s, spk in enumerate(("a", "b", "c")):
        _write(root / spk / "0.wav", _voice(s, seconds=0.5))
    (root / "c" / "1.wav").write_bytes(b"RIFF garbage")
    with pytest.warns(UserWarning, match="skipped 1"):
        out = build_spoof_corpus(root, attacks=("codec",), unseen=(), progress=False, workers=1)
    rows = read_protocol(out)
    assert len(rows) == 6 and {r[0] for r in rows} == {"a", "b", "c"}
    corpus = load_spoof_dataset("builtin", out)
    # 0.5-s sources are repeated to the 1-s default length.
    np.testing.assert_array_equal(corpus.waveforms[:, 8000:], corpus.waveforms[:, :8000])


# --- real-set loaders on fake folders ----------------------------------------------------------

SHORT = 2000  # samples of each fake clip; loaders repeat them to N below
N = 4500


def _clip(seed: int, n: int = SHORT, sr: int = SAMPLE_RATE) -> np.ndarray:
    return _voice(seed, seconds=n / sr, sr=sr)


def _check_repeated(corpus: SpoofCorpus) -> None:
    assert corpus.waveforms.shape[1] == N
    np.testing.assert_array_equal(
        corpus.waveforms[:, SHORT : 2 * SHORT], corpus.waveforms[:, :SHORT]
    )


def _asv2019(root: Path) -> Path:
    la = root / "LA"
    proto = la / "ASVspoof2019_LA_cm_protocols"
    proto.mkdir(parents=True)
    lines = {
        "train": ["LA_0079 LA_T_1 - - bonafide", "LA_0079 LA_T_2 - A01 spoof"],
        "dev": ["LA_0069 LA_D_1 - - bonafide", "LA_0069 LA_D_2 - A02 spoof"],
        "eval": [
            "LA_0039 LA_E_1 - - bonafide",
            "LA_0039 LA_E_2 - A16 spoof",
            "LA_0040 LA_E_3 - A07 spoof",
        ],
    }
    names = {"train": "train.trn", "dev": "dev.trl", "eval": "eval.trl"}
    seed = 0
    for part, rows in lines.items():
        (proto / f"ASVspoof2019.LA.cm.{names[part]}.txt").write_text("\n".join(rows) + "\n")
        for row in rows:
            seed += 1
            utt = row.split()[1]
            _write(la / f"ASVspoof2019_LA_{part}" / "flac" / f"{utt}.flac", _clip(seed), fmt="FLAC")
    return la


def test_asvspoof2019_la(tmp_path: Path) -> None:
    la = _asv2019(tmp_path)
    corpus = load_spoof_dataset("asvspoof2019_la", tmp_path, num_samples=N)
    assert corpus.split == ["train"] * 2 + ["validation"] * 2 + ["test"] * 3
    assert corpus.labels.tolist() == [1, 0, 1, 0, 1, 0, 0]
    assert corpus.attacks == [BONAFIDE, "A01", BONAFIDE, "A02", BONAFIDE, "A16", "A07"]
    assert corpus.speakers[-1] == "LA_0040"
    assert corpus.clip_ids[0] == "LA/ASVspoof2019_LA_train/flac/LA_T_1.flac"
    _check_repeated(corpus)
    seen, unseen = corpus.seen_unseen()
    assert [corpus.attacks[i] for i in unseen] == [BONAFIDE, "A16", "A07"]
    assert [corpus.attacks[i] for i in seen] == [BONAFIDE]
    # The LA folder itself works as root too; splits filter before reading.
    only = load_spoof_dataset("asvspoof2019_la", la, num_samples=N, splits=("test",))
    assert len(only) == 3 and set(only.split) == {"test"}

    (la / "ASVspoof2019_LA_eval" / "flac" / "LA_E_3.flac").unlink()
    (la / "ASVspoof2019_LA_dev" / "flac" / "LA_D_1.flac").write_bytes(b"not flac")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        part = load_spoof_dataset("asvspoof2019_la", la, num_samples=N)
    assert len(caught) == 1 and "skipped 2" in str(caught[0].message)
    assert part.skipped == 2 and len(part) == 5 and part.waveforms.shape == (5, N)
    np.testing.assert_array_equal(part.waveforms, corpus.waveforms[[0, 1, 3, 4, 5]])


def test_asvspoof2019_la_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="ASVspoof2019_LA_cm_protocols"):
        load_spoof_dataset("asvspoof2019_la", tmp_path)
    la = _asv2019(tmp_path)
    (la / "ASVspoof2019_LA_cm_protocols" / "ASVspoof2019.LA.cm.dev.trl.txt").unlink()
    with pytest.warns(UserWarning, match="dev.trl"):
        assert set(load_spoof_dataset("asvspoof2019_la", la, num_samples=N).split) == {
            "train",
            "test",
        }
    (la / "ASVspoof2019_LA_cm_protocols" / "ASVspoof2019.LA.cm.train.trn.txt").write_text(
        "LA_0079 LA_T_1 - - maybe\n"
    )
    with pytest.raises(DataError, match="label must be"):
        load_spoof_dataset("asvspoof2019_la", la, splits=["train"])


def test_asvspoof2021_df(tmp_path: Path) -> None:
    keys = tmp_path / "keys" / "DF" / "CM"
    keys.mkdir(parents=True)
    (keys / "trial_metadata.txt").write_text(
        "LA_0023 DF_E_2000011 nocodec asvspoof A14 spoof notrim progress traditional_vocoder"
        " - - - -\n"
        "VCC2TF1 DF_E_2000026 mp3m4a vcc2020 bonafide bonafide notrim eval bonafide - - - -\n"
        "LA_0043 DF_E_2000027 low_m4a asvspoof A09 spoof notrim eval x - - - -\n"
    )
    flac = tmp_path / "ASVspoof2021_DF_eval" / "flac"
    for k, utt in enumerate(("DF_E_2000011", "DF_E_2000026", "DF_E_2000027")):
        _write(flac / f"{utt}.flac", _clip(k), fmt="FLAC")
    corpus = load_spoof_dataset("asvspoof2021_df", tmp_path, num_samples=N)
    assert corpus.speakers == ["LA_0023", "VCC2TF1", "LA_0043"]
    assert corpus.attacks == ["A14", BONAFIDE, "A09"]
    assert corpus.labels.tolist() == [0, 1, 0]
    assert set(corpus.split) == {"test"}
    _check_repeated(corpus)
    with pytest.raises(DataError, match="trial_metadata"):
        load_spoof_dataset("asvspoof2021_la", tmp_path)


def test_in_the_wild(tmp_path: Path) -> None:
    (tmp_path / "meta.csv").write_text(
        "file,speaker,label\n0.wav,Alec Guinness,spoof\n1.wav,Alec Guinness,bona-fide\n"
        "2.wav,Barack Obama,bona-fide\n"
    )
    _write(tmp_path / "0.wav", _clip(0))
    _write(tmp_path / "1.wav", _clip(1, n=6000))  # longer than N: cropped from the start
    _write(tmp_path / "2.wav", _clip(2, n=1000, sr=8000), sr=8000)  # resampled to 16 kHz
    corpus = load_spoof_dataset("in_the_wild", tmp_path, num_samples=N)
    assert corpus.labels.tolist() == [0, 1, 1]
    assert corpus.attacks == [ITW_ATTACK, BONAFIDE, BONAFIDE]
    assert corpus.speakers == ["Alec Guinness", "Alec Guinness", "Barack Obama"]
    assert corpus.split == ["test"] * 3
    src, _ = sf.read(tmp_path / "1.wav", dtype="float32")
    np.testing.assert_array_equal(corpus.waveforms[1], src[:N])
    np.testing.assert_array_equal(corpus.waveforms[2, 2000:4000], corpus.waveforms[2, :2000])

    (tmp_path / "meta.csv").write_text("file,speaker,label\n0.wav,A,fake\n")
    with pytest.raises(DataError, match="bona-fide"):
        load_spoof_dataset("in_the_wild", tmp_path)
    (tmp_path / "meta.csv").write_text("file,label\n0.wav,spoof\n")
    with pytest.raises(DataError, match="speaker"):
        load_spoof_dataset("in_the_wild", tmp_path)


def test_fake_or_real(tmp_path: Path) -> None:
    seed = 0
    for folder in ("training", "validation", "testing"):
        for kind in ("real", "fake"):
            seed += 1
            _write(tmp_path / folder / kind / f"file{seed}.wav", _clip(seed))
    corpus = load_spoof_dataset("fake_or_real", tmp_path, num_samples=N)
    assert corpus.split == ["train"] * 2 + ["validation"] * 2 + ["test"] * 2
    assert corpus.labels.tolist() == [1, 0] * 3
    assert corpus.attacks == [BONAFIDE, FOR_ATTACK] * 3
    assert set(corpus.speakers) == {"unknown"}
    assert corpus.clip_ids[1] == "training/fake/file2.wav"
    _check_repeated(corpus)


def test_loader_errors(tmp_path: Path) -> None:
    assert {"builtin", "asvspoof2019_la", "asvspoof2021_df", "in_the_wild", "fake_or_real"} <= set(
        SPOOF_DATASETS.names()
    )
    with pytest.raises(ConfigError, match="unknown spoof dataset"):
        load_spoof_dataset("nope", tmp_path)
    with pytest.raises(DataError, match="no data root"):
        load_spoof_dataset("builtin", None)
    with pytest.raises(DataError, match="does not exist"):
        load_spoof_dataset("fake_or_real", tmp_path / "missing")
    with pytest.raises(DataError, match=PROTOCOL):
        load_spoof_dataset("builtin", tmp_path)
    with pytest.raises(DataError, match="training/"):
        load_spoof_dataset("fake_or_real", tmp_path)
    (tmp_path / "testing" / "real").mkdir(parents=True)
    with pytest.raises(DataError, match="no Fake-or-Real clips"):
        load_spoof_dataset("fake_or_real", tmp_path)
    (tmp_path / "testing" / "real" / "bad.wav").write_bytes(b"RIFF....WAVEjunk")
    with pytest.warns(UserWarning, match="skipped 1"), pytest.raises(DataError, match="readable"):
        load_spoof_dataset("fake_or_real", tmp_path)
    with pytest.raises(ConfigError, match="num_samples"):
        load_spoof_dataset("fake_or_real", tmp_path, num_samples=0)
    with pytest.raises(ConfigError, match="split"):
        load_spoof_dataset("fake_or_real", tmp_path, splits=["dev"])
