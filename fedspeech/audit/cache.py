"""The audit's resume files: each capture's stage-1 result and scored rows, keyed.

``audit/reconstructions/<name>.safetensors`` holds what stage 1 recovered and
``audit/samples/<name>.json`` the scored rows; each records the settings it was made with
(:meth:`~fedspeech.audit.AuditSettings.stage1_key`,
:meth:`~fedspeech.audit.AuditSettings.scoring_key`) and the capture's digest, so a file
made from other settings or another capture is ignored and made again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save

from fedspeech.audit.outputs import FF_PREFIX
from fedspeech.audit.selection import Job
from fedspeech.fileio import atomic_write_bytes

__all__ = [
    "Stage1Result",
    "load_scored",
    "load_stage1",
    "read_json",
    "restore_row",
    "save_stage1",
    "stage1_path",
]


@dataclass
class Stage1Result:
    """What stage 1 produced for one capture (saved under ``reconstructions/``)."""

    features: np.ndarray  # (B, F, T) float32
    labels: np.ndarray  # (B,) int64, recovered
    matching_loss: float
    iterations: int
    restarts_run: int
    seconds: float

    @classmethod
    def from_reconstruction(cls, rec: Any) -> Stage1Result:
        """From an :class:`attacks.features.Reconstruction`."""
        return cls(
            features=rec.features.detach().cpu().numpy().astype(np.float32),
            labels=rec.labels.detach().cpu().numpy().astype(np.int64),
            matching_loss=float(rec.matching_loss),
            iterations=int(rec.iterations),
            restarts_run=int(rec.restarts_run),
            seconds=float(rec.seconds),
        )


def stage1_path(out: Path, job: Job) -> Path:
    """Where the stage-1 result of ``job`` is kept."""
    return out / "reconstructions" / f"{job.name}.safetensors"


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def load_scored(out: Path, job: Job, key: Mapping[str, Any]) -> dict[str, Any] | None:
    """The saved results of ``job`` if they were made from this capture with ``key``."""
    data = read_json(out / "samples" / f"{job.name}.json")
    if data is None or data.get("key") != key or data.get("digest") != job.digest:
        return None
    if not isinstance(data.get("rows"), list):
        return None
    return data


def save_stage1(path: Path, job: Job, key: Mapping[str, Any], s1: Stage1Result) -> None:
    """Keep ``job``'s stage-1 result, made with ``key``, at ``path`` (atomically)."""
    meta = {
        "key": json.dumps(key, sort_keys=True),
        "digest": job.digest,
        "frontend": job.frontend,
        "frontend_kwargs": json.dumps(job.frontend_kwargs),
        "matching_loss": repr(float(s1.matching_loss)),
        "iterations": str(int(s1.iterations)),
        "restarts_run": str(int(s1.restarts_run)),
        "seconds": repr(float(s1.seconds)),
    }
    tensors = {
        "features": torch.from_numpy(np.ascontiguousarray(s1.features, dtype=np.float32)),
        "labels": torch.from_numpy(np.ascontiguousarray(s1.labels, dtype=np.int64)),
    }
    atomic_write_bytes(path, save(tensors, metadata=meta))


def load_stage1(path: Path, job: Job, key: Mapping[str, Any]) -> Stage1Result | None:
    """A saved reconstruction of ``job`` made with ``key``, or None."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("key") != json.dumps(key, sort_keys=True):
                return None
            if meta.get("digest") != job.digest:
                return None
            features = fh.get_tensor("features").numpy()
            labels = fh.get_tensor("labels").numpy()
        return Stage1Result(
            features=features,
            labels=labels,
            matching_loss=float(meta["matching_loss"]),
            iterations=int(meta["iterations"]),
            restarts_run=int(meta["restarts_run"]),
            seconds=float(meta["seconds"]),
        )
    except Exception:  # a damaged cache file is recomputed, never fatal
        return None


def restore_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row read back from JSON: null -> NaN for the float metrics."""
    out = dict(row)
    floats = {"f_mse", "w_mse", "pesq_nb", "pesq_wb", "stoi", "speaker_cosine", "matching_loss"}
    for key in list(out):
        bare = key[len(FF_PREFIX) :] if key.startswith(FF_PREFIX) else key
        if bare in floats and out[key] is None:
            out[key] = float("nan")
    return out
