"""Splitting a set of clips among federated clients.

Schemes live in :data:`PARTITIONS`:

``speaker``
    Natural non-IID: each speaker's clips go to exactly one client (speakers shuffled, then
    dealt round-robin).
``iid``
    Shuffle and cut into ``n_clients`` nearly equal parts.
``dirichlet``
    Label skew: each class is spread over the clients with proportions drawn from
    ``Dir(alpha)``; small ``alpha`` gives each client few classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import numpy as np

from fedspeech.errors import ConfigError
from fedspeech.registry import Registry


class Clips(Protocol):
    """What partitioning reads of a corpus (a ``KeywordCorpus`` or a ``SpoofCorpus``)."""

    labels: np.ndarray
    speakers: list[str]

    def __len__(self) -> int: ...


PartitionFn = Callable[[Clips, np.ndarray, int, float, np.random.Generator], list[np.ndarray]]

PARTITIONS: Registry[PartitionFn] = Registry("partition")


def partition(
    corpus: Clips,
    indices: np.ndarray,
    n_clients: int,
    scheme: str = "speaker",
    alpha: float = 0.5,
    seed: int = 0,
) -> list[np.ndarray]:
    """Split corpus positions among clients.

    Parameters
    ----------
    corpus : Clips
        Source of labels and speakers (a ``KeywordCorpus`` or ``SpoofCorpus``).
    indices : np.ndarray
        Distinct corpus positions to share out, usually ``corpus.indices("train")``.
    n_clients : int
        Number of clients, at least 1.
    scheme : str
        ``"speaker"``, ``"iid"`` or ``"dirichlet"``.
    alpha : float
        Dirichlet concentration (``dirichlet`` only), > 0.
    seed : int
        Seed of ``np.random.default_rng``; the same seed gives the same partition.

    Returns
    -------
    list of np.ndarray
        ``n_clients`` sorted int64 arrays, pairwise disjoint, together exactly ``indices``.
        Every client gets at least one clip.

    Raises
    ------
    ConfigError
        Unknown scheme, ``n_clients < 1``, more clients than clips (or than speakers for
        ``speaker``), or ``alpha <= 0`` for ``dirichlet``.
    """
    fn = PARTITIONS.get(scheme)
    if isinstance(n_clients, bool) or not isinstance(n_clients, int | np.integer) or n_clients < 1:
        raise ConfigError(f"number of clients must be a positive integer, got {n_clients!r}")
    n_clients = int(n_clients)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if np.unique(idx).size != idx.size:
        raise ValueError("indices contain duplicates")
    if idx.size and (idx.min() < 0 or idx.max() >= len(corpus)):
        raise ValueError(f"indices out of range for a corpus of {len(corpus)} clips")
    if n_clients > idx.size:
        raise ConfigError(f"{n_clients} clients but only {idx.size} clips to share out")
    parts = fn(corpus, idx, n_clients, alpha, np.random.default_rng(seed))
    return [np.sort(p.astype(np.int64)) for p in parts]


@PARTITIONS.register("speaker")
def _by_speaker(
    corpus: Clips, idx: np.ndarray, n_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    speakers = np.array([corpus.speakers[i] for i in idx], dtype=object)
    # Sorted first so the result depends on the seed only, not on the order of ``indices``.
    present = sorted(set(speakers.tolist()))
    if n_clients > len(present):
        raise ConfigError(
            f"{n_clients} clients but only {len(present)} speakers in the training split; "
            "use --partition iid or dirichlet, or fewer clients"
        )
    order = [present[j] for j in rng.permutation(len(present))]
    client_of = {spk: k % n_clients for k, spk in enumerate(order)}
    owner = np.array([client_of[s] for s in speakers], dtype=np.int64)
    return [idx[owner == c] for c in range(n_clients)]


@PARTITIONS.register("iid")
def _iid(
    corpus: Clips, idx: np.ndarray, n_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    return list(np.array_split(rng.permutation(np.sort(idx)), n_clients))


@PARTITIONS.register("dirichlet")
def _dirichlet(
    corpus: Clips, idx: np.ndarray, n_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    if not (math.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"dirichlet alpha must be a positive number, got {alpha!r}")
    idx = np.sort(idx)
    labels = corpus.labels[idx]
    buckets: list[list[int]] = [[] for _ in range(n_clients)]
    for c in np.unique(labels):
        members = rng.permutation(idx[labels == c])
        props = rng.dirichlet(np.full(n_clients, alpha))
        cuts = (np.cumsum(props)[:-1] * members.size).astype(np.int64)
        for k, chunk in enumerate(np.split(members, cuts)):
            buckets[k].extend(chunk.tolist())
    # Small alpha often leaves clients empty; redrawing may never succeed (fewer classes than
    # clients), so each empty client takes one random clip from the largest one instead.
    for k in range(n_clients):
        if not buckets[k]:
            donor = max(range(n_clients), key=lambda j: len(buckets[j]))
            buckets[k].append(buckets[donor].pop(int(rng.integers(len(buckets[donor])))))
    return [np.array(b, dtype=np.int64) for b in buckets]
