"""Files and text the privacy audit writes: CSV, JSON, WAVs, figures and the summary.

:func:`write_outputs` writes ``leakage.csv``, ``summary.json`` and the summary plots of an
audit from its rows (:func:`summarize` gives the statistics); the per-sample WAVs and
spectrograms are written as each capture is scored (:mod:`fedspeech.audit.scoring`).

Every file goes through :mod:`fedspeech.fileio` (temporary file, then rename), so a reader,
or a resumed audit, never sees half a result. Figures are drawn on
:class:`matplotlib.figure.Figure` objects with the Agg canvas, without pyplot's global
state, so the audit works headless and leaves no figures open.

Examples
--------
>>> clean_json({"a": float("nan"), "b": [1.0, float("inf")]})
{'a': None, 'b': [1.0, None]}
>>> format_value(0.123456), format_value(float("nan")), format_value(True)
('0.1235', '', '1')
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from attacks.scoring import summarize as summarize_table
from fedspeech.audit.selection import Job
from fedspeech.audit.settings import AuditSettings
from fedspeech.fileio import (
    atomic_save_figure,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    clean_json,
)

__all__ = [
    "FF_PREFIX",
    "GRADIENT_COLUMNS",
    "GUESS_COLUMNS",
    "GUESS_PREFIX",
    "ID_COLUMNS",
    "LEAKAGE_COLUMNS",
    "SUMMARY_METRICS",
    "clean_json",
    "format_value",
    "leakage_by_round_plot",
    "random_guess",
    "log_mel",
    "spectrogram_figure",
    "summarize",
    "summary_plot",
    "summary_table",
    "write_csv",
    "write_json",
    "write_outputs",
    "write_wav",
]

# Who and what each row of leakage.csv is about, then the attack's own numbers.
ID_COLUMNS: tuple[str, ...] = (
    "capture",
    "round",
    "client",
    "update_clips",
    "index",
    "clip_id",
    "speaker",
    "label",
    "label_recovered",
    "matching_loss",
    "iterations",
)
# Scores of the waveform recovered from the gradient; "ff_" + these (where they apply) are
# the scores of the waveform recovered from the true features (the stage-2 ceiling).
GRADIENT_COLUMNS: tuple[str, ...] = (
    "label_correct",
    "f_mse",
    "w_mse",
    "pesq_nb",
    "pesq_wb",
    "stoi",
    "speaker_cosine",
    "speaker_reidentified",
    "content_predicted",
    "content_correct",
)
FF_PREFIX = "ff_"
FEATURE_COLUMNS: tuple[str, ...] = tuple(
    c for c in GRADIENT_COLUMNS if c not in ("label_correct", "f_mse")
)
# The random guess: stage 1's starting point, through stage 2, scored against the same
# true clip as the row (:func:`fedspeech.audit.scoring.score_capture`).
GUESS_PREFIX = "guess_"
GUESS_COLUMNS: tuple[str, ...] = ("f_mse", "pesq_nb", "stoi")
LEAKAGE_COLUMNS: tuple[str, ...] = (
    ID_COLUMNS
    + GRADIENT_COLUMNS
    + tuple(FF_PREFIX + c for c in FEATURE_COLUMNS)
    + tuple(GUESS_PREFIX + c for c in GUESS_COLUMNS)
)

# summary.json metric -> (row column it averages, applies to "from features").
SUMMARY_METRICS: dict[str, tuple[str, bool]] = {
    "f_mse": ("f_mse", False),
    "w_mse": ("w_mse", True),
    "pesq_nb": ("pesq_nb", True),
    "pesq_wb": ("pesq_wb", True),
    "stoi": ("stoi", True),
    "label_accuracy": ("label_correct", False),
    "speaker_reid_rate": ("speaker_reidentified", True),
    "content_rate": ("content_correct", True),
}

_LABELS = {
    "f_mse": "F-MSE",
    "w_mse": "W-MSE",
    "pesq_nb": "PESQ-NB",
    "pesq_wb": "PESQ-WB",
    "stoi": "STOI",
    "label_accuracy": "label accuracy",
    "speaker_reid_rate": "speaker re-id rate",
    "content_rate": "content rate",
}


def write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as indented strict JSON (NaN -> null), atomically."""
    atomic_write_json(path, obj, indent=1)
    return path


def format_value(value: Any) -> str:
    """One CSV cell: floats to 4 significant digits, booleans as 1/0, missing as empty."""
    if value is None:
        return ""
    if isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    if isinstance(value, float | np.floating):
        v = float(value)
        return "" if math.isnan(v) else f"{v:.4g}"
    return str(value)


