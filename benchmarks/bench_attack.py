"""Reconstructions per hour: fedspeech's attack against the plain per-sample loop, one run.

Both attack the same shared gradients at the study's settings (Li, Zhang, Liu: keyword CNN,
Mel front-end, batch 1, one local step at the initial weights, the same weights for every
clip, as for the captures of one round). The plain loop is the
study's algorithm: one sample at a time, 8000 Adam iterations, two restarts, no early stop
(:func:`attacks.features.reconstruct_plain`). fedspeech's (:func:`attacks.features.reconstruct`)
stops iterations and restarts once converged and batches independent targets, once at the
study's constant Adam step size and once (``--lr-start``, default 0.1) starting at a larger
step divided at each plateau down to the study's 0.01. All reconstructions go through the
same stage 2 and are scored with PESQ-NB and STOI against the original clips. Every method
gets the same torch threads (``--threads``, default all cores, as ``fedspeech audit``).

Usage::

    python benchmarks/bench_attack.py                      # FSDD clips from ../shared/data
    python benchmarks/bench_attack.py --samples 8 --plain-samples 2 --threads 1
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from attacks.features import reconstruct, reconstruct_plain
from attacks.labels import recover_labels
from attacks.scoring import METRICS
from attacks.target import AttackTarget
from attacks.waveform import features_to_wave
from fedspeech.data.corpus import fix_length
from fedspeech.frontends import build_frontend
from fedspeech.models import build_model
from fedspeech.prepare import peak_normalize
from fedspeech.training import compute_gradient

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "recordings"


def clips(n: int, seed: int) -> np.ndarray:
    """``n`` one-second FSDD test clips at 16 kHz (or eSpeak words if FSDD is absent)."""
    if FSDD.is_dir():
        from fedspeech.data.audio import read_clip, resample

        files = sorted(p for p in FSDD.glob("*.wav") if int(p.stem.split("_")[2]) < 5)
        pick = np.random.default_rng(seed).choice(len(files), n, replace=False)
        waves = []
        for i in pick:
            x, sr = read_clip(files[int(i)])
            waves.append(fix_length(resample(x, sr, 16000)))
        return peak_normalize(np.stack(waves))
    from fedspeech.data.audio import resample
    from fedspeech.data.espeak import ESpeak
    from fedspeech.data.synth import WORDS

    tts = ESpeak()
    waves = [
        fix_length(resample(tts.synth(WORDS[i % 10]), tts.sample_rate, 16000)) for i in range(n)
    ]
    return peak_normalize(np.stack(waves))


def targets(waves: np.ndarray, seed: int) -> tuple[list[AttackTarget], torch.Tensor]:
    """One shared gradient per clip, all at the same initial weights (one round's captures)."""
    frontend = build_frontend("mel")
    with torch.no_grad():
        feats = frontend(torch.from_numpy(waves))
    torch.manual_seed(seed)
    model = build_model("kws-cnn")
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    labels = torch.arange(len(waves)) % 10
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
    ap.add_argument("--samples", type=int, default=16, help="targets for fedspeech's attack")
    ap.add_argument("--plain-samples", type=int, default=4, help="targets for the plain loop")
    ap.add_argument("--iterations", type=int, default=8000)
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads for every method (default: all cores, as fedspeech audit uses)",
    )
    ap.add_argument(
        "--lr-start",
        type=float,
        default=0.1,
        help="first step size of the scheduled fedspeech run (0: skip that run)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()} (every method)")

    waves = clips(args.samples, args.seed)
    tgts, feats = targets(waves, args.seed)
    labels = [recover_labels(t) for t in tgts]
    label_acc = float(np.mean([int(lab[0]) == i % 10 for i, lab in enumerate(labels)]))

    t = time.perf_counter()
    fast = reconstruct(
        tgts, labels, iterations=args.iterations, restarts=args.restarts, seed=args.seed
    )
    fast_s = time.perf_counter() - t
    sched: list = []
    sched_s = math.nan
    if args.lr_start > 0:
        t = time.perf_counter()
        sched = reconstruct(
            tgts,
            labels,
            iterations=args.iterations,
            restarts=args.restarts,
            seed=args.seed,
            lr_start=args.lr_start,
        )
        sched_s = time.perf_counter() - t
    n_plain = min(args.plain_samples, args.samples)
    t = time.perf_counter()
    plain = [
        reconstruct_plain(
            tgts[i], labels[i], iterations=args.iterations, restarts=args.restarts, seed=args.seed
        )
        for i in range(n_plain)
    ]
    plain_s = time.perf_counter() - t

    fast_rate = args.samples / fast_s * 3600
    plain_rate = n_plain / plain_s * 3600
    # Each reconstruction goes through stage 2 and is scored once.
    scored = {
        "plain": score_each([r.features for r in plain], waves[:n_plain]),
        "constant": score_each([r.features for r in fast], waves),
    }
    if sched:
        scored["--lr-start"] = score_each([r.features for r in sched], waves)
    fp, fs = means(scored["constant"], n_plain)
    pp, ps = means(scored["plain"])
    fp_all, fs_all = means(scored["constant"])
    fmse_fast = float(
        np.mean([((r.features - feats[i : i + 1]) ** 2).mean().item() for i, r in enumerate(fast)])
    )
    fmse_plain = float(
        np.mean([((r.features - feats[i : i + 1]) ** 2).mean().item() for i, r in enumerate(plain)])
    )
    print(f"\nlabel accuracy (iDLG): {label_acc:.2f}")
    print(
        f"{'method':<28}{'samples':>8}{'seconds':>10}{'recon/hour':>12}{'iters/sample':>14}"
        f"{'F-MSE':>10}{'PESQ-NB':>9}{'STOI':>7}"
    )
    print(
        f"{'plain loop (study)':<28}{n_plain:>8}{plain_s:>10.1f}{plain_rate:>12.0f}"
        f"{np.mean([r.iterations for r in plain]):>14.0f}{fmse_plain:>10.2e}{pp:>9.2f}{ps:>7.2f}"
    )
    print(
        f"{'fedspeech (same samples)':<28}{n_plain:>8}{'':>10}{'':>12}"
        f"{np.mean([r.iterations for r in fast[:n_plain]]):>14.0f}{'':>10}{fp:>9.2f}{fs:>7.2f}"
    )
    print(
        f"{'fedspeech (all, batched)':<28}{args.samples:>8}{fast_s:>10.1f}{fast_rate:>12.0f}"
        f"{np.mean([r.iterations for r in fast]):>14.0f}{fmse_fast:>10.2e}{fp_all:>9.2f}"
        f"{fs_all:>7.2f}"
    )
    print(
        f"throughput ratio fedspeech / plain: {fast_rate / plain_rate:.1f}x (target >= 10x), "
        f"PESQ-NB {fp:.2f} vs {pp:.2f}, STOI {fs:.2f} vs {ps:.2f} on the same samples"
    )
    if sched:
        sp, ss = means(scored["--lr-start"], n_plain)
        sp_all, ss_all = means(scored["--lr-start"])
        rate = args.samples / sched_s * 3600
        fmse = float(
            np.mean(
                [((r.features - feats[i : i + 1]) ** 2).mean().item() for i, r in enumerate(sched)]
            )
        )
        name = f"--lr-start {args.lr_start:g}"
        print(
            f"{'fedspeech ' + name + ' (same)':<28}{n_plain:>8}{'':>10}{'':>12}"
            f"{np.mean([r.iterations for r in sched[:n_plain]]):>14.0f}{'':>10}{sp:>9.2f}"
            f"{ss:>7.2f}"
        )
        print(
            f"{'fedspeech ' + name + ' (all)':<28}{args.samples:>8}{sched_s:>10.1f}{rate:>12.0f}"
            f"{np.mean([r.iterations for r in sched]):>14.0f}{fmse:>10.2e}{sp_all:>9.2f}"
            f"{ss_all:>7.2f}"
        )
        print(
            f"throughput ratio fedspeech {name} / plain: {rate / plain_rate:.1f}x, PESQ-NB "
            f"{sp:.2f} vs {pp:.2f}, STOI {ss:.2f} vs {ps:.2f} on the same samples; on all "
            f"{args.samples}: PESQ-NB {sp_all:.2f} vs {fp_all:.2f} and STOI {ss_all:.2f} vs "
            f"{fs_all:.2f} for the constant step"
        )

    print("\nper clip attacked by the plain loop (matching loss, PESQ-NB, STOI):")
    runs = [("plain", plain), ("constant", fast[:n_plain])]
    if sched:
        runs.append(("--lr-start", sched[:n_plain]))
    print(f"{'clip':>4}" + "".join(f"{name:>28}" for name, _ in runs))
    for i in range(n_plain):
        cells = [
            f"{res[i].matching_loss:>10.2g}{scored[name][0][i]:>9.2f}{scored[name][1][i]:>9.2f}"
            for name, res in runs
        ]
        print(f"{i:>4}" + "".join(cells))


if __name__ == "__main__":
    main()
