"""``fedspeech report RUN_DIR``: one HTML page per run, to read, look at and listen to.

The page (``RUN_DIR/report/index.html``) works offline, opened from disk: its styles and its
one small script are inline, its charts are PNGs in ``RUN_DIR/report/``, and its audio and
spectrograms are the audit's own files, linked by relative path (or embedded as ``data:``
URIs with ``embed=True``, so that the page is one file to send).

It shows what the run folder holds and says what it does not:

* the run's settings and the versions it ran on (``config.toml``, ``run.json``);
* utility per round (accuracy and loss; EER for ``--task sdd``) and leakage per audited
  round, as charts and a table (``metrics.json``, ``audit/leakage.csv``);
* the leakage summary (from features, from gradients, and a random guess: stage 1's
  starting point through the same stage 2, scored by the same metrics; chance for labels
  and content);
* one card per audited sample: the original, the waveform rebuilt from the true features
  and the one rebuilt from the shared gradient, each in an ``<audio>`` player, the
  spectrogram triple and the sample's scores; the cards sort by any score.

Examples
--------
>>> import tempfile
>>> from pathlib import Path
>>> with tempfile.TemporaryDirectory() as tmp:
...     _ = (Path(tmp) / "config.toml").write_text('[simulate]\\ntask = "kws"\\n')
...     page = write_report(tmp)
...     print(page.name, "no metrics.json" in page.read_text())
index.html True
"""

from __future__ import annotations

import base64
import csv
import json
import math
import mimetypes
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedspeech.audit.outputs import random_guess
from fedspeech.errors import DataError
from fedspeech.fileio import atomic_save_figure, atomic_write_text

REPORT_DIR = "report"

# Scores a card shows and the page sorts by: leakage.csv column -> (label, format, higher is
# better for the attacker).
CARD_SCORES: dict[str, tuple[str, str, bool]] = {
    "stoi": ("STOI", ".3f", True),
    "pesq_nb": ("PESQ-NB", ".2f", True),
    "pesq_wb": ("PESQ-WB", ".2f", True),
    "f_mse": ("F-MSE", ".2e", False),
    "speaker_cosine": ("speaker cosine", ".3f", True),
}

# summary.json metric -> label; the rows of the leakage summary table, in order.
SUMMARY_ROWS: dict[str, str] = {
    "label_accuracy": "labels recovered",
    "f_mse": "F-MSE (features)",
    "pesq_nb": "PESQ-NB",
    "pesq_wb": "PESQ-WB",
    "stoi": "STOI",
    "speaker_reid_rate": "speaker re-identified",
    "content_rate": "word heard (content)",
}

# The settings shown at the top of the page (config.toml keys), when the run has them.
SHOWN_SETTINGS = (
    "task",
    "dataset",
    "data-root",
    "model",
    "frontend",
    "clients",
    "fraction",
    "rounds",
    "local-epochs",
    "batch-size",
    "lr",
    "share",
    "partition",
    "capture-clients",
    "augment",
    "alignment",
    "clip-norm",
    "dp",
    "dp-clip",
    "dp-noise",
    "prune-ratio",
    "quantize-bits",
    "secagg",
    "seed",
)


@dataclass
class Sample:
    """One audited sample: its scores, its files (relative to the page) and captions."""

    key: str
    row: dict[str, str]
    audio: dict[str, str | None] = field(default_factory=dict)
    spectrogram: str | None = None
    scores: dict[str, float] = field(default_factory=dict)