def write_csv(path: Path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write ``rows`` under the header ``columns`` (keys not in it are left out), atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([format_value(row.get(c)) for c in columns])
    atomic_write_text(path, buf.getvalue())
    return path


def write_wav(path: Path, wave: np.ndarray, sr: int = 16_000, *, peak: float | None = None) -> Path:
    """Write a mono 16-bit PCM WAV, atomically.

    Parameters
    ----------
    wave : np.ndarray
        ``(samples,)`` float waveform.
    peak : float or None
        Scale to this peak first (for reconstructions, whose level is arbitrary); None
        writes the samples as they are, clipped to [-1, 1].
    """
    import soundfile as sf  # imported here, as the plotting libraries below: slow to import

    x = np.nan_to_num(np.asarray(wave, dtype=np.float64).ravel())
    top = float(np.max(np.abs(x))) if x.size else 0.0
    if peak is not None and top > 1e-9:
        x = x * (peak / top)
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1.0, 1.0).astype(np.float32), sr, subtype="PCM_16", format="WAV")
    atomic_write_bytes(path, buf.getvalue())
    return path


def log_mel(wave: np.ndarray, sr: int = 16_000, n_mels: int = 64) -> np.ndarray:
    """Log-Mel power ``(n_mels, frames)`` in dB of a waveform, for display.

    Finer than the models' 32 x 32 input (64 bands, 10 ms hop) so that the images show what
    a listener hears; 80 dB below the peak is the floor.
    """
    import librosa  # imported here: slow to import, needed for figures only

    x = np.nan_to_num(np.asarray(wave, dtype=np.float32).ravel())
    mel = librosa.feature.melspectrogram(
        y=x, sr=sr, n_fft=512, hop_length=sr // 100, n_mels=n_mels, power=2.0
    )
    return np.asarray(librosa.power_to_db(mel, ref=np.max, top_db=80.0), dtype=np.float64)


def _save_figure(fig: Any, path: Path, dpi: int = 100) -> Path:
    return atomic_save_figure(fig, path, dpi=dpi, bbox_inches="tight")


def spectrogram_figure(
    path: Path,
    panels: Sequence[tuple[str, np.ndarray | None]],
    *,
    sr: int = 16_000,
    title: str = "",
) -> Path:
    """Side-by-side log-Mel images of waveforms (original | from gradients | from features).

    Parameters
    ----------
    panels : sequence of (title, waveform or None)
        One image per entry; None entries are skipped (e.g. no original without truth).
    """
    from matplotlib.figure import Figure

    shown = [(name, log_mel(w, sr)) for name, w in panels if w is not None]
    fig = Figure(figsize=(3.2 * max(len(shown), 1) + 0.6, 3.2), layout="constrained")
    axes = fig.subplots(1, max(len(shown), 1), squeeze=False)[0]
    image = None
    for ax, (name, spec) in zip(axes, shown, strict=False):
        seconds = spec.shape[1] / 100.0
        image = ax.imshow(
            spec,
            origin="lower",
            aspect="auto",
            cmap="magma",
            vmin=-80.0,
            vmax=0.0,
            extent=(0.0, seconds, 0, spec.shape[0]),
        )
        ax.set_title(name)
        ax.set_xlabel("time (s)")
    axes[0].set_ylabel("Mel band")
    if image is not None:
        fig.colorbar(image, ax=list(axes), label="dB")
    if title:
        fig.suptitle(title)
    return _save_figure(fig, path)


