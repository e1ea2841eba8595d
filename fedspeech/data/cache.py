"""Built corpora cached on disk: where they live, and whether a build is finished.

A corpus builder (:func:`fedspeech.data.synth.synthesize_corpus`,
:func:`fedspeech.data.spoof.build_spoof_corpus`) writes its files into a temporary folder,
then :func:`mark_complete` (the build parameters as JSON in ``<root>/.complete``, written
last), then renames the folder into place; :func:`is_complete` tells a finished build with
the same parameters from an unfinished one and refuses one built with other parameters.

Examples
--------
>>> import tempfile
>>> root = Path(tempfile.mkdtemp())
>>> is_complete(root, {"seed": 0}, "toy corpus")
False
>>> mark_complete(root, {"seed": 0})
>>> is_complete(root, {"seed": 0}, "toy corpus")
True
>>> is_complete(root, {"seed": 1}, "toy corpus")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
fedspeech.errors.DataError: ... holds a toy corpus built with other parameters: {'seed': 0}
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedspeech.errors import DataError
from fedspeech.fileio import atomic_write_json

MARKER = ".complete"


def cache_dir() -> Path:
    """Root of fedspeech's caches: ``$FEDSPEECH_CACHE`` or ``~/.cache/fedspeech``."""
    env = os.environ.get("FEDSPEECH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fedspeech"


def mark_complete(root: Path, params: Mapping[str, Any]) -> None:
    """Write the build parameters into ``root/.complete``: the last file of a build."""
    atomic_write_json(Path(root) / MARKER, dict(params), sort_keys=True)


def is_complete(root: Path, params: Mapping[str, Any], what: str) -> bool:
    """Whether ``root`` holds a finished build made with ``params``.

    Parameters
    ----------
    root : Path
        The corpus folder.
    params : Mapping[str, Any]
        The build parameters (JSON values), as :func:`mark_complete` wrote them.
    what : str
        What the folder holds ("synthetic corpus"), for the error message.

    Raises
    ------
    DataError
        ``root`` holds a finished build made with other parameters (or an unreadable marker).
    """
    marker = Path(root) / MARKER
    if not marker.is_file():
        return False
    try:
        found = json.loads(marker.read_text())
    except (OSError, ValueError):
        found = None
    if found != params:
        raise DataError(f"{root} holds a {what} built with other parameters: {found}")
    return True


__all__ = ["MARKER", "cache_dir", "is_complete", "mark_complete"]