#: Where the report looks for ``fedspeech evaluate`` results of the run's model.
EVALUATION_DIR = "evaluation"


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not readable JSON ({exc})") from None


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _number(value: Any) -> float:
    """A CSV or JSON cell as a float; NaN when empty or not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _fmt(value: Any, spec: str) -> str:
    x = _number(value)
    return "–" if not math.isfinite(x) else format(x, spec)


class _Links:
    """What the page links to for a file: its path relative to the page, or a ``data:`` URI
    (``embed``); None for a file that is not there."""

    def __init__(self, page_dir: Path, embed: bool) -> None:
        self.page_dir, self.embed = page_dir, embed

    def __call__(self, path: Path | None) -> str | None:
        if path is None or not path.is_file():
            return None
        if self.embed:
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"
        return Path(os.path.relpath(path, self.page_dir)).as_posix()


def _settings(cfg: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(k, str(cfg[k])) for k in SHOWN_SETTINGS if k in cfg and cfg[k] not in ("", None)]


def _utility_chart(out: Path, metrics: Mapping[str, Any], sdd: bool) -> Path | None:
    """``utility.png``: test accuracy and loss per round, or EER on seen/unseen attacks."""
    rounds = list(metrics.get("rounds") or [])
    if not rounds:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    initial = metrics.get("initial") or {}
    rows = ([{"round": 0, **initial}] if initial else []) + rounds
    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=110)
    keys = (
        (("eer", "EER, seen attacks"), ("eer_unseen", "EER, unseen attacks"))
        if sdd
        else (("accuracy", "test accuracy"),)
    )
    for key, label in keys:
        pts = [(r["round"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right" if not sdd else "upper right", fontsize=8)
    if not sdd:
        ax2 = ax.twinx()
        pts = [(r["round"], r["loss"]) for r in rows if r.get("loss") is not None]
        if pts:
            ax2.plot(*zip(*pts, strict=True), color="tab:red", alpha=0.6, marker=".")
        ax2.set_ylabel("test loss", color="tab:red")
    ax.set_title("Global model per round")
    fig.tight_layout()
    path = atomic_save_figure(fig, out / "utility.png")
    plt.close(fig)
    return path


def _leakage_rounds(rows: Sequence[Mapping[str, str]]) -> list[dict[str, Any]]:
    """Per audited round: samples and the mean of each score from the gradient."""
    out = []
    for rnd in sorted(
        {int(_number(r["round"])) for r in rows if math.isfinite(_number(r["round"]))}
    ):
        sub = [r for r in rows if _number(r["round"]) == rnd]
        entry: dict[str, Any] = {"round": rnd, "n": len(sub)}
        for key in ("label_correct", "pesq_nb", "stoi", "speaker_reidentified", "content_correct"):
            vals = [_number(r.get(key)) for r in sub]
            vals = [v for v in vals if math.isfinite(v)]
            entry[key] = float(np.mean(vals)) if vals else math.nan
        out.append(entry)
    return out


def _leakage_chart(out: Path, per_round: Sequence[Mapping[str, Any]]) -> Path | None:
    """``leakage.png``: leakage from the gradients per audited round (two rounds or more)."""
    if len(per_round) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9.6, 3.2), dpi=110)
    xs = [r["round"] for r in per_round]
    for key, label in (
        ("stoi", "STOI"),
        ("label_correct", "labels"),
        ("speaker_reidentified", "speaker re-id"),
    ):
        ax.plot(xs, [r[key] for r in per_round], marker="o", label=label)
    ax.set_ylim(0, 1)
    ax.set_xlabel("round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    for axis in (ax, ax2):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.plot(xs, [r["pesq_nb"] for r in per_round], marker="o", color="tab:purple")
    ax2.set_xlabel("round")
    ax2.set_ylabel("PESQ-NB")
    ax2.grid(alpha=0.3)
    fig.suptitle("Leakage from the captured updates, per round")
    fig.tight_layout()
    path = atomic_save_figure(fig, out / "leakage.png")
    plt.close(fig)
    return path


def _summary_table(
    summary: Mapping[str, Any], guess: Mapping[str, Any], classes: int | None
) -> list[dict[str, str]]:
    """Rows of the leakage summary: metric, from features, from gradients, random guess."""
    grad = summary.get("from_gradients") or {}
    feat = summary.get("from_features") or {}
    chance = {
        "label_accuracy": 1 / classes if classes else math.nan,
        "content_rate": 1 / classes if classes else math.nan,
        "f_mse": guess.get("f_mse", math.nan),
        "pesq_nb": guess.get("pesq_nb", math.nan),
        "stoi": guess.get("stoi", math.nan),
    }

    def cell(stats: Any, spec: str) -> str:
        if not isinstance(stats, Mapping) or stats.get("mean") is None:
            return "–"
        return f"{_fmt(stats['mean'], spec)} ± {_fmt(stats.get('std'), spec)} (n={stats.get('n')})"

    out = []
    for key, label in SUMMARY_ROWS.items():
        if key not in grad and key not in feat:
            continue
        spec = ".2e" if key == "f_mse" else ".2f"
        out.append(
            {
                "metric": label,
                "features": cell(feat.get(key), spec),
                "gradients": cell(grad.get(key), spec),
                "guess": _fmt(chance.get(key), spec),
            }
        )
    return out


def _samples(run_dir: Path, rows: Sequence[dict[str, str]], link: _Links) -> list[Sample]:
    audit = run_dir / "audit"
    out = []
    for r in rows:
        stem = f"{r['capture']}_{r['index']}"
        sample = Sample(key=stem, row=r)
        for kind in ("original", "from_features", "reconstruction"):
            sample.audio[kind] = link(audit / "wav" / f"{stem}_{kind}.wav")
        sample.spectrogram = link(audit / "spectrograms" / f"{stem}.png")
        sample.scores = {k: _number(r.get(k)) for k in CARD_SCORES}
        sample.scores["round"] = _number(r.get("round"))
        out.append(sample)
    return out


def _missing(
    run_dir: Path, metrics: Any, summary: Any, rows: Sequence[Any], cfg: Mapping[str, Any]
) -> list[str]:
    """What the page cannot show, and how to get it."""
    notes = []
    if metrics is None:
        notes.append("no metrics.json: the run recorded no round (or this is not a run folder)")
    elif metrics.get("interrupted"):
        done = len(metrics.get("rounds") or [])
        notes.append(
            f"the run was interrupted after {done} round(s): "
            f"`fedspeech simulate --resume {run_dir}` finishes it"
        )
    if metrics is not None and metrics.get("diverged"):
        notes.append(f"training diverged: {metrics['diverged']}")
    audit = run_dir / "audit"
    captures = sorted((run_dir / "captures").glob("*.safetensors"))
    if summary is None:
        done = len(list((audit / "samples").glob("*.json"))) if audit.is_dir() else 0
        if done:
            notes.append(
                f"the audit did not finish ({done} of {len(captures)} captures attacked, no "
                f"summary.json): `fedspeech audit {run_dir}` finishes it and reuses what is done"
            )
        elif captures:
            notes.append(
                f"not audited: {len(captures)} captures are waiting; `fedspeech audit {run_dir}` "
                "attacks them"
            )
        else:
            notes.append("no captures: the server kept no client's update (--capture-clients 0)")
    elif not summary.get("scored"):
        notes.append("the audit has no truth/ folder: reconstructions are not scored")
    if summary is not None and not rows:
        notes.append("the audit reconstructed no sample")
    if not (run_dir / "run.json").is_file():
        notes.append("no run.json: the versions and command line were not recorded")
    if cfg.get("task") == "sdd" and not (run_dir / EVALUATION_DIR / "det.png").is_file():
        notes.append(
            f"no DET curve: `fedspeech evaluate --init-weights {run_dir} --out "
            f"{run_dir / EVALUATION_DIR}` scores the final model and draws it"
        )
    return notes


def write_report(run_dir: Path | str, *, embed: bool = False) -> Path:
    """Write ``RUN_DIR/report/index.html`` (and its charts); return the page's path.

    Parameters
    ----------
    run_dir : Path or str
        A folder written by ``fedspeech simulate`` (audited or not).
    embed : bool
        Put audio and images into the page as ``data:`` URIs: one file to send.

    Raises
    ------
    DataError
        ``run_dir`` is not a folder, has no ``config.toml``, holds unreadable files, or the
        report cannot be written there.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise DataError(f"report: {run} is not a folder")
    if (run / "frontier.csv").is_file():
        return write_sweep_report(run, embed=embed)
    cfg_path = run / "config.toml"
    if not cfg_path.is_file():
        raise DataError(f"report: {run} has no config.toml (not a fedspeech run folder)")
    try:
        cfg: dict[str, Any] = tomllib.loads(cfg_path.read_text(encoding="utf-8")).get(
            "simulate", {}
        )
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DataError(f"report: {cfg_path} is not readable TOML ({exc})") from None
    metrics = _read_json(run / "metrics.json")
    info = _read_json(run / "run.json") or {}
    summary = _read_json(run / "audit" / "summary.json")
    rows = [r for r in _read_csv(run / "audit" / "leakage.csv") if r.get("capture")]
    index = _read_json(run / "data" / "index.json") or {}

    out = run / REPORT_DIR
    try:
        return _write(run, out, cfg, metrics, info, summary, rows, index, embed)
    except OSError as exc:  # a read-only run folder, a full disk
        raise DataError(f"report: cannot write {out} ({exc.strerror or exc})") from None