def summary_plot(path: Path, summary: Mapping[str, Any]) -> Path:
    """Bars of the main metrics, from gradients vs from features (mean +- std)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    grad = summary.get("from_gradients", {})
    feat = summary.get("from_features", {})
    names = [m for m in SUMMARY_METRICS if m != "f_mse" and _mean(grad.get(m)) is not None]
    fig = Figure(figsize=(1.9 * max(len(names), 1) + 0.5, 3.4), layout="constrained")
    axes = fig.subplots(1, max(len(names), 1), squeeze=False)[0]
    sources = [(grad, "tab:red", "from gradients"), (feat, "tab:blue", "from true features")]
    for ax, name in zip(axes, names, strict=False):
        for x, (src, colour, label) in enumerate(sources):
            mean = _mean(src.get(name))
            if mean is None:
                ax.text(x, 0.0, "n/a", ha="center", va="bottom", fontsize="small")
                continue
            std = float(src[name].get("std") or 0.0)
            ax.bar(x, mean, yerr=std, color=colour, label=label, capsize=3)
            ax.text(x, mean, f"{mean:.2g}", ha="center", va="bottom", fontsize="small")
        ax.set_xticks([0, 1], ["grad.", "feat."])
        ax.set_title(_LABELS.get(name, name), fontsize="medium")
    handles = [Rectangle((0, 0), 1, 1, color=colour, label=label) for _, colour, label in sources]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize="small")
    fig.suptitle("leakage: waveform recovered from the gradient vs from the true features")
    return _save_figure(fig, path)


def _mean(stats: Any) -> float | None:
    if not isinstance(stats, Mapping):
        return None
    m = stats.get("mean")
    return None if m is None or not math.isfinite(float(m)) else float(m)


def _nanmean(values: Iterable[Any]) -> float:
    arr = np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else math.nan


def leakage_by_round_plot(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Mean leakage per federated round (from gradients), one panel per metric."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rounds = sorted({int(r["round"]) for r in rows})
    metrics = [
        (m, col)
        for m, (col, _) in SUMMARY_METRICS.items()
        if any(r.get(col) is not None and not _isnan(r.get(col)) for r in rows)
    ]
    fig = Figure(figsize=(2.6 * max(len(metrics), 1) + 1, 3.0), layout="constrained")
    axes = fig.subplots(1, max(len(metrics), 1), squeeze=False)[0]
    for ax, (name, col) in zip(axes, metrics, strict=False):
        means = [_nanmean(r.get(col) for r in rows if int(r["round"]) == k) for k in rounds]
        ax.plot(rounds, means, marker="o", color="tab:red")
        ax.set_title(_LABELS.get(name, name))
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if name == "f_mse":
            ax.set_yscale("log")
    fig.suptitle("leakage from gradients by round")
    return _save_figure(fig, path)


def _isnan(value: Any) -> bool:
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def summary_table(summary: Mapping[str, Any]) -> str:
    """The summary as a small text table: metric, from gradients, from features."""
    grad = summary.get("from_gradients", {})
    feat = summary.get("from_features", {})
    lines = [f"{'metric':<20} {'from gradients':>22} {'from features':>22}"]
    for name in SUMMARY_METRICS:
        if name not in grad and name not in feat:
            continue
        lines.append(f"{_LABELS[name]:<20} {_cell(grad.get(name)):>22} {_cell(feat.get(name)):>22}")
    return "\n".join(lines)


def _cell(stats: Any) -> str:
    mean = _mean(stats)
    if mean is None:
        return "-"
    assert isinstance(stats, Mapping)
    std = stats.get("std")
    return f"{mean:.3g} ± {float(std or 0.0):.2g} (n={int(stats.get('n', 0))})"


def summarize(
    rows: Sequence[Mapping[str, Any]], settings: AuditSettings
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``from_gradients`` and ``from_features`` statistics of the scored rows."""
    # A judge that was switched off scores nothing: its metric is left out, not NaN.
    off = {"speaker_reid_rate"} if not settings.speaker else set()
    off |= {"content_rate"} if not settings.content else set()

    def stats(prefix: str, with_features: bool) -> dict[str, Any]:
        table: list[dict[str, float]] = []
        for row in rows:
            if "label" not in row:
                continue  # a reconstructed sample left without a true partner
            entry: dict[str, float] = {}
            for metric, (col, ff) in SUMMARY_METRICS.items():
                if metric in off or (with_features and not ff):
                    continue
                value = row.get(prefix + col)
                entry[metric] = np.nan if value is None else float(value)
            table.append(entry)
        return summarize_table(table)

    # A raw-waveform run has no stage 2, hence no "from features" ceiling.
    has_ff = any(key.startswith(FF_PREFIX) for row in rows for key in row)
    return stats("", False), (stats(FF_PREFIX, True) if has_ff else {})


