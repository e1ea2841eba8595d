"""Reconstructions per hour: fedspeech's attack against the plain per-sample loop, one run.

Both attack the same shared gradients at the study's settings (Li, Zhang, Liu: keyword CNN,
Mel front-end, batch 1, one local step at the initial weights, the same weights for every
clip, as for the captures of one round; each clip's gradient is taken with its spoken digit
as the label, as a client's would be). The plain loop is the
study's algorithm: one sample at a time, 8000 Adam iterations, two restarts, no early stop
(:func:`attacks.features.reconstruct_plain`). fedspeech's (:func:`attacks.features.reconstruct`)
stops iterations and restarts once converged and batches independent targets (``--methods``):
at the study's constant Adam step size (``--preset study`` in ``fedspeech audit``) in this
process and split over ``--workers`` processes of one thread each; split, with
``--extra-restarts`` (not the study's: further restarts for the clips none of whose restarts
converged, within the plain loop's steps per clip); and with fedspeech's default schedule
(``--lr-start``, 0.1: a larger first step divided at each plateau down to 0.001, each
decrease continuing from the best iterate) in this process and split. All reconstructions
go through the same stage 2 and are scored with PESQ-NB and STOI against the original
clips. The plain loop and the in-process runs get the same torch threads (``--threads``,
default all cores), the split runs one per process; all use the same objective
(``--tv-reduction``, default the audit's ``mean``).

Usage::

    python benchmarks/bench_attack.py                      # FSDD clips from ../shared/data
    python benchmarks/bench_attack.py --samples 8 --plain-samples 2 --threads 1
    python benchmarks/bench_attack.py --seed 2 --methods schedule schedule-split
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attacks.features import Stage1Settings, reconstruct, reconstruct_plain
from attacks.labels import recover_labels
from attacks.scoring import METRICS
from attacks.target import AttackTarget
from attacks.waveform import features_to_wave
from fedspeech.data.corpus import fix_length
from fedspeech.fileio import atomic_write_json
from fedspeech.frontends import build_frontend
from fedspeech.models import build_model
from fedspeech.tasks.prepare import peak_normalize
from fedspeech.training import compute_gradient

METHODS = ("constant", "constant-split", "extra", "schedule", "schedule-split")
FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "recordings"


def clips(n: int, seed: int) -> tuple[np.ndarray, torch.Tensor]:
    """``n`` one-second FSDD test clips at 16 kHz and their spoken digits ``(n,)`` (eSpeak
    words if FSDD is absent)."""
    if FSDD.is_dir():
        from fedspeech.data.audio import read_clip, resample

        files = sorted(p for p in FSDD.glob("*.wav") if int(p.stem.split("_")[2]) < 5)
        pick = np.random.default_rng(seed).choice(len(files), n, replace=False)
        waves, digits = [], []
        for i in pick:
            x, sr = read_clip(files[int(i)])
            waves.append(fix_length(resample(x, sr, 16000)))
            digits.append(int(files[int(i)].stem.split("_")[0]))
        return peak_normalize(np.stack(waves)), torch.tensor(digits)
    from fedspeech.data.audio import resample
    from fedspeech.data.espeak import ESpeak
    from fedspeech.data.synth import WORDS

    tts = ESpeak()
    waves = [
        fix_length(resample(tts.synth(WORDS[i % 10]), tts.sample_rate, 16000)) for i in range(n)
    ]
    return peak_normalize(np.stack(waves)), torch.arange(n) % 10


def targets(
    waves: np.ndarray, labels: torch.Tensor, seed: int
) -> tuple[list[AttackTarget], torch.Tensor]:
    """One shared gradient per labelled clip, all at the same initial weights (one round's
    captures)."""
    frontend = build_frontend("mel")
    with torch.no_grad():
        feats = frontend(torch.from_numpy(waves))
    torch.manual_seed(seed)
    model = build_model("kws-cnn")
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    out = []
    for i in range(len(waves)):
        grads = compute_gradient(model, feats[i : i + 1], labels[i : i + 1])
        out.append(
            AttackTarget(
                model=model,
                params=params,
                grads=grads,
                kind="gradient",
                batch_size=1,
                capture_id=f"s{i}",
            )
        )
    return out, feats


def score_each(features: list[torch.Tensor], waves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PESQ-NB and STOI ``(n,)`` of each clip's reconstruction through stage 2."""
    pesq, stoi = [], []
    for f, w in zip(features, waves, strict=True):
        rec = features_to_wave(f[0].numpy(), "mel")
        pesq.append(METRICS.get("pesq_nb")(w, rec))
        stoi.append(METRICS.get("stoi")(w, rec))
    return np.asarray(pesq, dtype=float), np.asarray(stoi, dtype=float)


