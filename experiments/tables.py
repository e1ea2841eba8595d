"""Print the leakage tables of audited runs as Markdown (the README's tables come from here).

Each RUN is a folder written by ``fedspeech simulate`` and audited by ``fedspeech audit``;
the numbers are read from ``RUN/audit/leakage.csv`` (one row per reconstructed sample),
``RUN/config.toml`` and ``RUN/metrics.json``.

* ``table2`` -- Li, Zhang, Liu's Table 2: waveform quality of stage 2 applied to the true
  features ("from features", the ceiling) and of the whole attack ("from gradients"),
  one row per run (e.g. Mel and MFCC).
* ``table3`` -- their Table 3: speaker re-identification (and, ours, content) rates.
* ``sweep`` -- leakage per run and per audited round (batch size and training round).
* ``alignment`` -- a ``fedspeech sweep experiments/kws_alignment.toml`` folder: accuracy,
  conflict rate and round-1 leakage per alignment method over the seeds.
* ``unrolled`` -- updates of several local steps attacked unrolled, averaged and as a
  gradient of the same clips (``experiments/unrolled_fsdd.sh``).
* ``waveform`` -- the audit of raw-waveform (``--task sdd``) runs, beside a random guess:
  the stage-1 start (normal noise of the attack's start scale) scored against the same
  originals with the same metrics.

Usage::

    python experiments/tables.py table2 runs/leak-mel runs/leak-mfcc
    python experiments/tables.py sweep runs/leak-b1 runs/leak-b2 runs/leak-b4 runs/leak-b8
    python experiments/tables.py waveform runs/leakage-sdd/dropout runs/leakage-sdd/no-dropout
    python experiments/tables.py alignment runs/kws_alignment
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path

Row = dict[str, str]


def read_run(run: Path) -> tuple[dict[str, object], list[Row]]:
    """The run's resolved config and its audit rows; exits with code 2 if either is missing."""
    csv_path = run / "audit" / "leakage.csv"
    if not csv_path.is_file() or not (run / "config.toml").is_file():
        print(
            f"tables: error: {run} is not an audited run (no config.toml or {csv_path})",
            file=sys.stderr,
        )
        sys.exit(2)
    cfg = tomllib.loads((run / "config.toml").read_text(encoding="utf-8"))["simulate"]
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["label"] != ""]
    return cfg, rows


def values(rows: Sequence[Row], column: str) -> list[float]:
    """The finite values of a column (empty cells and NaN are samples a score could not take)."""
    out = []
    for r in rows:
        try:
            v = float(r[column])
        except (KeyError, ValueError):
            continue
        if math.isfinite(v):
            out.append(v)
    return out


def mean(rows: Sequence[Row], column: str) -> float:
    v = values(rows, column)
    return sum(v) / len(v) if v else math.nan


def cell(rows: Sequence[Row], column: str, fmt: str = ".2f") -> str:
    """``mean ± std`` of a column (population std), with the count when some are missing."""
    v = values(rows, column)
    if not v:
        return "–"
    m = sum(v) / len(v)
    s = math.sqrt(sum((x - m) ** 2 for x in v) / len(v))
    text = f"{m:{fmt}} ± {s:{fmt}}"
    return text if len(v) == len(rows) else f"{text} (n={len(v)})"


def ratio(rows: Sequence[Row], column: str) -> str:
    """Mean from gradients over mean from features, on the samples both could score."""
    both = [r for r in rows if values([r], column) and values([r], "ff_" + column)]
    if not both:
        return "–"
    return f"{mean(both, column) / mean(both, 'ff_' + column):.3f}"


def audit_setting(run: Path, key: str) -> object:
    """One setting the run was audited with (``audit/summary.json``), or NaN."""
    summary = json.loads((run / "audit" / "summary.json").read_text(encoding="utf-8"))
    return summary.get("settings", {}).get(key, math.nan)


def tv_weight(run: Path) -> str:
    """The stage-1 total-variation weight and reduction the run was audited with."""
    reduction = audit_setting(run, "tv_reduction")
    # Audits from before --tv-reduction existed summed the total variation.
    reduction = reduction if isinstance(reduction, str) else "sum"
    return f"{audit_setting(run, 'tv_weight'):g} ({reduction})"


