"""Run the alignment comparison of ``experiments/dpda.toml`` and print its table.

Every (alignment, seed) pair of the file's ``[experiment]`` table is one ``fedspeech simulate
--config FILE --alignment A --seed S`` run (a fresh process each, in ``OUT/A-sS``); runs whose
``metrics.json`` already holds every round are not run again, so an interrupted comparison
resumes. The table gives, per alignment method, the final EER on seen and on held-out attacks
(mean ± sample standard deviation over the seeds, in %), the conflict rate measured by the
clients (fraction of local steps with ``cos(g_clean, g_aug) < 0``, mean over rounds and seeds)
and the seconds the rounds of one run took (mean; Ray start-up and data loading excluded).
It is printed and written to ``OUT/table.md`` and ``OUT/summary.json``.

Usage::

    python experiments/dpda.py                          # experiments/dpda.toml, runs/dpda
    python experiments/dpda.py experiments/dpda.toml --out runs/dpda --print-only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from fedspeech.fileio import atomic_write_json, atomic_write_text

HERE = Path(__file__).resolve().parent


def read_grid(path: Path) -> tuple[dict[str, Any], list[str], list[int]]:
    """The ``[simulate]`` base settings and the ``[experiment]`` grid of ``path``."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    grid = data.get("experiment", {})
    return dict(data.get("simulate", {})), list(grid["alignments"]), list(grid["seeds"])


def finished(run: Path, rounds: int) -> bool:
    """Whether ``run/metrics.json`` holds all ``rounds`` rounds."""
    path = run / "metrics.json"
    if not path.is_file():
        return False
    return len(json.loads(path.read_text(encoding="utf-8"))["rounds"]) >= rounds


def run_one(config: Path, alignment: str, seed: int, out: Path) -> float:
    """One simulation in a child process; returns its wall time in seconds."""
    cmd = [sys.executable, "-m", "fedspeech", "simulate", "--config", str(config)]
    cmd += ["--alignment", alignment, "--seed", str(seed), "--out", str(out), "--quiet"]
    # An unfinished run in ``out`` (interrupted) is started again from scratch.
    cmd += ["--overwrite"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=os.environ.copy())
    return time.perf_counter() - t0


def _mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    mean = 100 * statistics.fmean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else math.nan
    return f"{mean:.1f} ± {std:.1f}"


def summarise(out: Path, alignments: list[str], seeds: list[int]) -> dict[str, Any]:
    """Per-method final EERs, conflict rates and wall times of the finished runs."""
    summary: dict[str, Any] = {}
    for name in alignments:
        rows = []
        for seed in seeds:
            path = out / f"{name}-s{seed}" / "metrics.json"
            if path.is_file():
                m = json.loads(path.read_text(encoding="utf-8"))
                if m["final"] is None:
                    continue
                rates = [r["conflict_rate"] for r in m["rounds"] if "conflict_rate" in r]
                rows.append(
                    {
                        "seed": seed,
                        "eer": m["final"]["eer"],
                        "eer_unseen": m["final"]["eer_unseen"],
                        "conflict_rate": statistics.fmean(rates) if rates else None,
                        "seconds": sum(r["seconds"] for r in m["rounds"]),
                    }
                )
        summary[name] = rows
    return summary


def table(summary: dict[str, Any]) -> str:
    """Markdown table of :func:`summarise`'s result."""
    lines = [
        "| alignment | seeds | EER seen (%) | EER unseen (%) | conflict rate | round s per run |",
        "|---|---|---|---|---|---|",
    ]
    for name, rows in summary.items():
        eer = [r["eer"] for r in rows if r["eer"] is not None]
        unseen = [r["eer_unseen"] for r in rows if r["eer_unseen"] is not None]
        rates = [r["conflict_rate"] for r in rows if r["conflict_rate"] is not None]
        rate = f"{statistics.fmean(rates):.3f}" if rates else "n/a"
        secs = f"{statistics.fmean(r['seconds'] for r in rows):.0f}" if rows else "n/a"
        lines.append(
            f"| {name} | {len(rows)} | {_mean_std(eer)} | {_mean_std(unseen)} | {rate} | {secs} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=str(HERE / "dpda.toml"))
    parser.add_argument("--out", default="runs/dpda", help="folder of the runs and the table")
    parser.add_argument("--print-only", action="store_true", help="only tabulate finished runs")
    args = parser.parse_args()
    config, out = Path(args.config), Path(args.out)
    base, alignments, seeds = read_grid(config)
    rounds = int(base.get("rounds", 1))
    if not args.print_only:
        for name in alignments:
            for seed in seeds:
                run = out / f"{name}-s{seed}"
                if finished(run, rounds):
                    continue
                secs = run_one(config, name, seed, run)
                print(f"{name} seed {seed}: {secs:.0f} s", file=sys.stderr, flush=True)
    summary = summarise(out, alignments, seeds)
    text = table(summary)
    atomic_write_text(out / "table.md", text + "\n")
    atomic_write_json(out / "summary.json", summary, indent=1)
    print(text)


if __name__ == "__main__":
    main()
