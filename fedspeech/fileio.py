"""Atomic file writes: a reader never sees a half-written result."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: str, path: Path) -> None:
    # mkstemp creates files 0600; results should get the user's usual permissions.
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename."""
    atomic_write_with(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def clean_json(obj: Any) -> Any:
    """``obj`` with NaN and infinities replaced by None (strict JSON has neither).

    Mappings (keys as strings), lists and tuples are cleaned recursively; numpy scalars
    become Python numbers.

    Examples
    --------
    >>> clean_json({"loss": float("nan"), "acc": [0.5, float("inf")]})
    {'loss': None, 'acc': [0.5, None]}
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, np.generic):
        return clean_json(obj.item())
    return obj


def atomic_write_json(
    path: Path, obj: Any, *, indent: int | None = None, sort_keys: bool = False
) -> None:
    """Write ``obj`` as strict JSON, atomically: NaN and infinities become ``null``.

    Python's ``json`` writes ``NaN`` and ``Infinity`` by default, which other readers
    (``jq``, JavaScript, most JSON libraries) reject; ``allow_nan=False`` makes any such
    value that :func:`clean_json` missed an error here rather than a broken file.
    """
    text = json.dumps(clean_json(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)
    atomic_write_text(path, text + "\n")


def atomic_write_with(path: Path, write: Callable[[str], Any], suffix: str = ".tmp") -> Path:
    """Let ``write(tmp_path)`` create the file at a temporary path, then rename it to ``path``.

    For writers that take a file name (``np.save``, ``safetensors.torch.save_file``): they
    write straight to disk, without first building the whole file in memory. The temporary
    file is removed if ``write`` fails or is interrupted.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` through a temporary file and a rename."""
    # The suffix keeps np.save from appending ".npy" to the temporary name.
    atomic_write_with(path, lambda tmp: np.save(tmp, array, allow_pickle=False), suffix=".npy")


def publish_dir(tmp: Path, root: Path, already_complete: Callable[[], bool]) -> None:
    """Rename a fully built folder ``tmp`` to ``root``.

    If another process published the same build first (the rename fails and
    ``already_complete()`` is true), its copy is kept and ``tmp`` is removed.
    """
    try:
        os.replace(tmp, root)
    except OSError:
        if not already_complete():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_save_figure(fig: Any, path: Path, **savefig: Any) -> Path:
    """Render a matplotlib figure to PNG in memory, then write it atomically.

    ``savefig`` goes to :meth:`matplotlib.figure.Figure.savefig` (``dpi``, ``bbox_inches``).
    The figure is not closed (a pyplot figure still needs ``plt.close``).
    """
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig)
    atomic_write_bytes(path, buf.getvalue())
    return path
