"""What every task's prepared run shares: the ``<run>/data/`` files and their readers.

A task (:mod:`fedspeech.tasks.kws`, :mod:`fedspeech.tasks.sdd`) turns a :class:`SimConfig`
into a :class:`RunData`: everything the clients need is written once into ``<run>/data/``
(features as ``.npy``, read memory-mapped with ``allow_pickle=False``; indexes as JSON), so
each Ray worker maps the same bytes instead of receiving a copy of the dataset, and memory
stays flat in the number of clients. The ``open_*`` readers map them once per process.

Before that, :func:`claim_run_dir` makes the run folder its own: a new folder, or ``--out``
when it holds no earlier run (``--overwrite`` removes the earlier run's files first), with
``run.json`` recording how and where the run was started.
"""

from __future__ import annotations

import json
import platform
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedspeech import __version__
from fedspeech.config import SimConfig
from fedspeech.errors import DataError, FedspeechError
from fedspeech.fileio import atomic_save_npy, atomic_write_json

#: Entries whose presence means a folder holds a run: a second run would mix its files in.
RUN_MARKERS: tuple[str, ...] = ("metrics.json", "config.toml", "captures")
#: Everything a run writes into its folder; ``--overwrite`` removes these and nothing else.
RUN_ENTRIES: tuple[str, ...] = (
    "captures",
    "truth",
    "audit",
    "data",
    "state",
    "metrics.json",
    "config.toml",
    "run.json",
    "accuracy.png",
    "eer.png",
)
#: The file recording the command line, versions, source commit, start time and host.
RUN_INFO = "run.json"
# Timestamp folders tried per second before giving up (runs/<ts>, <ts>-1, <ts>-2, ...).
_MAX_SUFFIX = 1000


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
    # The global model's starting weights (``--init-weights``); None: the model's own init.
    initial_weights: dict[str, torch.Tensor] | None = None

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
        atomic_write_json(self.partition_path, part_json)
        atomic_write_json(self.index_path, index)
        for kind, ids in self.domains.items():
            atomic_save_npy(self.domains_path(kind), ids.astype(np.int64))


def domains_file(data_dir: Path, kind: str) -> Path:
    """The file of a run's per-clip domain ids of ``kind`` (``attack``, ``speaker``).

    It sits beside ``features.npy``, so a client that knows the features' path finds it.
    """
    return Path(data_dir) / f"domains_{kind}.npy"


def waveforms_file(data_dir: Path) -> Path:
    """A keyword run's waveforms, kept beside ``features.npy`` when a client augments them."""
    return Path(data_dir) / "waveforms.npy"


@lru_cache(maxsize=2)
def open_waveforms(features_path: str) -> np.ndarray:
    """``(N, samples)`` float32 waveforms beside a run's features, memory-mapped once.

    Raises
    ------
    DataError
        The run was prepared without them (no waveform-domain augmentation).
    """
    path = waveforms_file(Path(features_path).parent)
    if not path.is_file():
        raise DataError(f"{path} does not exist: the run was prepared without waveforms")
    return np.load(path, mmap_mode="r", allow_pickle=False)


def default_run_dir() -> Path:
    """``runs/<timestamp>`` under the working directory.

    :func:`claim_run_dir` adds a suffix when two runs start in the same second.
    """
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def claim_run_dir(cfg: SimConfig, run_dir: Path | None = None) -> Path:
    """Make the run folder this run's own and write its ``run.json``; return the folder.

    Parameters
    ----------
    cfg : SimConfig
        ``out`` (None: a new ``runs/<timestamp>[-N]``), ``overwrite``, and ``resume`` (the
        folder of an interrupted run, used as it is: no run is removed, ``run.json`` kept).
    run_dir : Path, optional
        The folder to use instead of ``cfg.out``.

    Raises
    ------
    FedspeechError
        The folder cannot be created or written, is a file, or holds a run (see
        :func:`holds_run`) and ``cfg.overwrite`` is false.
    """
    with claimed_run_dir(cfg, run_dir) as path:
        return path


@contextmanager
def claimed_run_dir(cfg: SimConfig, run_dir: Path | None = None) -> Iterator[Path]:
    """:func:`claim_run_dir` for a block that fills the folder.

    If the block fails and the folder was created here, it is removed again: it holds
    nothing but a half-prepared ``data/``, and a failed run should not leave empty
    timestamp folders behind. A folder that existed before is left alone.
    """
    if cfg.resume is not None:
        # A resumed run continues in its own folder: nothing is removed, run.json is kept.
        yield _resumed_dir(Path(cfg.resume))
        return
    target = run_dir if run_dir is not None else cfg.out
    if target is None:
        path, created = _new_timestamp_dir(), True
    else:
        path = Path(target)
        created = _make_dir(path)
        if not created:
            _take_over(path, cfg.overwrite)
    try:
        write_run_info(path)
        yield path
    except BaseException:
        if created:
            shutil.rmtree(path, ignore_errors=True)
        raise


def holds_run(path: Path) -> bool:
    """Whether ``path`` holds (part of) a run (any of :data:`RUN_MARKERS`)."""
    return any((path / name).exists() for name in RUN_MARKERS)


def remove_run(path: Path) -> None:
    """Remove a run's own entries (:data:`RUN_ENTRIES`) from ``path``; keep anything else."""
    for name in RUN_ENTRIES:
        entry = path / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif entry.exists() or entry.is_symlink():
            entry.unlink()


