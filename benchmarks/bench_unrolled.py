"""Cost of the unrolled update model: seconds and peak memory per reconstruction against K.

    python benchmarks/bench_unrolled.py [--steps 1 2 4 8] [--batch 1] [--iterations 200]

For each K, one update of K local SGD steps with momentum 0.5 (``--batch`` clips a step,
each step on new clips, FSDD-shaped 32 x 32 Mel inputs, the keyword CNN at its initial
weights) is attacked by stage 1 with the unrolled model
(:func:`attacks.local_training.replay_update` inside :func:`attacks.features.reconstruct`)
for exactly ``--iterations`` steps (no early stop; for K > 1 after the averaged pass of as
many steps that orders the labels, :mod:`attacks.features.step_order`), in a fresh process
with one torch thread. Printed: seconds per reconstruction, seconds per
stage-1 step, the peak resident memory the reconstruction added to the process, and both
as ratios to the smallest K (linear growth in K would be ratios equal to K / K_min). Also
the averaged model on the same update, as the reference of what one gradient costs.
``--epochs E --clips N`` replaces the K list by one update of ``E`` passes over ``N`` clips
at ``--batch`` (e.g. ``--epochs 3 --clips 96 --batch 32``: the memory bound of the issue).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from typing import Any

MOMENTUM = 0.5


def _rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _one(job: dict[str, Any], queue: Any) -> None:
    """In a fresh process: build the update, attack it, report time and memory."""
    import numpy as np
    import torch

    from attacks.features import Stage1Settings, reconstruct
    from attacks.target import target_from_capture
    from fedspeech.capture import Capture
    from fedspeech.models import build_model
    from fedspeech.training import train_local
    from fedspeech.training.local import local_batches

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("kws-cnn")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    clips, batch, epochs, steps = job["clips"], job["batch"], job["epochs"], job["steps"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((clips, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, clips)
    batches = local_batches(
        np.arange(clips), seed=0, server_round=1, client_id=0, batch_size=batch,
        epochs=epochs, steps=steps,
    )  # fmt: skip
    # Momentum makes a one-step update go through the replay too (a plain one-step SGD
    # update is its gradient, attacked without replaying); it costs the replay nothing.
    train_local(model, x, y, batches, lr=0.1, momentum=MOMENTUM)
    cap = Capture(
        kind="update",
        server_round=1,
        client_id=0,
        num_examples=sum(len(b) for b in batches),
        global_weights=state,
        shared=model.state_dict(),
        model="kws-cnn",
        frontend="mel",
        model_kwargs={"num_classes": 10, "input_shape": [32, 32]},
        training={"lr": 0.1, "momentum": MOMENTUM, "batch_size": batch, "local_epochs": epochs,
                  "local_steps": steps},
    )  # fmt: skip
    target = target_from_capture(cap, update_model=job["model"])
    it = job["iterations"]
    # The study's constant step: every job runs exactly ``it`` steps.
    settings = Stage1Settings.preset(
        "study", iterations=it, restarts=1, patience=it + 1, floor=0.0, skip_below=0.0
    )
    before = _rss_mb()
    t0 = time.perf_counter()
    reconstruct([target], [torch.from_numpy(y[: target.batch_size])], settings)
    seconds = time.perf_counter() - t0
    queue.put({"seconds": seconds, "added_mb": _rss_mb() - before, "clips": target.batch_size})


def measure(job: dict[str, Any]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_one, args=(job, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return {**job, **out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=0)
    ap.add_argument("--clips", type=int, default=0)
    ap.add_argument("--out", default="runs/bench_unrolled.json")
    args = ap.parse_args(argv)
    if min(args.steps) < 1 or args.batch < 1 or args.iterations < 1:
        print(
            "bench_unrolled: error: --steps, --batch and --iterations must be >= 1", file=sys.stderr
        )
        return 2
    if args.epochs > 0:
        jobs = [{"clips": args.clips, "batch": args.batch, "epochs": args.epochs, "steps": 0}]
    else:
        jobs = [
            {"clips": k * args.batch, "batch": args.batch, "epochs": 1, "steps": k}
            for k in args.steps
        ]
    results = []
    for job in jobs:
        for model in ("unrolled", "averaged"):
            r = measure({**job, "model": model, "iterations": args.iterations})
            results.append(r)
            print(
                f"K={job['steps'] or job['epochs'] * -(-job['clips'] // job['batch'])} "
                f"clips={r['clips']} {model}: {r['seconds']:.1f} s, "
                f"{1000 * r['seconds'] / args.iterations:.1f} ms/step, +{r['added_mb']:.0f} MB",
                flush=True,
            )
    unrolled = [r for r in results if r["model"] == "unrolled"]
    if len(unrolled) > 1:
        base = unrolled[0]
        print(
            "\n| K | clips | s per reconstruction | × smallest K | peak MB added | × smallest K |"
        )
        print("|---|---|---|---|---|---|")
        for r in unrolled:
            t_ratio = r["seconds"] / base["seconds"]
            m_ratio = r["added_mb"] / max(base["added_mb"], 1e-9)
            print(
                f"| {r['steps']} | {r['clips']} | {r['seconds']:.1f} | {t_ratio:.2f} "
                f"| {r['added_mb']:.0f} | {m_ratio:.2f} |"
            )
    from pathlib import Path

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
