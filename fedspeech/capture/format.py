"""The capture file format.

One capture is one client's reply in one round, exactly as the server received it, with the
global weights it was computed from. It is a single safetensors file: tensors
``global/<param>`` and ``shared/<param>``, and string metadata (kind, round, client id,
number of examples, model and front-end names and settings). Safetensors holds raw tensors
and JSON only, so loading a capture from an untrusted party cannot run code (pickle could).

The ground truth of a captured batch (clip ids, labels, speakers) is written beside it under
``truth/`` as JSON. Attack code never reads ``truth/``; only scoring does.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fedspeech.errors import FedspeechError

FORMAT_VERSION = "1"
KINDS = ("gradient", "update")
# The ``frontend`` of captures of raw-waveform models (``--task sdd``): no front-end, the
# model reads the waveform itself.
WAVEFORM = "waveform"


class CaptureFormatError(FedspeechError):
    """A capture file is missing, truncated, or not a fedspeech safetensors capture."""


# A capture may come from an untrusted party, and the attack builds a model from its
# metadata: sizes are bounded before anything is allocated from them.
#: Most bytes of a safetensors header (tensor table and metadata) that are read.
MAX_HEADER_BYTES = 100 * 2**20
#: Most bytes of all metadata strings together.
MAX_METADATA_BYTES = 2**20
#: Largest value of a model keyword argument (every element, for a list); the default
#: bounds keys not named here.
MODEL_KWARG_LIMITS: dict[str, float] = {
    "num_classes": 10_000,
    "num_samples": 16_000 * 60,  # a minute at 16 kHz
    "input_shape": 4096,
}
DEFAULT_KWARG_LIMIT = 1_000_000
#: Longest string value of a model keyword argument (names such as an activation).
MAX_KWARG_STRING = 64


@dataclass
class Capture:
    """One captured client reply.

    Attributes
    ----------
    kind : str
        ``"gradient"`` (one local step's gradient) or ``"update"`` (weights after training).
    server_round, client_id, num_examples : int
        When and from whom; examples the client trained on.
    global_weights : dict[str, torch.Tensor]
        The global model the client started from, by parameter name.
    shared : dict[str, torch.Tensor]
        What the client sent: gradients or trained weights, same names and shapes.
    model, frontend : str
        Registry names; ``model_kwargs`` and ``frontend_kwargs`` rebuild them.
    training : dict
        Local-training settings the server knows (``lr``, ``batch_size``, ``local_steps``,
        ``local_epochs``), needed to turn an update into a gradient estimate.
    """

    kind: str
    server_round: int
    client_id: int
    num_examples: int
    global_weights: dict[str, torch.Tensor]
    shared: dict[str, torch.Tensor]
    model: str
    frontend: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    frontend_kwargs: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def learning_rate(self) -> float:
        """The clients' learning rate in this capture's round (:func:`round_lr`).

        Raises
        ------
        CaptureFormatError
            No ``lr`` recorded, or an unknown schedule.
        """
        if "lr" not in self.training:
            raise CaptureFormatError("capture records no learning rate (training.lr)")
        return round_lr(
            float(self.training["lr"]),
            self.server_round,
            int(self.training.get("rounds", 1)),
            str(self.training.get("lr_schedule", "constant")),
            float(self.training.get("lr_min", 0.0)),
        )

    def local_steps(self) -> int | None:
        """Local SGD steps behind :attr:`shared`, as the capture records them.

        Returns
        -------
        int or None
            1 for a gradient (:func:`reply_steps`); for an update, the positive
            ``training["local_steps"]`` the server stored; None when that is 0 or absent (a
            run set by local epochs: the count then depends on the client's clip count).

        Raises
        ------
        CaptureFormatError
            A ``local_steps`` that is not a whole number.
        """
        value = self.training.get("local_steps", 0)
        try:
            recorded = int(float(value or 0))
        except (TypeError, ValueError):
            raise CaptureFormatError(
                f"capture r{self.server_round:03d}_c{self.client_id:04d} has a non-numeric "
                f"training setting local_steps={value!r}"
            ) from None
        steps = reply_steps(self.kind, recorded)
        return steps if steps > 0 else None

    def nbytes(self) -> int:
        """Bytes of tensor data held (global weights plus shared tensors)."""
        tensors = list(self.global_weights.values()) + list(self.shared.values())
        return sum(t.numel() * t.element_size() for t in tensors)


def reply_steps(kind: str, local_steps: int) -> int:
    """Local SGD steps behind one client reply of ``kind``: a shared gradient is one step.

    The single statement of that rule, for whoever needs the count (the client choosing its
    batches, the server replaying them and recording the count in each capture, the attack
    turning an update into a gradient). ``local_steps`` is the run's setting, 0 when the
    steps follow from local epochs instead.

    Examples
    --------
    >>> reply_steps("gradient", 0), reply_steps("update", 10), reply_steps("update", 0)
    (1, 10, 0)
    """
    return 1 if kind == "gradient" else int(local_steps)


#: Client learning-rate schedules over the rounds of a run (``--lr-schedule``).
LR_SCHEDULES = ("constant", "cosine")


def round_lr(
    lr: float, server_round: int, rounds: int, schedule: str, lr_min: float = 0.0
) -> float:
    """The clients' learning rate in ``server_round`` (1-based) of a run of ``rounds``.

    ``constant``: ``lr``. ``cosine``: annealed from ``lr`` in round 1 to ``lr_min`` in the
    last round, ``lr_min + (lr − lr_min)(1 + cos(π (r − 1) / (R − 1))) / 2`` (SGDR's cosine
    annealing, Loshchilov and Hutter, ICLR 2017, one step per round). The single statement of
    the rule, for the client that trains and the attack that turns an update into a gradient.

    Examples
    --------
    >>> [round(round_lr(1.0, r, 3, "cosine", 0.1), 3) for r in (1, 2, 3)]
    [1.0, 0.55, 0.1]
    >>> round_lr(0.5, 7, 10, "constant")
    0.5
    """
    if schedule == "constant" or rounds <= 1:
        return float(lr)
    if schedule != "cosine":
        raise CaptureFormatError(
            f"unknown learning-rate schedule {schedule!r}; known: {', '.join(LR_SCHEDULES)}"
        )
    progress = min(max(server_round - 1, 0), rounds - 1) / (rounds - 1)
    return float(lr_min + (lr - lr_min) * (1 + math.cos(math.pi * progress)) / 2)


def capture_name(server_round: int, client_id: int) -> str:
    """File stem of a capture: ``r003_c0017``."""
    return f"r{server_round:03d}_c{client_id:04d}"


def save_capture(capture: Capture, path: Path) -> Path:
    """Write ``capture`` to ``path`` atomically (temporary file, then rename)."""
    from fedspeech.fileio import atomic_write_with

    if capture.kind not in KINDS:
        raise ValueError(f"capture kind must be one of {KINDS}, got {capture.kind!r}")
    tensors: dict[str, torch.Tensor] = {}
    for name, t in capture.global_weights.items():
        tensors[f"global/{name}"] = t.detach().cpu().contiguous()
    for name, t in capture.shared.items():
        tensors[f"shared/{name}"] = t.detach().cpu().contiguous()
    meta = {
        "format": "fedspeech-capture",
        "version": FORMAT_VERSION,
        "kind": capture.kind,
        "round": str(capture.server_round),
        "client_id": str(capture.client_id),
        "num_examples": str(capture.num_examples),
        "model": capture.model,
        "frontend": capture.frontend,
        "model_kwargs": json.dumps(capture.model_kwargs),
        "frontend_kwargs": json.dumps(capture.frontend_kwargs),
        "training": json.dumps(capture.training),
        "param_order": json.dumps(list(capture.global_weights)),
    }
    # Straight to disk (a temporary file, then a rename): no copy of the file in memory.
    return atomic_write_with(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_capture(path: str | Path) -> Capture:
    """Read a capture written by :func:`save_capture`.

    Raises
    ------
    CaptureFormatError
        If the file is missing, truncated, not safetensors, or lacks fedspeech metadata.
    """
    p = Path(path)
    if not p.is_file():
        raise CaptureFormatError(f"capture {p} does not exist")
    meta = _read_metadata(p)
    if meta.get("format") != "fedspeech-capture":
        raise CaptureFormatError(f"capture {p} has no fedspeech capture metadata")
    try:
        tensors = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CaptureFormatError(
            f"capture {p} is not a readable safetensors file ({exc})"
        ) from None
    try:
        order = json.loads(meta["param_order"])
        glob = {n: tensors[f"global/{n}"] for n in order}
        shared = {n: tensors[f"shared/{n}"] for n in order if f"shared/{n}" in tensors}
        return Capture(
            kind=meta["kind"],
            server_round=int(meta["round"]),
            client_id=int(meta["client_id"]),
            num_examples=int(meta["num_examples"]),
            global_weights=glob,
            shared=shared,
            model=meta["model"],
            frontend=meta["frontend"],
            model_kwargs=check_model_kwargs(json.loads(meta["model_kwargs"]), p),
            frontend_kwargs=json.loads(meta["frontend_kwargs"]),
            training=json.loads(meta["training"]),
        )
    except (KeyError, ValueError) as exc:
        raise CaptureFormatError(f"capture {p} has incomplete metadata ({exc})") from None


def load_training(path: str | Path) -> dict[str, Any]:
    """A capture's local-training settings (``Capture.training``), from its header alone.

    Reads the metadata, not the tensors: what the audit needs to know of a run's defense.

    Raises
    ------
    CaptureFormatError
        As :func:`load_capture` for a missing or unreadable file or bad metadata.
    """
    p = Path(path)
    if not p.is_file():
        raise CaptureFormatError(f"capture {p} does not exist")
    meta = _read_metadata(p)
    try:
        training = json.loads(meta["training"])
    except (KeyError, ValueError) as exc:
        raise CaptureFormatError(f"capture {p} has incomplete metadata ({exc})") from None
    if not isinstance(training, dict):
        raise CaptureFormatError(f"capture {p} has malformed training settings")
    return training


def _read_metadata(p: Path) -> dict[str, str]:
    """The string metadata of a safetensors file, its size bounded.

    Raises
    ------
    CaptureFormatError
        An unreadable or oversized header, or metadata over :data:`MAX_METADATA_BYTES`.
    """
    try:
        with open(p, "rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            if header_len > MAX_HEADER_BYTES:
                raise CaptureFormatError(
                    f"capture {p} is not a readable safetensors file (its header would be "
                    f"{header_len} bytes, more than the {MAX_HEADER_BYTES} a capture may have)"
                )
            header = json.loads(fh.read(header_len))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CaptureFormatError(
            f"capture {p} is not a readable safetensors file ({exc})"
        ) from None
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CaptureFormatError(f"capture {p} has malformed metadata (not a table of strings)")
    size = sum(len(k.encode()) + len(v.encode()) for k, v in meta.items())
    if size > MAX_METADATA_BYTES:
        raise CaptureFormatError(
            f"capture {p} has {size} bytes of metadata, more than the {MAX_METADATA_BYTES} "
            "a capture may have"
        )
    return meta


def check_model_kwargs(kwargs: Any, path: Path | str = "capture") -> dict[str, Any]:
    """``kwargs`` if every model keyword argument is a bounded number, flag or short name.

    Numbers (and the elements of a list of numbers, such as ``input_shape``) must be
    finite, non-negative and at most :data:`MODEL_KWARG_LIMITS` (or
    :data:`DEFAULT_KWARG_LIMIT`); strings at most :data:`MAX_KWARG_STRING` characters.

    Raises
    ------
    CaptureFormatError
        Anything else: a model built from it could exhaust memory.

    Examples
    --------
    >>> check_model_kwargs({"num_classes": 10, "input_shape": [32, 32], "activation": "relu"})
    {'num_classes': 10, 'input_shape': [32, 32], 'activation': 'relu'}
    >>> check_model_kwargs({"num_classes": 10**9})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fedspeech.capture.format.CaptureFormatError: ...num_classes=1000000000 is out of range...
    """
    if not isinstance(kwargs, dict):
        raise CaptureFormatError(f"{path}: model settings are not a table")
    for key, value in kwargs.items():
        limit = MODEL_KWARG_LIMITS.get(key, DEFAULT_KWARG_LIMIT)
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, bool):
                continue
            if isinstance(item, str) and not isinstance(value, list):
                if len(item) > MAX_KWARG_STRING:
                    raise CaptureFormatError(f"{path}: model setting {key} is too long a string")
                continue
            if not isinstance(item, (int, float)) or not 0 <= item <= limit:
                raise CaptureFormatError(
                    f"{path}: model setting {key}={value!r} is out of range (at most {int(limit)})"
                )
    return kwargs


def save_truth(path: Path, truth: dict[str, Any]) -> Path:
    """Write the ground truth of a captured batch as JSON, atomically."""
    from fedspeech.fileio import atomic_write_text

    atomic_write_text(path, json.dumps(truth, indent=1))
    return path


def load_truth(path: str | Path) -> dict[str, Any]:
    """Read a ground-truth JSON written by :func:`save_truth`."""
    p = Path(path)
    if not p.is_file():
        raise CaptureFormatError(f"ground truth {p} does not exist")
    try:
        data: dict[str, Any] = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CaptureFormatError(f"ground truth {p} is not valid JSON ({exc})") from None
    return data
