"""What every task's prepared run shares: the ``<run>/data/`` files and their readers.

A task (:mod:`fedspeech.tasks.kws`, :mod:`fedspeech.tasks.sdd`) turns a :class:`SimConfig`
into a :class:`RunData`: everything the clients need is written once into ``<run>/data/``
(features as ``.npy``, read memory-mapped with ``allow_pickle=False``; indexes as JSON), so
each Ray worker maps the same bytes instead of receiving a copy of the dataset, and memory
stays flat in the number of clients. The ``open_*`` readers map them once per process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedspeech.errors import DataError
from fedspeech.fileio import atomic_save_npy, atomic_write_text


@dataclass
class RunData:
    """Paths and arrays of a prepared run.

    Attributes
    ----------
    run_dir : Path
        The run folder (``--out``).
    features_path, labels_path, partition_path, index_path : Path
        Files under ``run_dir/data``.
    classes : list[str]
        Class names in label order.
    input_shape : tuple[int, ...]
        ``(n_features, n_frames)`` of one example (``kws``), or ``(samples,)`` of one raw
        waveform (``sdd``, where ``features.npy`` holds the clips themselves).
    test_indices : np.ndarray
        Corpus positions the global model is evaluated on each round.
    partitions : list[np.ndarray]
        Per-client corpus positions (client id = list index).
    corpus_meta : dict
        ``clip_ids``, ``speakers``, ``split`` lists (``sdd``: also ``attacks``), for ground
        truth.
    eval_sets : dict[str, np.ndarray]
        ``sdd`` only: metric name (``eer``, ``eer_unseen``) → positions into
        ``test_indices`` of the clips it is computed on (seen, respectively held-out attacks,
        each with every bona fide test clip).
    domains : dict[str, np.ndarray]
        ``sdd`` only: domain kind (``attack``, ``speaker``) → ``(N,)`` int64 domain id of
        every row of ``features.npy``, written to ``data/domains_<kind>.npy`` for RoGA's
        ``--roga-domains`` (ids number the sorted names in ``index.json``).
    """

    run_dir: Path
    classes: list[str]
    input_shape: tuple[int, ...]
    test_indices: np.ndarray
    partitions: list[np.ndarray]
    corpus_meta: dict[str, list[str]]
    eval_sets: dict[str, np.ndarray] = field(default_factory=dict)
    domains: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def features_path(self) -> Path:
        return self.run_dir / "data" / "features.npy"

    @property
    def labels_path(self) -> Path:
        return self.run_dir / "data" / "labels.npy"

    @property
    def partition_path(self) -> Path:
        return self.run_dir / "data" / "partition.json"

    @property
    def index_path(self) -> Path:
        return self.run_dir / "data" / "index.json"

    def domains_path(self, kind: str) -> Path:
        """``data/domains_<kind>.npy``: see :func:`domains_file`."""
        return domains_file(self.run_dir / "data", kind)

    def write(
        self, features: np.ndarray, labels: np.ndarray, index: dict[str, Any], scheme: str
    ) -> None:
        """Write the run's ``data/`` files atomically: inputs, labels, partition, index."""
        atomic_save_npy(self.features_path, features)
        atomic_save_npy(self.labels_path, labels.astype(np.int64))
        part_json = {"clients": [p.tolist() for p in self.partitions], "scheme": scheme}
        atomic_write_text(self.partition_path, json.dumps(part_json))
        atomic_write_text(self.index_path, json.dumps(index))
        for kind, ids in self.domains.items():
            atomic_save_npy(self.domains_path(kind), ids.astype(np.int64))


def domains_file(data_dir: Path, kind: str) -> Path:
    """The file of a run's per-clip domain ids of ``kind`` (``attack``, ``speaker``).

    It sits beside ``features.npy``, so a client that knows the features' path finds it.
    """
    return Path(data_dir) / f"domains_{kind}.npy"


def default_run_dir() -> Path:
    """``runs/<timestamp>`` under the working directory."""
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def peak_normalize(waveforms: np.ndarray, peak: float = 0.9) -> np.ndarray:
    """Scale each clip ``(N, samples)`` to the same peak amplitude.

    Recording levels differ by 40 dB between FSDD speakers; the study's linear-scale Mel
    features carry that squared, which stalls SGD. Silent clips are left as they are.
    """
    peaks = np.abs(waveforms).max(axis=1, keepdims=True)
    gain = np.where(peaks > 1e-6, peak / np.maximum(peaks, 1e-6), 1.0)
    return (waveforms * gain).astype(np.float32)


@torch.no_grad()
def compute_features(
    waveforms: np.ndarray, frontend: torch.nn.Module, batch_size: int = 256
) -> np.ndarray:
    """Front-end features ``(N, F, T)`` float32 of waveforms ``(N, samples)``."""
    out = []
    for start in range(0, len(waveforms), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(waveforms[start : start + batch_size]))
        out.append(frontend(x).float().numpy())
    return np.concatenate(out, axis=0)


@lru_cache(maxsize=4)
def open_features(features_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
    """Memory-map a run's features and labels once per process."""
    feats = np.load(features_path, mmap_mode="r", allow_pickle=False)
    labels = np.load(labels_path, allow_pickle=False)
    return feats, labels


@lru_cache(maxsize=4)
def open_domains(features_path: str, kind: str) -> np.ndarray:
    """``(N,)`` int64 domain ids of ``kind`` of a run's clips, once per process.

    Raises
    ------
    DataError
        The run folder has no such file (prepared without it, or an unknown ``kind``).
    """
    path = domains_file(Path(features_path).parent, kind)
    if not path.is_file():
        raise DataError(f"{path} does not exist: the run was not prepared with {kind} domains")
    return np.load(path, allow_pickle=False)


@lru_cache(maxsize=4)
def open_partition(partition_path: str) -> list[np.ndarray]:
    """Per-client corpus positions of a run, once per process."""
    data = json.loads(Path(partition_path).read_text(encoding="utf-8"))
    return [np.asarray(c, dtype=np.int64) for c in data["clients"]]


__all__ = [
    "RunData",
    "compute_features",
    "default_run_dir",
    "domains_file",
    "open_domains",
    "open_features",
    "open_partition",
    "peak_normalize",
]
