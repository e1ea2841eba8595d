"""``fedspeech evaluate``: score a model's weights on a dataset's split, as plain files.

For ``--task sdd`` (speech-deepfake detection) every clip of the split gets a bona fide
score, ``logit[1] − logit[0]`` (the score runs report,
:func:`~fedspeech.training.sdd.bona_fide_scores`), and the folder receives:

* ``scores.txt``: one line per trial, ``clip_id attack_id label score`` as ASVspoof score
  files have them (label ``bonafide`` or ``spoof``; attack ``bonafide`` for bona fide clips);
* ``evaluation.json``: ``eer``, ``threshold`` (accept as bona fide at ``score >=``),
  ``n_bonafide``, ``n_spoof``, ``per_attack`` (each attack's EER against all bona fide
  clips and its clip count), and ``min_tdcf`` with ``--asv-scores`` (ASVspoof 2019's
  normalised t-DCF: :func:`fedspeech.metrics.min_tdcf`);
* ``det.png``: the detection error trade-off curve (miss against false-alarm rate on
  normal-deviate axes), the EER point marked.

For ``--task kws`` it writes ``predictions.txt`` (``clip_id label predicted``),
``evaluation.json`` (``accuracy``, ``n``, ``classes``, ``confusion``: rows true, columns
predicted) and ``confusion.png``. Files are written atomically.

The weights come from ``--init-weights`` (:func:`fedspeech.models.weights.load_weights`): a
run folder, a model file, or a published AASIST/AASIST-L ``.pth``. When ``--model`` or
``--task`` is not given, the model file's metadata supplies it (and, for sdd, the clip
length its model was built for).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from fedspeech.config import SimConfig
from fedspeech.errors import ConfigError, DataError
from fedspeech.fileio import atomic_save_figure, atomic_write_json, atomic_write_text
from fedspeech.metrics import det_curve, eer, min_tdcf
from fedspeech.models import build_model
from fedspeech.models.weights import load_weights, read_model_meta, resolve_weights_path
from fedspeech.tasks import check_config
from fedspeech.tasks.kws import resolve_corpus
from fedspeech.tasks.prepare import compute_features, peak_normalize
from fedspeech.tasks.sdd import load_sdd_corpus, sdd_model_kwargs
from fedspeech.training.local import predict
from fedspeech.training.sdd import bona_fide_scores

__all__ = [
    "EVALUATE_SETTINGS",
    "EVAL_SEED",
    "EvaluateRequest",
    "evaluate",
    "read_asv_scores",
    "settings_from_weights",
]

#: The simulate settings ``fedspeech evaluate`` reads (the model, its weights, the data).
EVALUATE_SETTINGS = (
    "task",
    "model",
    "init_weights",
    "activation",
    "dataset",
    "data_root",
    "words",
    "frontend",
    "normalize",
    "clip_samples",
    "synth_speakers",
    "synth_takes",
    "seed",
)
#: Seed of the ``--max-clips`` subset: the same clips whatever the model.
EVAL_SEED = 0
_ASV_KEYS = ("target", "nontarget", "spoof")


@dataclass(frozen=True)
class EvaluateRequest:
    """What ``fedspeech evaluate`` was asked besides the model's settings."""

    out: Path
    split: str = "test"
    max_clips: int = 0
    asv_scores: Path | None = None
    batch_size: int = 32