def _take_over(path: Path, overwrite: bool) -> None:
    """Use the existing folder ``path``: refuse it if it holds a run, unless ``overwrite``."""
    if not holds_run(path):
        return
    if not overwrite:
        raise FedspeechError(
            f"--out {path} holds a run; use --overwrite to replace it or --resume {path} "
            "to continue it"
        )
    try:
        remove_run(path)
    except OSError as exc:
        raise FedspeechError(f"cannot remove the old run in {path}: {_reason(exc)}") from None


def _resumed_dir(path: Path) -> Path:
    """The folder of a run to resume (``--resume``); it must hold a run."""
    if not path.is_dir():
        raise FedspeechError(f"--resume {path}: no such run folder")
    if not holds_run(path):
        raise FedspeechError(f"--resume {path}: the folder holds no run")
    return path


def _make_dir(path: Path) -> bool:
    """Create ``path`` (and its parents); False if it is already a folder.

    Raises
    ------
    FedspeechError
        ``path`` or one of its parents is a file, or the folder cannot be created.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        # mkdir(exist_ok=True) raises this only for an existing file in the way.
        raise FedspeechError(
            f"cannot create run folder {path}: {exc.filename} is not a folder"
        ) from None
    except OSError as exc:
        raise FedspeechError(f"cannot create run folder {path}: {_reason(exc)}") from None
    try:
        path.mkdir()
    except FileExistsError:
        if path.is_dir():
            return False
        raise FedspeechError(f"run folder {path} is a file, not a folder") from None
    except OSError as exc:
        raise FedspeechError(f"cannot create run folder {path}: {_reason(exc)}") from None
    return True


def _new_timestamp_dir() -> Path:
    """Create ``runs/<timestamp>``, or ``<timestamp>-1``, ``-2``, ... if taken.

    ``mkdir`` fails if the folder exists, so two runs started in the same second (even in
    two processes) never share a folder.
    """
    base = default_run_dir()
    for n in range(_MAX_SUFFIX):
        path = base if n == 0 else base.with_name(f"{base.name}-{n}")
        if _make_dir(path):
            return path
    raise FedspeechError(f"no free run folder {base}-N (tried {_MAX_SUFFIX}); use --out")


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def write_run_info(path: Path) -> None:
    """Write ``path/run.json``: command line, versions, source commit, start time, host.

    Raises
    ------
    FedspeechError
        The folder is not writable.
    """
    try:
        atomic_write_json(path / RUN_INFO, run_info(), indent=1)
    except OSError as exc:
        raise FedspeechError(f"cannot write to run folder {path}: {_reason(exc)}") from None


def run_info() -> dict[str, Any]:
    """What ``run.json`` records about the process starting a run."""
    return {
        "argv": redact_argv(sys.argv),
        "versions": versions(),
        "git_commit": source_commit(),
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
    }


#: Options whose value is a credential: under ``flwr run`` the ServerApp's process is
#: ``flwr-simulation --token SECRET ...``, and run folders are meant to be shared.
SECRET_OPTIONS = ("--token",)


def redact_argv(argv: list[str]) -> list[str]:
    """``argv`` with the value of every :data:`SECRET_OPTIONS` option replaced by ``***``.

    >>> redact_argv(["flwr-simulation", "--token", "abc", "--insecure", "--token=xyz"])
    ['flwr-simulation', '--token', '***', '--insecure', '--token=***']
    """
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append("***")
            hide_next = False
        elif arg in SECRET_OPTIONS:
            out.append(arg)
            hide_next = True
        elif arg.split("=", 1)[0] in SECRET_OPTIONS and "=" in arg:
            out.append(arg.split("=", 1)[0] + "=***")
        else:
            out.append(arg)
    return out


def versions() -> dict[str, str | None]:
    """Versions of fedspeech, Python and the libraries behind a run's numbers.

    Read from the installed packages' metadata, so Flower and Ray are not imported here.
    """
    out: dict[str, str | None] = {
        "fedspeech": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    for dist in ("flwr", "ray"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def source_commit(timeout: float = 2.0) -> str | None:
    """The git commit of the fedspeech source tree, or None (not a git checkout, no git).

    None too when the package folder sits inside some other repository without being part
    of it (an installed copy in a virtual environment inside a checkout, say).
    """
    package = Path(__file__).resolve().parents[1]
    commands = (["git", "ls-files", "--error-unmatch", "__init__.py"], ["git", "rev-parse", "HEAD"])
    try:
        results = [
            subprocess.run(
                cmd, cwd=package, capture_output=True, text=True, timeout=timeout, check=True
            )
            for cmd in commands
        ]
    except (OSError, subprocess.SubprocessError):
        return None
    commit = results[-1].stdout.strip()
    return commit or None


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
    "RUN_ENTRIES",
    "RUN_INFO",
    "RUN_MARKERS",
    "RunData",
    "claim_run_dir",
    "claimed_run_dir",
    "compute_features",
    "default_run_dir",
    "domains_file",
    "holds_run",
    "open_domains",
    "open_waveforms",
    "waveforms_file",
    "open_features",
    "open_partition",
    "peak_normalize",
    "remove_run",
    "run_info",
    "source_commit",
    "versions",
    "write_run_info",
]