def write_outputs(
    out: Path,
    jobs: Sequence[Job],
    results: Mapping[str, Mapping[str, Any]],
    rows: Sequence[dict[str, Any]],
    settings: AuditSettings,
    scored: bool,
    counts: Mapping[str, int],
    t_start: float,
) -> dict[str, Any]:
    """leakage.csv, summary.json and the summary plots from all selected captures.

    Returns
    -------
    dict
        The content of ``summary.json`` (NaN as None).
    """
    write_csv(out / "leakage.csv", rows, LEAKAGE_COLUMNS)
    grad, feat = summarize(rows, settings) if scored else ({}, {})
    info: dict[str, Any] = {}
    for job in jobs:  # the judges are fitted once per audit; any capture's copy will do
        info = {**dict(results[job.name].get("scorer") or {}), **info}
    summary: dict[str, Any] = {
        "from_gradients": grad,
        "from_features": feat,
        "scored": scored,
        "captures": len(jobs),
        "samples": len(rows),
        "rounds": sorted({job.server_round for job in jobs}),
        **info,
        "stage1": {
            **counts,
            "seconds": sum(float(results[j.name]["stage1"]["seconds"]) for j in jobs),
            "iterations": sum(int(results[j.name]["stage1"]["iterations"]) for j in jobs),
        },
        "settings": dataclasses.asdict(settings),
        "columns": {"from_features_prefix": FF_PREFIX, "from_features": list(FEATURE_COLUMNS)},
        "seconds": time.perf_counter() - t_start,
    }
    if scored and rows:
        # The floor a reader compares against: what an attacker who learned nothing scores.
        summary["random_guess"] = random_guess(rows)
        summary["clips"] = clip_coverage(rows)
    write_json(out / "summary.json", summary)
    if scored and rows:
        summary_plot(out / "summary.png", summary)
        if len(summary["rounds"]) > 1:
            leakage_by_round_plot(out / "leakage_by_round.png", rows)
    return clean_json(summary)  # type: ignore[no-any-return]


#: STOI from which a reconstructed clip counts as recovered in ``summary.json``'s ``clips``.
RECOVERED_STOI = 0.6


def clip_coverage(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """How many of the clips behind the audited captures were recovered, and how well.

    ``in_updates`` counts the distinct clips each capture was computed from (its truth;
    None when a row predates the column), ``reconstructed`` the samples stage 1 produced
    (each scored against its best-matching true clip), ``recovered`` those with STOI of at
    least :data:`RECOVERED_STOI`. ``note`` says so in words when the captures held more clips
    than were reconstructed.

    Examples
    --------
    >>> rows = [{"capture": "a", "update_clips": 3, "stoi": 0.7}, {"capture": "a", "stoi": 0.2}]
    >>> c = clip_coverage([{**r, "update_clips": 3} for r in rows])
    >>> c["in_updates"], c["reconstructed"], c["recovered"]
    (3, 2, 1)
    """
    per_capture: dict[str, Any] = {}
    for row in rows:
        per_capture.setdefault(str(row.get("capture")), row.get("update_clips"))
    known = all(v not in (None, "") for v in per_capture.values())
    in_updates = sum(int(v) for v in per_capture.values()) if known else None
    stois = [_as_float(row.get("stoi")) for row in rows]
    recovered = sum(1 for v in stois if np.isfinite(v) and v >= RECOVERED_STOI)
    out: dict[str, Any] = {
        "in_updates": in_updates,
        "reconstructed": len(rows),
        "recovered": recovered,
        "recovered_stoi_at_least": RECOVERED_STOI,
    }
    if in_updates is not None and in_updates > len(rows):
        out["note"] = (
            f"the captures were computed from {in_updates} clips; the attack reconstructed "
            f"{len(rows)} and scored each against its best-matching true clip"
        )
    out["text"] = (
        f"{recovered} of {in_updates if in_updates is not None else len(rows)} clips "
        f"recovered with STOI >= {RECOVERED_STOI}"
    )
    return out


def random_guess(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean F-MSE, PESQ-NB and STOI of the random guess over the rows that have one.

    The guess is stage 1's starting point (the seeded normal draw the attack starts from)
    passed through stage 2 and scored against the same true clips: what an attacker who
    learned nothing from the update would score. ``n`` is how many rows were scored; an
    audit made before the guess existed has none (``n`` = 0, the means NaN).

    Examples
    --------
    >>> random_guess([{"guess_stoi": "0.25", "guess_pesq_nb": ""}, {"guess_stoi": 0.35}])["stoi"]
    0.3
    """
    scores: dict[str, list[float]] = {c: [] for c in GUESS_COLUMNS}
    n = 0
    for row in rows:
        if not any(GUESS_PREFIX + c in row for c in GUESS_COLUMNS):
            continue
        n += 1
        for c in GUESS_COLUMNS:
            value = _as_float(row.get(GUESS_PREFIX + c))
            if math.isfinite(value):
                scores[c].append(value)
    return {"n": n, **{c: float(np.mean(v)) if v else math.nan for c, v in scores.items()}}


def _as_float(value: Any) -> float:
    """A CSV cell or a number as a float; empty or missing is NaN."""
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
