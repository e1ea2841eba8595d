"""Model files: the global model a run writes, and the weights a run or an evaluation starts from.

A **model file** is a safetensors file of a model's ``state_dict`` whose metadata names the
model and how to rebuild it (``model``, ``model_kwargs`` as JSON) and, for a run's
``model.safetensors``, the round it was saved after and the run's settings. Safetensors
holds tensors only: reading one executes nothing.

:func:`load_weights` fills a built model from any of three sources, strictly (a missing or
unexpected key, or a shape that differs, is an error naming it):

* a model file (``.safetensors``), which must name the same model;
* a run folder: its ``model.safetensors``;
* a published AASIST or AASIST-L ``.pth`` (a pickle container, read with
  ``torch.load(..., weights_only=True)``, which refuses anything but tensors), through the
  key map of :mod:`fedspeech.models.reference`.

Examples
--------
>>> import tempfile, torch
>>> from pathlib import Path
>>> from fedspeech.models import build_model
>>> net = build_model("kws-cnn", num_classes=10)
>>> path = Path(tempfile.mkdtemp()) / "model.safetensors"
>>> _ = save_model_file(path, net.state_dict(), {"model": "kws-cnn"})
>>> other = build_model("kws-cnn", num_classes=10)
>>> load_weights(other, "kws-cnn", path)["model"]
'kws-cnn'
>>> all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), other.state_dict().values()))
True
"""

from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import nn

from fedspeech.errors import ConfigError, DataError
from fedspeech.fileio import atomic_write_bytes

__all__ = [
    "MODEL_FILE",
    "REFERENCE_MODELS",
    "check_weights_file",
    "load_strict",
    "load_weights",
    "read_model_file",
    "read_model_meta",
    "read_pth",
    "resolve_weights_path",
    "save_model_file",
]

#: The global model of a run after its last completed round, relative to the run folder.
MODEL_FILE = "model.safetensors"
#: Models whose published ``.pth`` checkpoints can be read (:mod:`fedspeech.models.reference`).
REFERENCE_MODELS = ("aasist", "aasist-l")


def save_model_file(
    path: Path, weights: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> Path:
    """Write ``weights`` with ``meta`` atomically (values kept if strings, else as JSON)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    text = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    atomic_write_bytes(Path(path), save(tensors, metadata=text))
    return Path(path)


def read_model_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the metadata of a model file.

    Raises
    ------
    DataError
        The file cannot be read or is not a safetensors file (e.g. truncated).
    """
    try:
        data = Path(path).read_bytes()
        weights = load(data)
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size])
    except (OSError, SafetensorError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{path}: not a readable safetensors model file (truncated or another format: "
            f"{type(exc).__name__})"
        ) from None
    meta = header.get("__metadata__") or {}
    return weights, {str(k): str(v) for k, v in meta.items()}


def resolve_weights_path(path: str | Path) -> Path:
    """``path`` itself, or a run folder's :data:`MODEL_FILE`.

    Raises
    ------
    ConfigError
        Nothing there, or a folder without a saved model.
    """
    p = Path(path)
    if p.is_dir():
        if not (p / MODEL_FILE).is_file():
            raise ConfigError(
                f"{p} is a folder without {MODEL_FILE} (not a run, or no round ended)"
            )
        return p / MODEL_FILE
    if not p.is_file():
        raise ConfigError(f"no such weights file or run folder: {p}")
    return p


def check_weights_file(path: str | Path, name: str) -> Path:
    """What can be checked of ``--init-weights`` before any model is built; the file's path.

    The path exists (a run folder must hold :data:`MODEL_FILE`); a ``.pth`` is only for a
    model with a published checkpoint; a model file's header names the model ``name``.
    The keys and shapes are checked by :func:`load_weights`.

    Raises
    ------
    ConfigError, DataError
        As :func:`load_weights`, for what the header shows.
    """
    p = resolve_weights_path(path)
    if p.suffix == ".pth":
        _check_reference(p, name)
        read_pth(p)
        return p
    saved = read_model_meta(p).get("model")
    if saved is not None and saved != name:
        raise ConfigError(f"{p} holds a {saved!r} model, not {name!r} (--model)")
    return p


def read_pth(path: Path) -> dict[str, torch.Tensor]:
    """A ``.pth`` state dict, read with ``weights_only=True`` (nothing in it is executed).

    Raises
    ------
    DataError
        Truncated, not a checkpoint, a pickle that asks for code, or not a dict of tensors.
    """
    try:
        with warnings.catch_warnings():
            # A pickle of another protocol than torch.save's: refused or read, not news.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's message suggests weights_only=False: never, for a file from elsewhere.
        raise DataError(
            f"{path}: refused: it holds objects other than tensors (weights_only=True; "
            "nothing in it was executed)"
        ) from None
    except Exception as exc:  # torch raises many kinds (RuntimeError, EOFError, ...)
        raise DataError(
            f"{path}: not a readable checkpoint (truncated or not torch.save's format: "
            f"{type(exc).__name__})"
        ) from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()
    ):
        raise DataError(f"{path}: not a state dict (a mapping of names to tensors)")
    return data


def _check_reference(p: Path, name: str) -> None:
    if name not in REFERENCE_MODELS:
        raise ConfigError(
            f"{p}: a .pth is read only as a published checkpoint of "
            f"{' or '.join(REFERENCE_MODELS)}, not of {name!r}; give a .safetensors model file"
        )


def read_model_meta(p: Path) -> dict[str, str]:
    """A model file's metadata, from its header alone (no tensor is read).

    Raises
    ------
    DataError
        The file cannot be read or its header is not safetensors'.
    """
    try:
        with open(p, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 0 < size <= 100_000_000:
                raise ValueError(f"header length {size}")
            header = json.loads(fh.read(size))
        meta = header.get("__metadata__") or {}
    except (OSError, ValueError, UnicodeDecodeError, AttributeError) as exc:
        raise DataError(
            f"{p}: not a readable safetensors model file (truncated or another format: "
            f"{type(exc).__name__})"
        ) from None
    return {str(k): str(v) for k, v in meta.items()}


def load_weights(model: nn.Module, name: str, path: str | Path) -> dict[str, str]:
    """Fill ``model`` (built as ``name``) from ``path``, strictly; return the file's metadata.

    Parameters
    ----------
    model : nn.Module
        The model to fill, in place.
    name : str
        Its registered name; a model file must name the same one.
    path : str or Path
        A model file, a run folder, or a published AASIST/AASIST-L ``.pth``.

    Raises
    ------
    ConfigError
        A file of another model, a key missing or unexpected, a shape that differs, a
        ``.pth`` for a model without a published checkpoint.
    DataError
        An unreadable or malformed file.
    """
    p = resolve_weights_path(path)
    if p.suffix == ".pth":
        _check_reference(p, name)
        from fedspeech.models.reference import load_reference_weights

        load_reference_weights(model, p, name)
        return {"model": name, "source": p.name}
    weights, meta = read_model_file(p)
    saved = meta.get("model")
    if saved is not None and saved != name:
        raise ConfigError(f"{p} holds a {saved!r} model, not {name!r}")
    load_strict(model, weights, str(p))
    return meta


def load_strict(model: nn.Module, weights: Mapping[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(weights)``, with one line naming what does not fit.

    Raises
    ------
    ConfigError
        Keys missing or unexpected, or shapes that differ (the first few named).
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in weights and weights[k].shape != own[k].shape
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            problems.append(f"{label} {', '.join(repr(i) for i in items[:3])}{more}")
    if problems:
        raise ConfigError(f"{source} does not fit the model: {'; '.join(problems)}")
    model.load_state_dict(dict(weights))