def _write(
    run: Path,
    out: Path,
    cfg: Mapping[str, Any],
    metrics: Any,
    info: Mapping[str, Any],
    summary: Any,
    rows: list[dict[str, str]],
    index: Mapping[str, Any],
    embed: bool,
) -> Path:
    """Charts, then the page (atomically), into ``out``."""
    classes = len(index.get("classes") or []) or None
    out.mkdir(parents=True, exist_ok=True)
    link = _Links(out, embed)
    sdd = cfg.get("task") == "sdd"
    per_round = _leakage_rounds(rows)
    # ``fedspeech evaluate --init-weights RUN --out RUN/evaluation``: the final model scored.
    evaluation = _read_json(run / EVALUATION_DIR / "evaluation.json")
    charts = {
        "utility": link(_utility_chart(out, metrics or {}, sdd)),
        "leakage": link(_leakage_chart(out, per_round)),
        "summary": link(run / "audit" / "summary.png"),
        "det": link(run / EVALUATION_DIR / "det.png"),
        "confusion": link(run / EVALUATION_DIR / "confusion.png"),
    }
    guess: Mapping[str, Any] = {}
    if summary and summary.get("scored"):
        # Audits before the baseline was part of summary.json: computed here.
        guess = summary.get("random_guess") or random_guess(rows)
    samples = _samples(run, rows, link)
    labels = list(index.get("classes") or [])

    def word(value: Any) -> str:
        i = _number(value)
        if not math.isfinite(i):
            return "–"
        return labels[int(i)] if 0 <= int(i) < len(labels) else str(int(i))

    env = _environment()
    env.filters["fmt"] = _fmt
    env.filters["word"] = word
    page = env.get_template("run.html.j2").render(
        title=f"fedspeech report: {run.name}",
        run_name=run.name,
        settings=_settings(cfg),
        versions=sorted((info.get("versions") or {}).items()),
        git_commit=info.get("git_commit"),
        started=info.get("started"),
        metrics=metrics or {},
        rounds=list((metrics or {}).get("rounds") or []),
        sdd=sdd,
        dp="privacy" in (metrics or {}),
        charts=charts,
        per_round=per_round,
        summary_rows=_summary_table(summary or {}, guess, classes) if summary else [],
        evaluation=evaluation if isinstance(evaluation, dict) else None,
        guess_n=guess.get("n", 0),
        samples=samples,
        card_scores=CARD_SCORES,
        missing=_missing(run, metrics, summary, rows, cfg),
        embed=embed,
    )
    path = out / "index.html"
    atomic_write_text(path, page)
    return path


