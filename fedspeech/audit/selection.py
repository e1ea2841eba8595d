"""Which captures an audit works on: :func:`find_captures` and the jobs made from them."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attacks.target import AttackTarget, target_from_capture
from fedspeech.audit.settings import AuditSettings
from fedspeech.capture import load_capture

__all__ = ["Job", "Selection", "file_digest", "find_captures", "load_target", "select_jobs"]

_NAME = re.compile(r"^r(\d+)_c(\d+)$")


@dataclass
class Job:
    """One selected capture.

    Attributes
    ----------
    name, path : str, Path
        File stem (``rNNN_cNNNN``) and path of the capture.
    server_round, client_id : int
        Whose reply it is.
    digest : str
        Hash of the file (:func:`file_digest`): resume files made from another file are stale.
    batch_size : int
        Samples behind it.
    frontend, frontend_kwargs : str, dict
        The front-end the model read (``"waveform"`` for a raw-waveform model).
    """

    name: str
    path: Path
    server_round: int
    client_id: int
    digest: str = ""
    batch_size: int = 0
    frontend: str = "mel"
    frontend_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Selection:
    """The captures an audit covers, and what earlier audits left of them.

    Attributes
    ----------
    jobs : list[Job]
        In ``rNNN_cNNNN`` order, up to ``max_samples``.
    done : dict[str, dict]
        Saved results (``samples/<name>.json``) of the jobs that need no work, by name.
    caveats : list[str]
        Why some gradients are only estimates (distinct notes of the captures loaded).
    samples : int
        Samples behind ``jobs``.
    """

    jobs: list[Job]
    done: dict[str, dict[str, Any]]
    caveats: list[str]
    samples: int


def find_captures(
    run_dir: Path, rounds: Sequence[int] | None = None, clients: Sequence[int] | None = None
) -> list[tuple[str, Path, int, int]]:
    """Captures of a run folder, optionally filtered, in ``rNNN_cNNNN`` order.

    Returns
    -------
    list of (name, path, round, client)
        Files under ``run_dir/captures/*.safetensors``. A file not named ``rNNN_cNNNN`` is
        opened to read its round and client.

    Raises
    ------
    CaptureFormatError
        A file not named ``rNNN_cNNNN`` that is not a readable capture.
    """
    folder = Path(run_dir) / "captures"
    found = []
    paths = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    for path in paths:
        if not path.is_file() or path.name.startswith("."):
            continue
        m = _NAME.match(path.stem)
        if m:
            rnd, cid = int(m.group(1)), int(m.group(2))
        else:
            cap = load_capture(path)
            rnd, cid = cap.server_round, cap.client_id
        if rounds is not None and rnd not in rounds:
            continue
        if clients is not None and cid not in clients:
            continue
        found.append((path.stem, path, rnd, cid))
    found.sort(key=lambda item: (item[2], item[3], item[0]))
    return found


def file_digest(path: Path) -> str:
    """BLAKE2b (16 bytes, hex) of a file's content."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_target(
    job: Job, dual_path: str = "expected", update_model: str = "unrolled"
) -> AttackTarget:
    """The attack target of a job's capture (``dual_path``, ``update_model``: see
    :class:`AuditSettings`)."""
    return target_from_capture(load_capture(job.path), job.name, dual_path, update_model)


def select_jobs(
    found: Sequence[tuple[str, Path, int, int]],
    settings: AuditSettings,
    saved: Callable[[Job], dict[str, Any] | None],
) -> Selection:
    """Jobs of the captures ``found``, each checked before any long computation.

    A capture without saved results (``saved(job)`` is None) is loaded now, so that one
    that is not a capture, or does not fit its model, fails before hours of stage 1.

    Raises
    ------
    CaptureFormatError
        A capture that cannot be read or does not fit its model.
    """
    selection = Selection([], {}, [], 0)
    for name, path, rnd, cid in found:
        if settings.max_samples is not None and selection.samples >= settings.max_samples:
            break
        job = Job(name, path, rnd, cid, digest=file_digest(path))
        done = saved(job)
        if done is not None:
            selection.done[name] = done
            job.batch_size = len(done["rows"])
        else:
            target = load_target(job, settings.dual_path, settings.update_model)
            job.batch_size = target.batch_size
            job.frontend, job.frontend_kwargs = target.frontend, dict(target.frontend_kwargs)
            if target.caveat and target.caveat not in selection.caveats:
                selection.caveats.append(target.caveat)
            del target
        selection.jobs.append(job)
        selection.samples += job.batch_size
    return selection