def settings_from_weights(given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` settings completed from the ``--init-weights`` file's metadata.

    A run's ``model.safetensors`` records the run's settings: each of
    :data:`EVALUATE_SETTINGS` not given comes from there (so a run is scored on its own
    dataset, front-end and clip length), and ``task`` and ``model`` from the file's own
    keys. A ``.pth`` has no metadata.
    """
    out = dict(given)
    path = out.get("init_weights")
    if not path:
        raise ConfigError("fedspeech evaluate needs --init-weights PATH|RUN_DIR")
    p = resolve_weights_path(path)
    if p.suffix == ".pth":
        return out
    meta = read_model_meta(p)  # the header only: load_weights reads the tensors once, later
    try:
        saved = json.loads(meta.get("settings", "{}"))
    except ValueError:
        saved = {}
    saved = {str(k).replace("-", "_"): v for k, v in dict(saved).items()}
    saved.update({k: meta[k] for k in ("task", "model") if k in meta})
    if "task" in out and out["task"] != saved.get("task", out["task"]):
        saved = {"model": saved["model"]} if "model" in saved else {}  # another task's data
    for key in EVALUATE_SETTINGS:
        if key not in out and key in saved and key != "init_weights":
            out[key] = saved[key]
    if out.get("task") == "sdd" and "clip_samples" not in out and "model_kwargs" in meta:
        # The clip length the detector was built for.
        samples = json.loads(meta["model_kwargs"]).get("num_samples")
        if samples:
            out["clip_samples"] = int(samples)
    return out


def read_asv_scores(path: Path) -> dict[str, np.ndarray]:
    """ASV scores of an ASVspoof 2019 ASV score file: ``source key score`` per line.

    Returns
    -------
    dict
        ``target``, ``nontarget``, ``spoof`` → float64 scores.

    Raises
    ------
    DataError
        Unreadable file, a line without three fields, an unknown key, a score that is not a
        finite number, or a kind with no trial.
    """
    out: dict[str, list[float]] = {k: [] for k in _ASV_KEYS}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"--asv-scores {path}: cannot read it ({exc})") from None
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or fields[1] not in out:
            raise DataError(
                f"--asv-scores {path}, line {number}: expected 'source key score' with key "
                f"target, nontarget or spoof, got {line.strip()!r}"
            )
        try:
            value = float(fields[2])
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise DataError(f"--asv-scores {path}, line {number}: {fields[2]!r} is not a score")
        out[fields[1]].append(value)
    empty = [k for k, v in out.items() if not v]
    if empty:
        raise DataError(f"--asv-scores {path}: no {', '.join(empty)} trials")
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def _subset(idx: np.ndarray, max_clips: int) -> np.ndarray:
    if 0 < max_clips < len(idx):
        rng = np.random.default_rng(EVAL_SEED)
        return np.sort(rng.choice(idx, size=max_clips, replace=False))
    return idx


def _logits(
    model: torch.nn.Module, inputs: np.ndarray, batch_size: int, stream: TextIO | None
) -> torch.Tensor:
    """Logits of every input in eval mode, with a progress bar on ``stream``."""
    from tqdm.auto import tqdm

    parts = []
    with tqdm(
        total=len(inputs), unit="clip", desc="evaluate", file=stream, disable=stream is None
    ) as bar:
        for start in range(0, len(inputs), batch_size):
            chunk = np.ascontiguousarray(inputs[start : start + batch_size])
            parts.append(predict(model, chunk, batch_size))
            bar.update(len(chunk))
    return torch.cat(parts) if parts else torch.zeros(0, 2)


def evaluate(
    cfg: SimConfig, request: EvaluateRequest, stream: TextIO | None = sys.stderr
) -> dict[str, Any]:
    """Score ``cfg.init_weights`` on ``request.split`` of ``cfg``'s dataset; write the files.

    Returns
    -------
    dict
        The content of ``evaluation.json``.

    Raises
    ------
    ConfigError, DataError
        Bad names, weights that do not fit the model, no clips in the split, a bad ASV file.
    """
    check_config(cfg)
    asv = read_asv_scores(request.asv_scores) if request.asv_scores else None
    if asv is not None and cfg.task != "sdd":
        raise ConfigError("--asv-scores is for --task sdd (min t-DCF)")
    if cfg.task == "sdd":
        return _evaluate_sdd(cfg, request, asv, stream)
    return _evaluate_kws(cfg, request, stream)


def _evaluate_sdd(
    cfg: SimConfig,
    request: EvaluateRequest,
    asv: dict[str, np.ndarray] | None,
    stream: TextIO | None,
) -> dict[str, Any]:
    corpus = load_sdd_corpus(cfg)
    idx = _subset(corpus.indices(request.split), request.max_clips)
    if len(idx) == 0:
        raise DataError(f"dataset {cfg.dataset!r} has no clips in split {request.split!r}")
    model = build_model(cfg.model, **sdd_model_kwargs(cfg.clip_samples))
    assert cfg.init_weights is not None
    load_weights(model, cfg.model, cfg.init_weights)
    scores = bona_fide_scores(_logits(model, corpus.waveforms[idx], request.batch_size, stream))
    labels = corpus.labels[idx]
    attacks = [corpus.attacks[i] for i in idx]
    bona, spoof = scores[labels == 1], scores[labels == 0]
    if len(bona) == 0 or len(spoof) == 0:
        raise DataError(
            f"split {request.split!r} needs bona fide and spoofed clips "
            f"(has {len(bona)} and {len(spoof)})"
        )
    total = eer(bona, spoof)
    per_attack = {}
    for attack in sorted({a for a, y in zip(attacks, labels, strict=True) if y == 0}):
        mask = np.array([a == attack and y == 0 for a, y in zip(attacks, labels, strict=True)])
        per_attack[attack] = {"eer": eer(bona, scores[mask]).eer, "n": int(mask.sum())}
    result: dict[str, Any] = {
        "task": "sdd",
        "model": cfg.model,
        "weights": str(cfg.init_weights),
        "dataset": cfg.dataset,
        "split": request.split,
        "eer": total.eer,
        "threshold": total.threshold,
        "n_bonafide": len(bona),
        "n_spoof": len(spoof),
        "per_attack": per_attack,
        "score": "logit[1] - logit[0]",
    }
    if asv is not None:
        result["min_tdcf"] = min_tdcf(bona, spoof, asv["target"], asv["nontarget"], asv["spoof"])[0]
    out = request.out
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        f"{corpus.clip_ids[i]} {a} {'bonafide' if y == 1 else 'spoof'} {s:.6f}"
        for i, a, y, s in zip(idx, attacks, labels, scores, strict=True)
    ]
    atomic_write_text(out / "scores.txt", "\n".join(lines) + "\n")
    atomic_write_json(out / "evaluation.json", result, indent=1)
    _det_plot(out / "det.png", bona, spoof, total.eer, f"{cfg.model} on {cfg.dataset}")
    return result


def _det_plot(path: Path, bona: np.ndarray, spoof: np.ndarray, value: float, title: str) -> None:
    """The DET curve on normal-deviate axes, the EER point marked."""
    from matplotlib.figure import Figure
    from scipy.stats import norm

    miss, fa, _ = det_curve(bona, spoof)
    eps = 1e-4
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    ax.plot(norm.ppf(np.clip(fa, eps, 1 - eps)), norm.ppf(np.clip(miss, eps, 1 - eps)))
    point = norm.ppf(min(max(value, eps), 1 - eps))
    ax.plot([point], [point], "o", label=f"EER {100 * value:.2f} %")
    ticks = [0.001, 0.01, 0.05, 0.2, 0.5, 0.8]
    pos = norm.ppf(ticks)
    labels = [f"{100 * t:g}" for t in ticks]
    ax.set_xticks(pos, labels)
    ax.set_yticks(pos, labels)
    lim = (norm.ppf(0.0005), norm.ppf(0.9))
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.set_xlabel("false alarm rate (%): spoofs accepted")
    ax.set_ylabel("miss rate (%): bona fide rejected")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    atomic_save_figure(fig, path)


def _evaluate_kws(
    cfg: SimConfig, request: EvaluateRequest, stream: TextIO | None
) -> dict[str, Any]:
    from fedspeech.frontends import build_frontend

    corpus = resolve_corpus(cfg)
    idx = _subset(corpus.indices(request.split), request.max_clips)
    if len(idx) == 0:
        raise DataError(f"dataset {cfg.dataset!r} has no clips in split {request.split!r}")
    waves = corpus.waveforms[idx]
    if cfg.normalize == "peak":
        waves = peak_normalize(waves)
    feats = compute_features(waves, build_frontend(cfg.frontend))
    classes = list(corpus.classes)
    kwargs = {
        "num_classes": len(classes),
        "input_shape": list(feats.shape[1:]),
        "activation": cfg.activation,
    }
    model = build_model(cfg.model, **kwargs)
    assert cfg.init_weights is not None
    load_weights(model, cfg.model, cfg.init_weights)
    predicted = _logits(model, feats, request.batch_size, stream).argmax(1).numpy()
    labels = corpus.labels[idx]
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    result = {
        "task": "kws",
        "model": cfg.model,
        "weights": str(cfg.init_weights),
        "dataset": cfg.dataset,
        "split": request.split,
        "accuracy": float(np.mean(predicted == labels)),
        "n": len(idx),
        "classes": classes,
        "confusion": confusion.tolist(),
    }
    out = request.out
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        f"{corpus.clip_ids[i]} {classes[y]} {classes[p]}"
        for i, y, p in zip(idx, labels, predicted, strict=True)
    ]
    atomic_write_text(out / "predictions.txt", "\n".join(lines) + "\n")
    atomic_write_json(out / "evaluation.json", result, indent=1)
    _confusion_plot(out / "confusion.png", confusion, classes)
    return result


def _confusion_plot(path: Path, confusion: np.ndarray, classes: list[str]) -> None:
    from matplotlib.figure import Figure

    size = max(4.0, 0.5 * len(classes) + 2)
    fig = Figure(figsize=(size, size))
    ax = fig.add_subplot()
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=90)
    ax.set_yticks(range(len(classes)), classes)
    for (r, c), n in np.ndenumerate(confusion):
        if n:
            ax.text(c, r, str(n), ha="center", va="center", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    atomic_save_figure(fig, path)


def summary_lines(result: Mapping[str, Any]) -> list[str]:
    """What ``fedspeech evaluate`` prints."""
    if result["task"] == "sdd":
        lines = [
            f"EER {100 * result['eer']:.2f} % (threshold {result['threshold']:.4f}) on "
            f"{result['n_bonafide']} bona fide and {result['n_spoof']} spoofed clips"
        ]
        if "min_tdcf" in result:
            lines.append(f"min t-DCF {result['min_tdcf']:.4f}")
        lines += [
            f"  {attack:>12s}: EER {100 * v['eer']:.2f} % ({v['n']} clips)"
            for attack, v in result["per_attack"].items()
        ]
        return lines
    lines = [f"accuracy {result['accuracy']:.4f} on {result['n']} clips", "confusion (rows true):"]
    width = max(len(c) for c in result["classes"])
    for name, row in zip(result["classes"], result["confusion"], strict=True):
        lines.append(f"  {name:>{width}s} " + " ".join(f"{n:4d}" for n in row))
    return lines