#: Columns of a sweep's ``frontier.csv`` (``fedspeech sweep``).
FRONTIER_COLUMNS = (
    "variant",
    "defense",
    "strength",
    "epsilon",
    "accuracy",
    "eer",
    "conflict_rate",
    "label_accuracy",
    "f_mse",
    "pesq_nb",
    "stoi",
    "speaker_reid_rate",
    "content_rate",
    "random_pesq_nb",
    "random_stoi",
    "n",
)
#: The columns the sweep report's table and ``frontier.md`` show.
SWEEP_COLUMNS = tuple(c for c in FRONTIER_COLUMNS if c not in ("eer", "f_mse"))


def write_sweep_report(sweep_dir: Path | str, *, embed: bool = False) -> Path:
    """Write ``SWEEP_DIR/report/index.html`` for a ``fedspeech sweep`` folder.

    The frontier plot and table, and per variant its scores, links to the reports of its
    two runs (written here when missing) and two audio examples: the original and what the
    server rebuilt from the shared update, for the audited clips of best and worst STOI.

    Raises
    ------
    DataError
        No ``frontier.csv``, or the report cannot be written.
    """
    root = Path(sweep_dir)
    rows = _read_csv(root / "frontier.csv")
    if not rows:
        raise DataError(f"report: {root / 'frontier.csv'} has no variant")
    out = root / REPORT_DIR
    try:
        out.mkdir(parents=True, exist_ok=True)
        link = _Links(out, embed)
        variants, missing = [], []
        for row in rows:
            name = row["variant"]
            links = []
            for kind in ("utility", "leakage"):
                run = root / name / kind
                if not run.is_dir():
                    missing.append(f"{name}: no {kind} run folder")
                    continue
                run_page = run / REPORT_DIR / "index.html"
                if not run_page.is_file():
                    run_page = write_report(run)
                href = Path(os.path.relpath(run_page, out)).as_posix()
                links.append((f"{kind} run report", href))
            variants.append(
                {
                    "name": name,
                    "defense": row.get("defense", ""),
                    "strength": row.get("strength", ""),
                    **{
                        k: _fmt(row.get(k), ".3f")
                        for k in ("accuracy", "epsilon", "pesq_nb", "stoi")
                    },
                    "links": links,
                    "examples": _examples(root / name / "leakage" / "audit", link),
                }
            )
        cells = [
            {
                "cells": {
                    c: _fmt(r.get(c), ".3f") if _is_number(r.get(c)) else r.get(c, "")
                    for c in SWEEP_COLUMNS
                },
                "num": {c: _is_number(r.get(c)) for c in SWEEP_COLUMNS},
            }
            for r in rows
        ]
        env = _environment()
        page = env.get_template("sweep.html.j2").render(
            title=f"fedspeech sweep report: {root.name}",
            sweep_name=root.name,
            frontier_png=link(root / "frontier.png"),
            columns=SWEEP_COLUMNS,
            rows=cells,
            variants=variants,
            missing=missing,
        )
        path = out / "index.html"
        atomic_write_text(path, page)
        return path
    except OSError as exc:
        raise DataError(f"report: cannot write {out} ({exc.strerror or exc})") from None