def budget(run: Path) -> str:
    """Stage-1 budget: restarts x step cap per restart."""
    return f"{audit_setting(run, 'restarts')} × {audit_setting(run, 'iterations')}"


def accuracy_before(run: Path, server_round: int) -> str:
    """Test accuracy of the global model the round's gradients were computed on."""
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    if server_round == 1:
        acc = (metrics.get("initial") or {}).get("accuracy")
    else:
        acc = next(
            (r["accuracy"] for r in metrics["rounds"] if r["round"] == server_round - 1), None
        )
    return "–" if acc is None else f"{acc:.3f}"


def table2(runs: Sequence[Path]) -> str:
    head = (
        "| front-end | TV weight | n | label acc. | F-MSE | PESQ-NB from features "
        "| PESQ-NB from gradients | ratio | PESQ-WB from features | PESQ-WB from gradients "
        "| STOI from features | STOI from gradients | ratio |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for run in runs:
        cfg, rows = read_run(run)
        lines.append(
            f"| {cfg['frontend']} | {tv_weight(run)} | {len(rows)} "
            f"| {mean(rows, 'label_correct'):.2f} | {cell(rows, 'f_mse', '.1e')} "
            f"| {cell(rows, 'ff_pesq_nb')} "
            f"| {cell(rows, 'pesq_nb')} | {ratio(rows, 'pesq_nb')} | {cell(rows, 'ff_pesq_wb')} "
            f"| {cell(rows, 'pesq_wb')} | {cell(rows, 'ff_stoi')} | {cell(rows, 'stoi')} "
            f"| {ratio(rows, 'stoi')} |"
        )
    return "\n".join(lines)


def table3(runs: Sequence[Path]) -> str:
    head = (
        "| front-end | TV weight | n | verifier EER | speaker re-id from features "
        "| from gradients | content from features | from gradients |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for run in runs:
        cfg, rows = read_run(run)
        summary = json.loads((run / "audit" / "summary.json").read_text(encoding="utf-8"))
        eer = summary.get("speaker_eer")
        lines.append(
            f"| {cfg['frontend']} | {tv_weight(run)} | {len(rows)} "
            f"| {'–' if eer is None else f'{eer:.3f}'} "
            f"| {cell(rows, 'ff_speaker_reidentified')} | {cell(rows, 'speaker_reidentified')} "
            f"| {cell(rows, 'ff_content_correct')} | {cell(rows, 'content_correct')} |"
        )
    return "\n".join(lines)


def shared(cfg: dict[str, object]) -> str:
    """What the clients shared: a gradient, or an update of N local steps."""
    if cfg.get("share", "gradient") == "gradient":
        return "gradient"
    steps = cfg.get("local-steps", 0)
    return f"update, {steps} steps" if steps else f"update, {cfg.get('local-epochs')} epochs"


def sweep(runs: Sequence[Path]) -> str:
    head = (
        "| front-end | stage-1 budget | shared | batch | round | test acc. of the attacked model "
        "| n | label acc. | F-MSE | PESQ-NB | PESQ-NB from features | STOI | STOI from features |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for run in runs:
        cfg, rows = read_run(run)
        for rnd in sorted({int(r["round"]) for r in rows}):
            sub = [r for r in rows if int(r["round"]) == rnd]
            lines.append(
                f"| {cfg['frontend']} | {budget(run)} | {shared(cfg)} | {cfg['batch-size']} "
                f"| {rnd} "
                f"| {accuracy_before(run, rnd)} "
                f"| {len(sub)} | {mean(sub, 'label_correct'):.2f} | {cell(sub, 'f_mse', '.1e')} "
                f"| {cell(sub, 'pesq_nb')} | {cell(sub, 'ff_pesq_nb')} | {cell(sub, 'stoi')} "
                f"| {cell(sub, 'ff_stoi')} |"
            )
    return "\n".join(lines)


def _stage1_seconds(run: Path) -> float:
    summary = json.loads((run / "audit" / "summary.json").read_text(encoding="utf-8"))
    return float(summary["stage1"]["seconds"]) / max(int(summary["captures"]), 1)


def unrolled(runs: Sequence[Path]) -> str:
    """Per update run RUN: the unrolled model (RUN), the averaged one by l2 (RUN-avg) and by
    cosine (RUN-avgcos), and the gradient of the same clips (RUN-grad), as
    experiments/unrolled_fsdd.sh makes them."""
    head = (
        "| shared | batch | model | n | label acc. | F-MSE | PESQ-NB | STOI "
        "| STOI ≥ 0.6 | stage-1 s per capture |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for run in runs:
        cfg, _ = read_run(run)
        for model, path in (
            ("unrolled (cosine)", run),
            ("averaged (l2)", run.with_name(run.name + "-avg")),
            ("averaged (cosine)", run.with_name(run.name + "-avgcos")),
            ("gradient of the same clips (l2)", run.with_name(run.name + "-grad")),
        ):
            _, rows = read_run(path)
            good = sum(1 for v in values(rows, "stoi") if v >= 0.6)
            lines.append(
                f"| {shared(cfg)} | {cfg['batch-size']} | {model} | {len(rows)} "
                f"| {mean(rows, 'label_correct'):.2f} | {cell(rows, 'f_mse', '.1e')} "
                f"| {cell(rows, 'pesq_nb')} | {cell(rows, 'stoi')} | {good}/{len(rows)} "
                f"| {_stage1_seconds(path):.0f} |"
            )
    return "\n".join(lines)


def starts(runs: Sequence[Path]) -> str:
    """Per update run RUN: the unrolled model from a random start (RUN-random) and from the
    averaged pass's clips (RUN-averaged), as experiments/unrolled_start.sh makes them."""
    head = (
        "| shared | batch | first restart starts | n | label acc. | matching loss per capture "
        "| F-MSE | PESQ-NB | STOI | STOI ≥ 0.6 | stage-1 s per capture |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for run in runs:
        cfg, _ = read_run(run.with_name(run.name + "-random"))
        for start in ("random", "averaged"):
            path = run.with_name(f"{run.name}-{start}")
            _, rows = read_run(path)
            good = sum(1 for v in values(rows, "stoi") if v >= 0.6)
            # One matching loss per capture (every row of a capture repeats it).
            losses = {r["capture"]: float(r["matching_loss"]) for r in rows}
            loss = ", ".join(f"{losses[c]:.3g}" for c in sorted(losses))
            lines.append(
                f"| {shared(cfg)} | {cfg['batch-size']} | {start} | {len(rows)} "
                f"| {mean(rows, 'label_correct'):.2f} | {loss} | {cell(rows, 'f_mse', '.1e')} "
                f"| {cell(rows, 'pesq_nb')} | {cell(rows, 'stoi')} | {good}/{len(rows)} "
                f"| {_stage1_seconds(path):.0f} |"
            )
    return "\n".join(lines)


def random_guess(run: Path, rows: Sequence[Row]) -> dict[str, str]:
    """Mean F-MSE, PESQ-NB and STOI of seeded start noise against the audited originals."""
    import numpy as np
    import soundfile as sf

    from attacks.scoring import METRICS
    from attacks.target import WAVEFORM_INIT_STD

    rng = np.random.default_rng(0)
    scores: dict[str, list[float]] = {"f_mse": [], "pesq_nb": [], "stoi": []}
    for r in rows:
        original, _ = sf.read(run / "audit" / "wav" / f"{r['capture']}_{r['index']}_original.wav")
        noise = WAVEFORM_INIT_STD * rng.standard_normal(original.shape)
        scores["f_mse"].append(float(np.mean((noise - original) ** 2)))
        for name in ("pesq_nb", "stoi"):
            scores[name].append(float(METRICS.get(name)(original, noise)))
    return {
        k: cell([{k: str(x)} for x in v], k, ".1e" if k == "f_mse" else ".2f")
        for k, v in scores.items()
    }


def waveform(runs: Sequence[Path]) -> str:
    head = (
        "| model | dropout | n | stage-1 budget | label acc. | F-MSE (waveform) | PESQ-NB | STOI "
        "| random guess: F-MSE | PESQ-NB | STOI |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for run in runs:
        cfg, rows = read_run(run)
        guess = random_guess(run, rows)
        lines.append(
            f"| {cfg['model']} | {'on' if cfg.get('dropout', True) else 'off'} | {len(rows)} "
            f"| {budget(run)} | {mean(rows, 'label_correct'):.2f} | {cell(rows, 'f_mse', '.1e')} "
            f"| {cell(rows, 'pesq_nb')} | {cell(rows, 'stoi')} | {guess['f_mse']} "
            f"| {guess['pesq_nb']} | {guess['stoi']} |"
        )
    return "\n".join(lines)


def _same_updates(a: Path, b: Path) -> tuple[int, int]:
    """How many of two leakage runs' captures send the same tensors, bit for bit, of how many."""
    import torch

    from fedspeech.capture import load_capture

    pairs = list(
        zip(sorted(a.glob("*.safetensors")), sorted(b.glob("*.safetensors")), strict=False)
    )
    same = 0
    for x, y in pairs:
        cx, cy = load_capture(x), load_capture(y)
        same += all(torch.equal(cx.shared[k], cy.shared[k]) for k in cx.shared)
    return same, len(pairs)


def alignment(runs: Sequence[Path]) -> str:
    """A ``fedspeech sweep experiments/kws_alignment.toml`` folder, one row per method.

    Variants are named ``METHOD-sSEED``. Per method, over its seeds: final accuracy and the
    mean conflict rate of the utility runs, and the round-1 leakage (label accuracy,
    PESQ-NB, STOI: each seed's mean over its clips) of the leakage runs; and how many of
    its leakage captures equal the ``none`` variant's of the same seed, bit for bit.
    """
    root = runs[0]
    rows: dict[str, list[dict[str, object]]] = {}
    for path in sorted(root.glob("*/row.json")):
        name = path.parent.name
        method, _, seed = name.rpartition("-s")
        row = json.loads(path.read_text(encoding="utf-8"))
        row["seed"] = seed
        rows.setdefault(method, []).append(row)
    if not rows:
        print(f"tables: error: {root} holds no finished variant (*/row.json)", file=sys.stderr)
        sys.exit(2)

    def stat(group: list[dict[str, object]], key: str, fmt: str = ".3f") -> str:
        v = [float(str(r[key])) for r in group if r.get(key) is not None]
        if not v:
            return "–"
        m = sum(v) / len(v)
        sd = math.sqrt(sum((x - m) ** 2 for x in v) / len(v))
        return f"{m:{fmt}} ± {sd:{fmt}}"

    lines = [
        "| method | seeds | accuracy | conflict rate | labels | PESQ-NB | STOI "
        "| updates equal to none's |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = ["plain", "none", "pcgrad", "gradvac", "cagrad", "upgrad"]
    methods = sorted(rows, key=lambda m: (order.index(m) if m in order else len(order), m))
    for method in methods:
        group = rows[method]
        same = total = 0
        if method not in ("none", "plain"):
            for r in group:
                other = root / f"none-s{r['seed']}" / "leakage" / "captures"
                if other.is_dir():
                    s, t = _same_updates(
                        root / f"{method}-s{r['seed']}" / "leakage" / "captures", other
                    )
                    same, total = same + s, total + t
        equal = f"{same} of {total}" if total else "–"
        lines.append(
            f"| {method} | {len(group)} | {stat(group, 'accuracy')} | "
            f"{stat(group, 'conflict_rate', '.4f')} | {stat(group, 'label_accuracy', '.2f')} | "
            f"{stat(group, 'pesq_nb')} | {stat(group, 'stoi')} | {equal} |"
        )
    return "\n".join(lines)


TABLES: dict[str, Callable[[Sequence[Path]], str]] = {
    "alignment": alignment,
    "table2": table2,
    "table3": table3,
    "sweep": sweep,
    "unrolled": unrolled,
    "starts": starts,
    "waveform": waveform,
}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table", choices=sorted(TABLES))
    ap.add_argument("runs", nargs="+", type=Path, metavar="RUN")
    args = ap.parse_args(argv)
    print(TABLES[args.table](args.runs))


if __name__ == "__main__":
    main()
