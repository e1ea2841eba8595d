"""What each defense costs a round, against the undefended round, side by side in one run.

A client's round as the simulation runs it (``fedspeech.federation.client_app``): local SGD
over its batches of keyword features (the keyword CNN, 32 x 32 inputs as the built-in
corpus, one torch thread; 58 steps of 16 clips by default, a client of
``experiments/fsdd.toml``), then the defense on what it sends; for ``central`` and
``secagg`` also the server's share: Flower's central-DP wrapper adding noise to the
aggregate, and the weighted mean of the replies a secure aggregate is. Every mode is timed
``--repeat`` times, interleaved, and the median of each ratio to the undefended round is
printed. A second line compares one DP-SGD step (Opacus' ghost clipping) with one plain
SGD step on the same batch: the issue's target is at most 3x for the keyword CNN. A third
does the same for the default detector of ``--task sdd`` (aasist-xs, 4,000-sample clips,
batches of 16, RawBoost and PCGrad): one private dual-path step (each clip's two
gradients by its own backward passes, :func:`fedspeech.training.dp_sgd.train_dp_dual_path`)
against one plain dual-path step.

Usage::

    python benchmarks/bench_defenses.py                  # 3 repeats, 58 batches of 16
    python benchmarks/bench_defenses.py --repeat 5 --batches 8
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg

from fedspeech.augment import build_augmentation
from fedspeech.models import build_model
from fedspeech.training import train_local
from fedspeech.training.defense import Defense, defend_reply
from fedspeech.training.dp_sgd import train_dp_dual_path, train_dp_sgd
from fedspeech.training.dual_path import train_dual_path
from fedspeech.training.sdd import augment_fn

MODES: dict[str, Defense] = {
    "none": Defense(),
    "central (clip + server noise)": Defense(dp="central", clip=1.0, noise=1.0),
    "local (clip + noise)": Defense(dp="local", clip=1.0, noise=0.1),
    "sgd (DP-SGD)": Defense(dp="sgd", clip=5.0, noise=1.0),
    "prune 0.9": Defense(prune_ratio=0.9),
    "quantise 4 bits": Defense(quantize_bits=4),
    "secagg (server mean)": Defense(secagg=True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    # 58: a client of experiments/fsdd.toml, 450 clips, 2 epochs of batches of 16.
    ap.add_argument("--batches", type=int, default=58, help="local steps per round")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--clients", type=int, default=6, help="replies the server aggregates")
    args = ap.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)  # a line per noise draw otherwise
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("kws-cnn")
    start = {k: v.clone() for k, v in model.state_dict().items()}
    n = args.batches * args.batch_size
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, n)
    batches = [np.arange(i, i + args.batch_size) for i in range(0, n, args.batch_size)]
    central = DifferentialPrivacyClientSideFixedClipping(
        FedAvg(), noise_multiplier=1.0, clipping_norm=1.0, num_sampled_clients=args.clients
    )

    def client_round(defense: Defense) -> dict[str, torch.Tensor]:
        model.load_state_dict(start)
        if defense.dp == "sgd":
            assert defense.clip is not None
            train_dp_sgd(model, x, y, batches, lr=0.05, clip=defense.clip, noise=defense.noise)
        else:
            train_local(model, x, y, batches, lr=0.05, clip_norm=5.0)
        reply = {k: v.clone() for k, v in model.state_dict().items()}
        if defense.active:
            reply = defend_reply(start, reply, "update", 0.05, defense, (0, 1, 0))
        return reply

    def server_share(defense: Defense, reply: dict[str, torch.Tensor]) -> None:
        if defense.dp == "central":
            central._add_noise_to_aggregated_arrays(ArrayRecord(reply))
        if defense.secagg:
            mean = {k: v.double() * 0 for k, v in reply.items()}
            for _ in range(args.clients):
                for k, v in reply.items():
                    mean[k] += v.double() / args.clients

    def timed(fn: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    client_round(Defense())  # warm-up
    client_round(MODES["sgd (DP-SGD)"])
    seconds: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(args.repeat):
        for mode, defense in MODES.items():
            seconds[mode].append(
                timed(lambda d=defense: server_share(d, client_round(d)))  # type: ignore[misc]
            )
    print(f"one client round: {args.batches} steps of {args.batch_size} clips, keyword CNN")
    print(f"{'defense':32s} {'median s':>9s} {'ratio to none':>14s}")
    for mode in MODES:
        med = statistics.median(seconds[mode])
        ratios = [s / b for s, b in zip(seconds[mode], seconds["none"], strict=True)]
        print(f"{mode:32s} {med:9.3f} {statistics.median(ratios):14.2f}")

    # One step: DP-SGD against plain SGD on the same batch.
    step = [batches[0]]
    plain_s: list[float] = []
    dp_s: list[float] = []
    for _ in range(max(args.repeat, 5)):
        model.load_state_dict(start)
        plain_s.append(timed(lambda: train_local(model, x, y, step, lr=0.05)))
        model.load_state_dict(start)
        dp_s.append(timed(lambda: train_dp_sgd(model, x, y, step, lr=0.05, clip=5.0, noise=1.0)))
    ratio = statistics.median(d / p for d, p in zip(dp_s, plain_s, strict=True))
    print(
        f"one step of {args.batch_size}: plain {statistics.median(plain_s):.3f} s, "
        f"DP-SGD {statistics.median(dp_s):.3f} s, ratio {ratio:.2f} (target <= 3)"
    )
    dual_path_step(args.repeat, args.batch_size)


def dual_path_step(repeat: int, batch_size: int) -> None:
    """One private against one plain dual-path step of the default detector."""
    model = build_model("aasist-xs", num_classes=2, num_samples=4000)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal((batch_size, 4000))).astype(np.float32)
    y = rng.integers(0, 2, batch_size)
    step = [np.arange(batch_size)]
    aug = build_augmentation("rawboost:4")

    def plain() -> None:
        model.load_state_dict(start)
        train_dual_path(
            model, x, y, step, augment=augment_fn(aug, np.random.default_rng(0)),
            alignment="pcgrad", lr=3e-3, optimizer="adam",
        )  # fmt: skip

    def private() -> None:
        model.load_state_dict(start)
        train_dp_dual_path(
            model, x, y, step, augment=augment_fn(aug, np.random.default_rng(0)),
            alignment="pcgrad", lr=3e-3, optimizer="adam", clip=1.0, noise=1.0,
        )  # fmt: skip

    plain()
    private()  # warm-up
    plain_s: list[float] = []
    dp_s: list[float] = []
    for _ in range(max(repeat, 5)):
        t0 = time.perf_counter()
        plain()
        plain_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        private()
        dp_s.append(time.perf_counter() - t0)
    ratio = statistics.median(d / p for d, p in zip(dp_s, plain_s, strict=True))
    print(
        f"one dual-path step of {batch_size} clips, aasist-xs: plain "
        f"{statistics.median(plain_s):.3f} s, DP-SGD {statistics.median(dp_s):.3f} s, "
        f"ratio {ratio:.2f}"
    )


if __name__ == "__main__":
    main()