def means(scores: tuple[np.ndarray, np.ndarray], n: int | None = None) -> tuple[float, float]:
    """Mean PESQ-NB and STOI of the first ``n`` clips (all: None) that could be scored."""
    pesq, stoi = scores
    return float(np.nanmean(pesq[:n])), float(np.nanmean(stoi[:n]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--samples", type=int, default=32, help="targets for fedspeech's attack (one round's)"
    )
    ap.add_argument("--plain-samples", type=int, default=4, help="targets for the plain loop")
    ap.add_argument("--iterations", type=int, default=8000)
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tv-reduction", choices=["mean", "sum"], default="mean")
    ap.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads for every in-process method (default: all cores)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes of one thread each for the split run (default: one per core; 1: skip)",
    )
    ap.add_argument(
        "--extra-restarts",
        type=int,
        default=4,
        help="restarts beyond --restarts, within the plain loop's steps per clip, for the "
        "clips none of whose restarts converged (method 'extra')",
    )
    ap.add_argument(
        "--lr-start",
        type=float,
        default=0.1,
        help="first step size of the scheduled runs (methods 'schedule' and 'schedule-split'; "
        "fedspeech's default)",
    )
    ap.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(METHODS),
        help="fedspeech runs to time beside the plain loop: the study's constant step in "
        "this process and split over --workers processes, with --extra-restarts (split), "
        "and fedspeech's default schedule (--lr-start) in this process and split",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=Path("runs/bench_attack.json"),
        help="where to save every method's summary and per-clip scores (JSON)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}; TV: {args.tv_reduction}")
    if args.workers < 2 and any(m.endswith("split") or m == "extra" for m in args.methods):
        ap.error("--workers must be at least 2 for the split methods")
    # The study's settings: a constant step of 0.01 (--preset study in fedspeech audit).
    shared = dict(
        iterations=args.iterations,
        restarts=args.restarts,
        seed=args.seed,
        tv_reduction=args.tv_reduction,
    )
    common = Stage1Settings.preset("study", **shared)
    # fedspeech's default schedule: from --lr-start down to the default --lr (0.001).
    sched = Stage1Settings(lr_start=args.lr_start, **shared)

    waves, digits = clips(args.samples, args.seed)
    tgts, feats = targets(waves, digits, args.seed)
    labels = [recover_labels(t) for t in tgts]
    label_acc = float(
        np.mean([int(lab[0]) == int(d) for lab, d in zip(labels, digits, strict=True)])
    )
    n_plain = min(args.plain_samples, args.samples)

    runs: dict[str, tuple[float, list]] = {}
    # (name, settings, worker processes) of each method asked for by --methods.
    split = f", {args.workers} processes"
    available: dict[str, tuple[str, Stage1Settings, int]] = {
        "constant": ("constant step", common, 1),
        "constant-split": ("constant step" + split, common, args.workers),
        "extra": (
            f"+{args.extra_restarts} restarts" + split,
            dataclasses.replace(common, extra_restarts=args.extra_restarts),
            args.workers,
        ),
        "schedule": (f"--lr-start {args.lr_start:g}", sched, 1),
        "schedule-split": (f"--lr-start {args.lr_start:g}" + split, sched, args.workers),
    }
    methods = [available[m] for m in args.methods]
    for name, settings, workers in methods:
        t = time.perf_counter()
        recs = reconstruct(tgts, labels, settings, workers=workers)
        runs[name] = (time.perf_counter() - t, recs)
        print(f"{name}: {runs[name][0]:.1f} s", flush=True)
    t = time.perf_counter()
    plain = [reconstruct_plain(tgts[i], labels[i], common) for i in range(n_plain)]
    plain_s = time.perf_counter() - t
    print(f"plain loop: {plain_s:.1f} s", flush=True)

    plain_rate = n_plain / plain_s * 3600
    # Each reconstruction goes through stage 2 and is scored once.
    scored = {"plain": score_each([r.features for r in plain], waves[:n_plain])}
    for name, (_, recs) in runs.items():
        scored[name] = score_each([r.features for r in recs], waves)

    def clip_fmse(i: int, rec: Any) -> float:
        return float(((rec.features - feats[i : i + 1]) ** 2).mean())

    def fmse(recs: list) -> float:
        return float(np.mean([clip_fmse(i, r) for i, r in enumerate(recs)]))

    print(f"\nlabel accuracy (iDLG): {label_acc:.2f}")
    print(
        f"{'method':<50}{'samples':>8}{'seconds':>10}{'recon/hour':>12}{'ratio':>8}"
        f"{'iters/sample':>14}{'F-MSE':>10}{'PESQ-NB':>9}{'STOI':>7}"
    )
    pp, ps = means(scored["plain"])
    print(
        f"{'plain loop (the study)':<50}{n_plain:>8}{plain_s:>10.1f}{plain_rate:>12.0f}"
        f"{1.0:>8.1f}{np.mean([r.iterations for r in plain]):>14.0f}{fmse(plain):>10.2e}"
        f"{pp:>9.3f}{ps:>7.3f}"
    )
    for name, (secs, recs) in runs.items():
        rate = args.samples / secs * 3600
        fp, fs = means(scored[name], n_plain)
        ap_, as_ = means(scored[name])
        print(
            f"{'fedspeech, ' + name + ', same clips':<50}{n_plain:>8}{'':>10}{'':>12}{'':>8}"
            f"{np.mean([r.iterations for r in recs[:n_plain]]):>14.0f}{fmse(recs[:n_plain]):>10.2e}"
            f"{fp:>9.3f}{fs:>7.3f}"
        )
        print(
            f"{'fedspeech, ' + name + ', all clips':<50}{args.samples:>8}{secs:>10.1f}"
            f"{rate:>12.0f}{rate / plain_rate:>8.1f}{np.mean([r.iterations for r in recs]):>14.0f}"
            f"{fmse(recs):>10.2e}{ap_:>9.3f}{as_:>7.3f}"
        )
    for name, (secs, _) in runs.items():
        rate = args.samples / secs * 3600
        fp, fs = means(scored[name], n_plain)
        verdict = "equal or better" if fp >= pp and fs >= ps else "WORSE"
        print(
            f"{name}: {rate / plain_rate:.1f}x the plain loop (target >= 20x); on the "
            f"{n_plain} clips both attacked PESQ-NB {fp:.3f} vs {pp:.3f}, STOI {fs:.3f} vs "
            f"{ps:.3f}: {verdict}"
        )

    def rows(recs: list, scores: tuple[np.ndarray, np.ndarray]) -> list[dict]:
        return [
            {
                "clip": i,
                "label": int(digits[i]),
                "matching_loss": float(r.matching_loss),
                "iterations": int(r.iterations),
                "f_mse": clip_fmse(i, r),
                # PESQ scores a silent reconstruction NaN; JSON has null for it.
                "pesq_nb": None if np.isnan(scores[0][i]) else float(scores[0][i]),
                "stoi": None if np.isnan(scores[1][i]) else float(scores[1][i]),
            }
            for i, r in enumerate(recs)
        ]

    saved = {
        "settings": {**vars(args), "out": str(args.out), "torch_threads": torch.get_num_threads()},
        "label_accuracy": label_acc,
        "methods": {
            "plain": {"seconds": plain_s, "clips": rows(plain, scored["plain"])},
            **{
                name: {
                    "seconds": secs,
                    "ratio": args.samples / secs / (n_plain / plain_s),
                    "clips": rows(recs, scored[name]),
                }
                for name, (secs, recs) in runs.items()
            },
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, saved, indent=1)

    print("\nper clip attacked by the plain loop (matching loss, PESQ-NB, STOI):")
    cols = [("plain", plain)] + [(name, recs[:n_plain]) for name, (_, recs) in runs.items()]
    print(f"{'clip':>4}" + "".join(f"{name[:26]:>28}" for name, _ in cols))
    for i in range(n_plain):
        cells = [
            f"{res[i].matching_loss:>10.2g}{scored[name][0][i]:>9.2f}{scored[name][1][i]:>9.2f}"
            for name, res in cols
        ]
        print(f"{i:>4}" + "".join(cells))
    print(f"\nsaved to {args.out}")


if __name__ == "__main__":
    main()