def _environment() -> Any:
    """The Jinja2 environment of the report templates (``report/templates/``)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    return Environment(
        loader=PackageLoader("fedspeech.report", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _is_number(value: Any) -> bool:
    return value not in (None, "") and math.isfinite(_number(value))


def _examples(audit: Path, link: _Links) -> list[dict[str, Any]]:
    """The audited clips of best and worst STOI from the update: original and rebuilt."""
    rows = [
        r
        for r in _read_csv(audit / "leakage.csv")
        if r.get("capture") and math.isfinite(_number(r.get("stoi")))
    ]
    rows.sort(key=lambda r: _number(r["stoi"]))
    picked = [rows[-1], rows[0]] if len(rows) > 1 else rows
    out = []
    for r in picked:
        stem = f"{r['capture']}_{r['index']}"
        original, rebuilt = (
            audit / "wav" / f"{stem}_original.wav",
            audit / "wav" / f"{stem}_reconstruction.wav",
        )
        if original.is_file() and rebuilt.is_file():
            out.append(
                {
                    "name": stem,
                    "original": link(original),
                    "gradients": link(rebuilt),
                    "stoi": _fmt(r["stoi"], ".3f"),
                }
            )
    return out


__all__ = [
    "CARD_SCORES",
    "FRONTIER_COLUMNS",
    "REPORT_DIR",
    "SWEEP_COLUMNS",
    "Sample",
    "write_report",
    "write_sweep_report",
]
