"""The server's test-set pass at several batch sizes: wall time, CPU time, page faults.

``fedspeech.training.predict`` over random keyword features shaped like the built-in
corpus's test set (600 clips of 32 × 32), on ``--workers`` threads of one torch thread
each, as the simulation's server runs it. Each batch size is timed ``--repeat`` times after
one warm-up pass, side by side in one process; the logits are checked to be equal.

Usage::

    python benchmarks/bench_eval_batch.py                  # batches 512, 128, 64
    python benchmarks/bench_eval_batch.py --clips 1200 --batches 512,64
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from fedspeech.models import build_model
from fedspeech.training import predict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=600)
    ap.add_argument("--batches", default="512,128,64")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("kws-cnn")
    x = np.random.default_rng(0).standard_normal((args.clips, 32, 32)).astype(np.float32)
    reference: torch.Tensor | None = None
    print(f"{args.clips} clips, {args.workers} threads; per pass:")
    for size in (int(b) for b in args.batches.split(",")):
        logits = predict(model, x, size, workers=args.workers)
        before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(args.repeat):
            predict(model, x, size, workers=args.workers)
        wall = (time.perf_counter() - t0) / args.repeat
        after = resource.getrusage(resource.RUSAGE_SELF)
        same = "" if reference is None else f", logits equal: {torch.equal(logits, reference)}"
        reference = logits if reference is None else reference
        user = (after.ru_utime - before.ru_utime) / args.repeat
        system = (after.ru_stime - before.ru_stime) / args.repeat
        faults = (after.ru_minflt - before.ru_minflt) / args.repeat
        print(
            f"batch {size:4d}: wall {wall:.3f} s, user {user:.3f} s, system {system:.3f} s, "
            f"page faults {faults:.0f}{same}"
        )


if __name__ == "__main__":
    main()
