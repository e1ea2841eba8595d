"""A dual-path aligned local step against a plain single-path step, in one run.

Truong et al. (arXiv:2509.20682) align the gradients of a clean and an augmented path: two
forward and two backward passes plus the aggregation, so a step should cost at most about
2.2 times a plain step (one forward and backward pass over the same clean batch). This
script times, on the same model, batch and thread count:

* ``plain``: one forward, one backward and an Adam step on the clean batch;
* ``none``, ``pcgrad``, ``gradvac``, ``cagrad``, ``upgrad``: :func:`dual_path_step` with that
  aligner (``none`` = the mean of the two gradients);
* ``roga``: one RoGA step (Qiu et al.) on ``[x; augment(x)]`` with the two paths as domains,
  as ``--alignment roga --roga-domains path`` runs it (a SAM-style method: two passes per
  domain, so about twice a dual-path step by construction). The default ``--roga-domains
  attack`` splits the same examples among more, smaller domains and takes one more forward
  and backward pass per path for the clean-vs-augmented cosine; it is not timed here.

The augmented batch is made once, outside the timed region, so the ratios compare training
steps; the augmentation's own time per batch is printed on its own line. Each method is
warmed up, then timed ``--repeats`` times, interleaved with the other methods (so that a
change of machine load hits all alike); the median is reported.

Usage::

    python benchmarks/bench_dual_path.py                       # aasist-xs, 16 × 0.25 s clips
    python benchmarks/bench_dual_path.py --model aasist-l --clip-samples 16000 --batch-size 8
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

from fedspeech.augment import build_augmentation
from fedspeech.models import build_model
from fedspeech.training.aligners import Aggregator, build_aligner
from fedspeech.training.dual_path import build_optimizer, dual_path_step, trainable_parameters
from fedspeech.training.roga import RoGA

ALIGNERS = ("none", "pcgrad", "gradvac", "cagrad", "upgrad")


def timed(fn: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """Wall times (s) of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="aasist-xs")
    parser.add_argument("--clip-samples", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--augment", default="rawboost:4")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(
        (0.1 * rng.standard_normal((args.batch_size, args.clip_samples))).astype(np.float32)
    )
    y = torch.from_numpy((np.arange(args.batch_size) % 2).astype(np.int64))
    aug = build_augmentation(args.augment)
    aug_times = timed(lambda: aug.batch(x, rng), 1, args.repeats)
    x_aug = aug.batch(x, rng)
    init = copy.deepcopy(build_model(args.model, num_samples=args.clip_samples).state_dict())

    def fresh() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        model = build_model(args.model, num_samples=args.clip_samples)
        model.load_state_dict(init)
        model.train()
        return model, build_optimizer("adam", trainable_parameters(model), lr=1e-3)

    steps: dict[str, Callable[[], object]] = {}

    model, opt = fresh()

    def plain(m: torch.nn.Module = model, o: torch.optim.Optimizer = opt) -> None:
        o.zero_grad(set_to_none=True)
        F.cross_entropy(m(x), y).backward()
        o.step()

    steps["plain"] = plain
    for name in ALIGNERS:
        model, opt = fresh()
        aligner = build_aligner(name)

        def dual(
            m: torch.nn.Module = model, o: torch.optim.Optimizer = opt, a: Aggregator = aligner
        ) -> None:
            dual_path_step(m, o, x, y, lambda _: x_aug, a)

        steps[name] = dual
    model, opt = fresh()
    roga = RoGA(model, opt, rho=0.1, alpha=2e-4)
    xx, yy = torch.cat([x, x_aug]), torch.cat([y, y])
    paths = torch.cat([torch.zeros_like(y), torch.ones_like(y)])
    steps["roga"] = lambda: roga.step(xx, yy, paths)

    # Interleaved: every repeat times each method once, so a change of machine load
    # during the run affects all methods alike.
    for fn in steps.values():
        timed(fn, args.warmup, 0)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, fn in steps.items():
            times[name] += timed(fn, 0, 1)
    results = {name: statistics.median(t) for name, t in times.items()}

    print(
        f"model {args.model}, batch {args.batch_size} x {args.clip_samples} samples, "
        f"{args.threads} thread(s), median of {args.repeats} after {args.warmup} warm-up"
    )
    print(f"{'step':<8} {'seconds':>8} {'x plain':>8}")
    for name, sec in results.items():
        print(f"{name:<8} {sec:>8.3f} {sec / results['plain']:>8.2f}")
    med = statistics.median(aug_times)
    print(f"{args.augment} on one batch (not in the steps above): {med:.3f} s")


if __name__ == "__main__":
    main()
