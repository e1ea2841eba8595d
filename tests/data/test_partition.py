"""Client partitions: coverage, speaker purity, label skew, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest

from fedspeech.data import PARTITIONS, KeywordCorpus, partition
from fedspeech.errors import ConfigError


def _corpus(n_speakers: int = 12, per_speaker: int = 40, n_classes: int = 10) -> KeywordCorpus:
    n = n_speakers * per_speaker
    rng = np.random.default_rng(123)
    speakers = [f"spk{i // per_speaker:02d}" for i in range(n)]
    return KeywordCorpus(
        # Partitions never look at audio; one sample per clip keeps the fixture small.
        waveforms=np.zeros((n, 1), dtype=np.float32),
        labels=rng.integers(0, n_classes, size=n).astype(np.int64),
        speakers=speakers,
        clip_ids=[f"c{i}.wav" for i in range(n)],
        split=["test" if i % 5 == 0 else "train" for i in range(n)],
        classes=[str(c) for c in range(n_classes)],
    )


def _check_cover(parts: list[np.ndarray], indices: np.ndarray, n_clients: int) -> None:
    assert len(parts) == n_clients
    assert all(p.size > 0 and p.dtype == np.int64 for p in parts)
    joined = np.concatenate(parts)
    assert joined.size == indices.size
    assert np.array_equal(np.sort(joined), np.sort(indices))


@pytest.mark.parametrize("scheme", ["speaker", "iid", "dirichlet"])
@pytest.mark.parametrize("n_clients", [1, 3, 5])
def test_disjoint_and_covering(scheme: str, n_clients: int) -> None:
    corpus = _corpus()
    train = corpus.indices("train")
    parts = partition(corpus, train, n_clients, scheme=scheme, seed=1)
    _check_cover(parts, train, n_clients)


def test_speaker_scheme_keeps_speakers_whole() -> None:
    corpus = _corpus()
    train = corpus.indices("train")
    parts = partition(corpus, train, 5, scheme="speaker", seed=0)
    owner: dict[str, set[int]] = {}
    for k, p in enumerate(parts):
        for i in p:
            owner.setdefault(corpus.speakers[i], set()).add(k)
    assert len(owner) == 12
    assert all(len(ks) == 1 for ks in owner.values())
    # Round-robin over 12 speakers: clients get 3, 3, 2, 2, 2 speakers.
    counts = sorted(len({corpus.speakers[i] for i in p}) for p in parts)
    assert counts == [2, 2, 2, 3, 3]


def test_speaker_scheme_too_many_clients() -> None:
    corpus = _corpus(n_speakers=4)
    with pytest.raises(ConfigError, match="7 clients but only 4 speakers"):
        partition(corpus, corpus.indices("train"), 7, scheme="speaker")


def test_iid_is_even() -> None:
    corpus = _corpus()
    train = corpus.indices("train")
    sizes = [p.size for p in partition(corpus, train, 7, scheme="iid", seed=3)]
    assert max(sizes) - min(sizes) <= 1


def _top_share(corpus: KeywordCorpus, parts: list[np.ndarray]) -> float:
    """Mean over clients of the fraction of its clips in its most common class."""
    shares = [np.bincount(corpus.labels[p]).max() / p.size for p in parts]
    return float(np.mean(shares))


def test_dirichlet_small_alpha_skews_labels() -> None:
    corpus = _corpus(n_speakers=20, per_speaker=100)
    train = corpus.indices("train")
    skewed = partition(corpus, train, 8, scheme="dirichlet", alpha=0.05, seed=0)
    flat = partition(corpus, train, 8, scheme="dirichlet", alpha=1000.0, seed=0)
    iid = partition(corpus, train, 8, scheme="iid", seed=0)
    _check_cover(skewed, train, 8)
    assert _top_share(corpus, skewed) > 0.5
    assert _top_share(corpus, flat) < 0.2
    assert _top_share(corpus, iid) < 0.2


def test_dirichlet_fills_empty_clients() -> None:
    # Two classes, many clients and a tiny alpha leave most clients empty before the fix-up.
    corpus = _corpus(n_classes=2)
    train = corpus.indices("train")
    parts = partition(corpus, train, 30, scheme="dirichlet", alpha=0.01, seed=5)
    _check_cover(parts, train, 30)


@pytest.mark.parametrize("scheme", ["speaker", "iid", "dirichlet"])
def test_same_seed_same_partition(scheme: str) -> None:
    corpus = _corpus()
    train = corpus.indices("train")
    a = partition(corpus, train, 4, scheme=scheme, seed=7)
    b = partition(corpus, train[::-1].copy(), 4, scheme=scheme, seed=7)
    c = partition(corpus, train, 4, scheme=scheme, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_errors() -> None:
    corpus = _corpus()
    train = corpus.indices("train")
    with pytest.raises(ConfigError, match="positive integer"):
        partition(corpus, train, 0)
    with pytest.raises(ConfigError, match="alpha"):
        partition(corpus, train, 3, scheme="dirichlet", alpha=0.0)
    with pytest.raises(ConfigError, match="unknown partition 'pathological'; known: dirichlet"):
        partition(corpus, train, 3, scheme="pathological")
    with pytest.raises(ConfigError, match="only 2 clips"):
        partition(corpus, train[:2], 3, scheme="iid")
    assert PARTITIONS.names() == ["dirichlet", "iid", "speaker"]
