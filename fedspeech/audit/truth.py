"""The truth side of an audit: what the clients really said, rebuilt from the run folder.

Only scoring reads it, never the attack. For a feature-model run :class:`Truth` reloads the
corpus from ``RUN/config.toml`` (peak-normalised as the run was) beside the true features
``RUN/data/features.npy``; for a raw-waveform run (``--task sdd``) :class:`WaveTruth`
reads the clips the clients trained on from ``RUN/data/`` itself. ``RUN/truth/<name>.json``
names the clips behind each capture (:meth:`Truth.positions`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from fedspeech.capture import CaptureFormatError, load_truth
from fedspeech.config import SimConfig, read_toml
from fedspeech.errors import FedspeechError
from fedspeech.frontends import build_frontend
from fedspeech.tasks.kws import resolve_corpus
from fedspeech.tasks.prepare import peak_normalize

__all__ = ["Truth", "WaveTruth", "is_waveform_run"]


def is_waveform_run(run_dir: Path) -> bool:
    """True for a ``--task sdd`` run: its models read raw waveforms."""
    config = run_dir / "config.toml"
    return config.is_file() and read_toml(config).get("task") == "sdd"


class Truth:
    """A feature-model run's corpus: original clips, labels, speakers, true features.

    Parameters
    ----------
    run_dir : Path
        The run folder (with ``config.toml``, ``data/features.npy`` and ``truth/``).
    frontend, frontend_kwargs : str, mapping
        The front-end of the captures (the content classifier listens through it).
    note : callable
        One-line progress notes.

    Attributes
    ----------
    features : np.ndarray
        ``(N, F, T)`` the run's features (memory-mapped).
    labels : np.ndarray
        ``(N,)`` int64.
    clip_ids, speakers : list[str]
        Per clip.
    train : np.ndarray
        Positions of the train-split clips (the judges are fitted on them).
    frontend : nn.Module or None
        Built from ``frontend`` and ``frontend_kwargs``; None for a raw-waveform run.

    Raises
    ------
    FedspeechError
        A missing file, or a dataset that changed since the run.
    """

    waveform = False

    def __init__(
        self,
        run_dir: Path,
        frontend: str,
        frontend_kwargs: dict[str, Any],
        note: Callable[[str], None],
    ) -> None:
        self.run_dir = run_dir
        cfg_path = run_dir / "config.toml"
        feat_path = run_dir / "data" / "features.npy"
        for needed in (cfg_path, feat_path):
            if not needed.is_file():
                raise FedspeechError(
                    f"run folder {run_dir} has truth/ but no {needed.name} "
                    f"({needed}); scoring needs it"
                )
        cfg = SimConfig.from_toml(cfg_path).updated({"progress": False})
        try:
            self.features = np.load(feat_path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise FedspeechError(f"cannot read {feat_path} ({exc})") from None
        note(f"scoring: loading the {cfg.dataset} corpus")
        corpus = resolve_corpus(cfg)
        if len(corpus) != self.features.shape[0]:
            raise FedspeechError(
                f"the {cfg.dataset} dataset changed since the run: {len(corpus)} clips now, "
                f"{self.features.shape[0]} in {feat_path}"
            )
        # Normalised on access, clip by clip (the gain is per clip): no second corpus copy.
        self._waves = corpus.waveforms
        self._normalize = peak_normalize if cfg.normalize == "peak" else None
        self.labels = np.asarray(corpus.labels, dtype=np.int64)
        self.clip_ids = list(corpus.clip_ids)
        self.speakers = [str(s) for s in corpus.speakers]
        self.train = np.array(
            [i for i, s in enumerate(corpus.split) if s == "train"], dtype=np.int64
        )
        self.frontend_name = frontend
        self.frontend_kwargs = dict(frontend_kwargs)
        self.frontend: nn.Module | None = build_frontend(frontend, **self.frontend_kwargs)

    @property
    def clip_samples(self) -> int:
        """Samples per clip."""
        return int(self._waves.shape[1])

    def waves(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """Original clips ``(n, samples)`` float32 at ``positions``, as the run heard them."""
        x = np.asarray(self._waves[np.asarray(positions, dtype=np.int64)], dtype=np.float32)
        return self._normalize(x) if self._normalize is not None else x

    def positions(self, name: str) -> list[int]:
        """Corpus positions behind capture ``name`` (distinct, first-seen order), checked.

        Raises
        ------
        CaptureFormatError
            Its ``truth/<name>.json`` is missing, malformed or lists no clips.
        FedspeechError
            A clip there is not the corpus's clip at that position any more.
        """
        truth = load_truth(self.run_dir / "truth" / f"{name}.json")
        positions: list[int] = []
        try:
            for batch in truth["batches"]:
                for pos, clip in zip(batch["positions"], batch["clip_ids"], strict=True):
                    pos = int(pos)
                    if not 0 <= pos < len(self.clip_ids) or self.clip_ids[pos] != clip:
                        have = self.clip_ids[pos] if 0 <= pos < len(self.clip_ids) else "nothing"
                        raise FedspeechError(
                            f"the dataset changed since the run: truth of {name} has clip "
                            f"{clip!r} at position {pos}, the corpus now {have!r}"
                        )
                    if pos not in positions:
                        positions.append(pos)
        except (KeyError, TypeError, ValueError) as exc:
            raise CaptureFormatError(f"ground truth of {name} is malformed ({exc})") from None
        if not positions:
            raise CaptureFormatError(f"ground truth of {name} lists no clips")
        return positions


class WaveTruth(Truth):
    """The truth side of a raw-waveform (``--task sdd``) run: the clips the run trained on.

    The run's ``data/features.npy`` holds the waveforms themselves, exactly as the clients
    read them, so nothing is reloaded and no stage 2 ceiling exists (a perfect stage 1 is
    the clip). It has no front-end, so the speaker and content judges do not apply.
    """

    waveform = True

    def __init__(self, run_dir: Path) -> None:
        data = run_dir / "data"
        self.run_dir = run_dir
        try:
            self.features = np.load(data / "features.npy", mmap_mode="r", allow_pickle=False)
            self.labels = np.load(data / "labels.npy", allow_pickle=False).astype(np.int64)
            index = json.loads((data / "index.json").read_text())
            self.clip_ids = [str(c) for c in index["clip_ids"]]
            self.speakers = [str(s) for s in index["speakers"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FedspeechError(
                f"run folder {run_dir} has truth/ but its data/ cannot be read ({exc}); "
                "scoring needs data/features.npy, labels.npy and index.json"
            ) from None
        if not len(self.clip_ids) == len(self.labels) == self.features.shape[0]:
            raise FedspeechError(f"{data} is inconsistent: its files list different clip counts")
        self.train = np.zeros(0, dtype=np.int64)
        self.frontend = None

    @property
    def clip_samples(self) -> int:
        """Samples per clip."""
        return int(self.features.shape[1])

    def waves(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """The clips ``(n, samples)`` float32 at ``positions``."""
        return np.asarray(self.features[np.asarray(positions, dtype=np.int64)], dtype=np.float32)
