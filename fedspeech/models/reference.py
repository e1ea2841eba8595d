"""The published AASIST and AASIST-L checkpoints, loaded into our models.

The authors' weights (clovaai/aasist at commit a04c986, ``models/weights/AASIST.pth`` and
``AASIST-L.pth``) are ``state_dict`` pickles whose parameter names are those of their
implementation. :func:`load_reference_weights` reads one with
``torch.load(..., weights_only=True)``, which refuses anything but tensors and plain
containers (nothing in the file is executed), renames its keys through the key map below
and loads them strictly.

Key map
-------
A reference key is split at its dots and renamed part by part:

1. its first part, the top-level module or parameter, through :data:`TOP_LEVEL`
   (``pos_S`` → ``pos_spectral``, ``GAT_layer_S`` → ``gat_spectral``,
   ``HtrgGAT_layer_ST12`` → ``hs_gal12``, ``pool_hT1`` → ``pool_ht1``; ``first_bn``,
   ``master1``, ``master2``, ``encoder`` and ``out_layer`` keep their names); a first
   part not in the table has no target;
2. ``encoder.N.0.`` becomes ``encoder.N.``: the reference wraps each residual block in a
   one-element ``nn.Sequential``;
3. every later part through :data:`INNER` (``bn1`` → ``pre.0``, ``conv_downsample`` →
   ``shortcut``, ``att_projM`` → ``att_proj_master``, ``att_weightM`` →
   ``att_weight_master``, ``proj_with_attM`` → ``proj_with_att_master``,
   ``proj_without_attM`` → ``proj_without_att_master``); other parts (``conv1``, ``bn2``,
   ``att_proj``, ``weight``, ``running_mean``, ...) are the same in both.

The reference's sinc front end (``conv_time``) has no state in its checkpoints: its filters
are rebuilt from the configuration, as ours (:class:`~fedspeech.models.aasist.SincFilterbank`)
are, so no key maps to or from it.

Loading is strict: a reference key without a target, one of our keys left unfilled, two
keys with one target, or a shape that differs raises :class:`~fedspeech.errors.ConfigError`
naming them; a file that is not a readable checkpoint of tensors raises
:class:`~fedspeech.errors.DataError`. Each message is one line that starts with the file.

Examples
--------
>>> map_reference_key("HtrgGAT_layer_ST21.att_projM.weight")
'hs_gal21.att_proj_master.weight'
>>> map_reference_key("encoder.3.0.bn1.running_var")
'encoder.3.pre.0.running_var'
>>> map_reference_key("conv_time.band_pass") is None
True
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from fedspeech.errors import ConfigError, DataError

__all__ = ["INNER", "REFERENCE_NAMES", "TOP_LEVEL", "load_reference_weights", "map_reference_key"]

#: Models with a published checkpoint, and the file name the authors gave it.
REFERENCE_NAMES: Mapping[str, str] = {"aasist": "AASIST.pth", "aasist-l": "AASIST-L.pth"}

#: First part of a reference key → ours.
TOP_LEVEL: Mapping[str, str] = {
    "pos_S": "pos_spectral",
    "master1": "master1",
    "master2": "master2",
    "first_bn": "first_bn",
    "encoder": "encoder",
    "GAT_layer_S": "gat_spectral",
    "GAT_layer_T": "gat_temporal",
    "pool_S": "pool_spectral",
    "pool_T": "pool_temporal",
    "HtrgGAT_layer_ST11": "hs_gal11",
    "HtrgGAT_layer_ST12": "hs_gal12",
    "HtrgGAT_layer_ST21": "hs_gal21",
    "HtrgGAT_layer_ST22": "hs_gal22",
    "pool_hS1": "pool_hs1",
    "pool_hT1": "pool_ht1",
    "pool_hS2": "pool_hs2",
    "pool_hT2": "pool_ht2",
    "out_layer": "out_layer",
}

#: A later part of a reference key → ours; parts not listed keep their name.
INNER: Mapping[str, str] = {
    "bn1": "pre.0",
    "conv_downsample": "shortcut",
    "att_projM": "att_proj_master",
    "att_weightM": "att_weight_master",
    "proj_with_attM": "proj_with_att_master",
    "proj_without_attM": "proj_without_att_master",
}

#: Keys named in an error message before "and N more".
_SHOWN = 3


def map_reference_key(key: str) -> str | None:
    """Our ``state_dict`` key for the reference ``key``, or None where it has no target."""
    head, *rest = key.split(".")
    if head not in TOP_LEVEL:
        return None
    if head == "encoder":
        # encoder.<block>.0.<rest>: drop the one-element Sequential around each block.
        if len(rest) < 3 or not rest[0].isdigit() or rest[1] != "0":
            return None
        rest = [rest[0], *rest[2:]]
    return ".".join([TOP_LEVEL[head], *(INNER.get(p, p) for p in rest)])


def load_reference_weights(model: nn.Module, path: str | Path, name: str) -> None:
    """Fill ``model`` (built as ``name``) from the published checkpoint at ``path``, strictly.

    Parameters
    ----------
    model : nn.Module
        An ``aasist`` or ``aasist-l`` model built with the published configuration
        (``num_classes=2``); filled in place.
    path : str or Path
        ``AASIST.pth`` or ``AASIST-L.pth`` (a ``state_dict`` pickle).
    name : str
        ``"aasist"`` or ``"aasist-l"``.

    Raises
    ------
    DataError
        The file is missing, unreadable, truncated, holds anything but tensors (it is never
        executed), or is not a mapping of names to tensors.
    ConfigError
        ``name`` has no published checkpoint, or the keys or shapes do not fit ``model``
        (a checkpoint of the other model, or a model built with other settings).
    """
    if name not in REFERENCE_NAMES:
        raise ConfigError(
            f"{path}: no published checkpoint for model {name!r}; "
            f"only for {' and '.join(REFERENCE_NAMES)}"
        )
    weights = _read_state_dict(Path(path))
    own = model.state_dict()

    targets: dict[str, str] = {}  # our key -> reference key
    unexpected: list[str] = []
    for key in weights:
        target = map_reference_key(key)
        if target is None or target not in own or target in targets:
            unexpected.append(key)
        else:
            targets[target] = key
    missing = [k for k in own if k not in targets]
    shapes = [
        f"{ref!r} {_shape(weights[ref])} vs {ours!r} {_shape(own[ours])}"
        for ours, ref in targets.items()
        if weights[ref].shape != own[ours].shape
    ]
    problems = [
        _listed("unexpected key", "unexpected keys", [repr(k) for k in unexpected]),
        _listed("missing key", "missing keys", [repr(k) for k in missing]),
        _listed("shape differs (file vs model):", "shapes differ (file vs model):", shapes),
    ]
    problems = [p for p in problems if p]
    if problems:
        hint = ""
        if shapes and not unexpected and not missing:
            hint = f" (not a checkpoint of {name!r} as built; {REFERENCE_NAMES[name]} is)"
        raise ConfigError(f"{path}: {'; '.join(problems)}{hint}")
    model.load_state_dict({ours: weights[ref] for ours, ref in targets.items()}, strict=True)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``state_dict`` pickle, read without running anything in it."""
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():
            # e.g. "Detected pickle protocol 4": the error below says what matters.
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to read (zip, pickle, EOF, ...) is the file's
        raise DataError(f"{path}: not a readable PyTorch checkpoint ({_reason(exc)})") from None
    if not isinstance(obj, Mapping):
        raise DataError(f"{path}: holds a {type(obj).__name__}, not a state_dict of tensors")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise DataError(
            f"{path}: not a state_dict of tensors ("
            + _listed("entry", "entries", [repr(k) for k in bad])
            + (" is not one)" if len(bad) == 1 else " are not)")
        )
    return dict(obj)


def _reason(exc: Exception) -> str:
    """One line saying why ``torch.load`` failed."""
    text = str(exc)
    if "Weights only load failed" in text:
        # torch's message: a paragraph of advice, then the refused item, then a link.
        detail = " ".join(
            part.split("WeightsUnpickler error:")[-1].strip()
            for part in re.split(r"\n\s*\n", text)
            if part.strip() and not part.startswith(("Weights only load failed", "Check the doc"))
        )
        detail = " ".join(detail.split())
        return "it holds objects other than tensors, refused unread by weights_only=True" + (
            f": {detail}" if detail else ""
        )
    first = text.strip().splitlines()[0] if text.strip() else ""
    if isinstance(exc, EOFError) and not first:
        first = "the file ends early"
    first = first.split(". ")[0]  # torch's messages go on with advice after the first sentence
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _listed(one: str, many: str, items: list[str]) -> str:
    """``many 'a', 'b', 'c' and 4 more``, ``one 'a'``, or ``""`` when there are none."""
    if not items:
        return ""
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return f"{one if len(items) == 1 else many} {', '.join(items[:_SHOWN])}{more}"
