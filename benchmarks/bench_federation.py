"""Federated workload four ways in one run, plus memory against the number of clients.

1. plain Flower FedAvg (no capture wrapper),
2. fedspeech with capture (``--capture-clients`` given, ``all`` by default),
   and ``nocapture``: fedspeech capturing no client (``--capture-clients 0``),
3. the same clients, local steps and evaluation as a sequential PyTorch loop in one
   process, with one torch thread (``seq-1``) and with two (``seq-2``; ``--seq-threads``).

The simulation runs one client per core with one torch thread each, so on 2 cores a round
would ideally take 0.5x the one-thread loop; the two-thread loop is the best a single
process does with both cores.

Each mode runs in its own child process; a sampler sums the proportional set size (PSS) of
the child and all its descendants (Ray's GCS, raylet, workers) every 0.5 s. Ratios are
printed at the end. Ray start-up is reported separately: round 1 of a Flower run includes
starting the actors, so it is left out of the per-round comparison.

Usage::

    python benchmarks/bench_federation.py            # ~10 minutes on 2 cores
    python benchmarks/bench_federation.py --rounds 4 --skip-memory --seq-threads 1,2
    python benchmarks/bench_federation.py --rounds 8 --skip-memory --repeat 3 --train-floor
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakMemory(threading.Thread):
    """Samples the PSS of a process tree; ``peak`` is the largest sum seen."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self._halt = pid, 0, threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, sum(pss_bytes(p) for p in descendants(self.pid)))
            self._halt.wait(0.5)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def child(mode: str, args: argparse.Namespace, out: Path) -> None:
    """Run one mode in this (child) process and write its timings as JSON."""
    from fedspeech.config import SimConfig
    from fedspeech.fileio import atomic_write_json

    cfg = SimConfig.from_mapping(
        {
            "clients": args.clients,
            "fraction": args.fraction,
            "rounds": args.rounds,
            "partition": args.partition,
            "capture-clients": args.capture if mode == "capture" else "0",
            "out": str(out.parent / f"run-{mode}"),
            "overwrite": True,
            "seed": 0,
            "progress": False,
        }
    )
    t0 = time.perf_counter()
    if mode.startswith("seq-"):
        rounds = sequential(cfg, threads=int(mode.split("-")[1]))
    elif mode.startswith("train-"):  # train-K-of-N
        _, k, _, n = mode.split("-")
        rounds = [train_share(cfg, int(k), int(n), ready=out)]
    else:
        from fedspeech.federation.simulate import simulate

        if mode == "serial-eval":
            _evaluate_in_the_foreground()
        # nocapture and serial-eval: the wrapper, capturing none
        _, rec = simulate(cfg, plain=(mode == "plain"))
        rounds = [r["seconds"] for r in rec.rounds]
    atomic_write_json(out, {"rounds": rounds, "total": time.perf_counter() - t0})


def _evaluate_in_the_foreground() -> None:
    """Make the capture wrapper evaluate each round before the next one starts (as before
    evaluation moved to the background), to measure what the overlap buys."""
    from fedspeech.federation import server_app
    from fedspeech.federation.strategy import HonestButCuriousStrategy

    class Foreground(HonestButCuriousStrategy):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["evaluate_in_background"] = False
            super().__init__(*args, **kwargs)

    server_app.HonestButCuriousStrategy = Foreground  # type: ignore[misc]


def _prepared(cfg: Any, threads: int) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Set torch's threads, prepare the run: (run data, features, labels, model kwargs)."""
    import torch

    from fedspeech.federation.server_app import model_kwargs
    from fedspeech.tasks import prepare_run
    from fedspeech.tasks.prepare import open_features

    torch.set_num_threads(threads)
    data = prepare_run(cfg)
    feats, labels = open_features(str(data.features_path), str(data.labels_path))
    torch.manual_seed(cfg.seed)
    return data, feats, labels, model_kwargs(cfg, data)


def _train_client(
    cfg: Any, prepared: tuple[Any, Any, Any, dict[str, Any]], weights: Any, rnd: int, cid: int
) -> tuple[dict[str, Any], int]:
    """One client's local training in round ``rnd`` from ``weights``, as the simulation's
    client does it (one model per process, reused): (a copy of its new weights, examples
    seen)."""
    from fedspeech.federation.client_app import reusable_model
    from fedspeech.training import local_batches, train_local

    data, feats, labels, kwargs = prepared
    model = reusable_model(cfg.model, json.dumps(kwargs))
    model.load_state_dict(weights)
    model.zero_grad(set_to_none=True)
    batches = local_batches(
        data.partitions[cid],
        seed=cfg.seed,
        server_round=rnd,
        client_id=int(cid),
        batch_size=cfg.batch_size,
        epochs=cfg.local_epochs,
        steps=cfg.local_steps,
    )
    res = train_local(
        model,
        feats,
        labels,
        batches,
        lr=cfg.lr,
        momentum=cfg.momentum,
        clip_norm=cfg.clip_norm,
    )
    # The next client reuses the model: the loop keeps a copy, as a reply is one.
    return {k: v.clone() for k, v in model.state_dict().items()}, res.num_examples


def train_share(cfg: Any, k: int, n: int, ready: Path) -> float:
    """Seconds to train, on one torch thread, every ``n``-th client (from the ``k``-th) of
    each round's sample, rounds 2 on, from the initial model: local training alone, no
    aggregation, evaluation or messages. Two such processes side by side show how fast
    two clients train at once on this machine. The ``n`` processes start training together:
    each marks ``ready`` (its output path) once prepared and waits for the others'."""
    from fedspeech.federation.strategy import sample_clients
    from fedspeech.models import build_model

    prepared = _prepared(cfg, threads=1)
    start = build_model(cfg.model, **prepared[3]).state_dict()
    Path(f"{ready}.ready").touch()
    while len(list(ready.parent.glob(f"train-*-of-{n}.json.ready"))) < n:
        time.sleep(0.01)
    t = time.perf_counter()
    for rnd in range(2, cfg.rounds + 1):
        chosen = sample_clients(cfg.seed, rnd, cfg.clients, cfg.clients_per_round())
        for cid in chosen[k::n]:
            _train_client(cfg, prepared, start, rnd, cid)
    return time.perf_counter() - t


def train_floor(argv: list[str], tmp: Path) -> tuple[float, float]:
    """(one process training all clients, two processes training half each side by side),
    wall seconds, rounds 2 on."""
    alone = run_mode("train-0-of-1", argv, tmp)["rounds"][0]
    outs = [tmp / f"train-{k}-of-2.json" for k in (0, 1)]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", f"train-{k}-of-2", "--child-out", str(out), *argv]
        )
        for k, out in zip((0, 1), outs, strict=True)
    ]
    if any(proc.wait() != 0 for proc in procs):
        raise SystemExit("the side-by-side training processes failed")
    # Both started together; the pair takes as long as the slower one.
    pair = max(json.loads(out.read_text())["rounds"][0] for out in outs)
    return alone, pair


def sequential(cfg: Any, threads: int) -> list[float]:
    """The simulation's work, one client after another, in this process.

    The same clients per round (:func:`sample_clients`), local batches, SGD settings and
    test-set evaluation as the simulation; FedAvg weighted by examples.
    """
    import numpy as np

    from fedspeech.federation.strategy import sample_clients
    from fedspeech.models import build_model
    from fedspeech.training import evaluate

    prepared = _prepared(cfg, threads)
    data, feats, labels, kwargs = prepared
    test_x, test_y = np.ascontiguousarray(feats[data.test_indices]), labels[data.test_indices]
    glob = build_model(cfg.model, **kwargs)
    evaluate(glob, test_x, test_y)  # round 0, as the simulation does
    times = []
    for rnd in range(1, cfg.rounds + 1):
        t = time.perf_counter()
        chosen = sample_clients(cfg.seed, rnd, cfg.clients, cfg.clients_per_round())
        states, weights = [], []
        for cid in chosen:
            state, examples = _train_client(cfg, prepared, glob.state_dict(), rnd, cid)
            states.append(state)
            weights.append(examples)
        w = np.asarray(weights, dtype=np.float64) / sum(weights)
        glob.load_state_dict(
            {k: sum(float(wi) * s[k] for wi, s in zip(w, states, strict=True)) for k in states[0]}
        )
        evaluate(glob, test_x, test_y)
        times.append(time.perf_counter() - t)
    return times


def run_mode(mode: str, argv: list[str], tmp: Path) -> dict[str, Any]:
    out = tmp / f"{mode}.json"
    cmd = [sys.executable, __file__, "--child", mode, "--child-out", str(out), *argv]
    proc = subprocess.Popen(cmd)
    mem = PeakMemory(proc.pid)
    mem.start()
    rc = proc.wait()
    mem.stop()
    if rc != 0:
        raise SystemExit(f"mode {mode} failed with exit code {rc}")
    res: dict[str, Any] = json.loads(out.read_text())
    res["peak_pss_gb"] = mem.peak / 1e9
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--fraction", type=float, default=0.2)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--partition", default="speaker")
    ap.add_argument("--capture", default="all", help="clients captured per round in mode 2")
    ap.add_argument("--skip-memory", action="store_true", help="skip the 1000-client run")
    ap.add_argument(
        "--serial-eval",
        action="store_true",
        help="also run mode serial-eval: no capture, each round evaluated before the next",
    )
    ap.add_argument(
        "--train-floor",
        action="store_true",
        help="also time the clients' local training alone, in one process and in two "
        "side by side (the best a 2-process round can do on this machine)",
    )
    ap.add_argument(
        "--seq-threads",
        default="1,2",
        help="torch threads of the sequential loops, comma-separated (default 1,2)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the modes this many times, interleaved; ratios are medians over repeats",
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args, _ = ap.parse_known_args()
    if args.child:
        child(args.child, args, Path(args.child_out))
        return

    base = [
        "--clients",
        str(args.clients),
        "--fraction",
        str(args.fraction),
        "--rounds",
        str(args.rounds),
        "--partition",
        args.partition,
        "--capture",
        args.capture,
    ]
    with tempfile.TemporaryDirectory(prefix="fedspeech-bench-") as tmpd:
        tmp = Path(tmpd)
        seq_modes = [f"seq-{int(n)}" for n in args.seq_threads.split(",")]
        serial = ("serial-eval",) if args.serial_eval else ()
        modes = ("plain", *serial, "nocapture", "capture", *seq_modes)
        # Repeats interleave the modes (A B C, A B C, ...): the machine's speed drifts by
        # several percent over minutes, and a ratio of two modes run close together is
        # steadier than one of modes run minutes apart.
        reps: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        for _ in range(args.repeat):
            for m in modes:
                reps[m].append(run_mode(m, base, tmp))
        res = {m: reps[m][len(reps[m]) // 2] for m in modes}  # shown in the table
        floor = train_floor(base, tmp) if args.train_floor else None
        if not args.skip_memory:
            small = [
                "--clients",
                "50",
                "--fraction",
                "0.2",
                "--rounds",
                "3",
                "--partition",
                "iid",
                "--capture",
                "1",
            ]
            large = [
                "--clients",
                "1000",
                "--fraction",
                "0.01",
                "--rounds",
                "3",
                "--partition",
                "iid",
                "--capture",
                "1",
            ]
            mem50 = run_mode("capture", small, tmp)
            mem1000 = run_mode("capture", large, tmp)

    def steady(r: dict[str, Any]) -> float:
        return float(sum(r["rounds"][1:]))

    def mean_later(r: dict[str, Any]) -> float:
        return steady(r) / max(len(r["rounds"]) - 1, 1)

    def ratio(a: str, b: str) -> str:
        """Median over repeats of mode a's rounds 2.. over mode b's, and their range."""
        each = sorted(steady(x) / steady(y) for x, y in zip(reps[a], reps[b], strict=True))
        spread = f" (from {each[0]:.3f} to {each[-1]:.3f}, {len(each)} repeats)"
        return f"{statistics.median(each):.3f}{spread if len(each) > 1 else ''}"

    print(
        f"\nworkload: {args.clients} clients, fraction {args.fraction}, {args.rounds} rounds, "
        f"partition {args.partition}; capture mode captures {args.capture} per round"
    )
    if args.repeat > 1:
        print(f"each mode run {args.repeat} times, interleaved; the table shows the median run")
    print(f"{'mode':<12}{'round 1 s':>10}{'rounds 2.. s':>14}{'per round s':>13}{'peak GB':>9}")
    for m, r in res.items():
        print(
            f"{m:<12}{r['rounds'][0]:>10.2f}{steady(r):>14.2f}{mean_later(r):>13.2f}"
            f"{r['peak_pss_gb']:>9.2f}"
        )
    startup = res["capture"]["rounds"][0] - mean_later(res["capture"])
    print(f"Ray start-up (round 1 minus a later round, capture mode): {startup:.1f} s")
    print(f"capture / no capture (rounds 2..): {ratio('capture', 'nocapture')}  (target <= 1.05)")
    print(f"capture / plain Flower (rounds 2..): {ratio('capture', 'plain')}")
    if args.serial_eval:
        print(
            "no capture, evaluation overlapped / evaluated before the next round (rounds 2..): "
            f"{ratio('nocapture', 'serial-eval')}"
        )
    targets = {"seq-1": 0.6, "seq-2": 1.0}
    for mode in ("nocapture", "capture"):
        for seq in seq_modes:
            threads = seq.split("-")[1]
            target = f"  (target <= {targets[seq]})" if seq in targets else ""
            print(
                f"{mode} round / sequential loop with {threads} torch thread(s) (rounds 2..): "
                f"{ratio(mode, seq)}{target}"
            )
    if floor is not None:
        alone, pair = floor
        print(
            f"local training alone, rounds 2..: one process {alone:.2f} s, two side by side "
            f"{pair:.2f} s: {pair / alone:.3f} (0.5 if two cores were two independent ones)"
        )
    if not args.skip_memory:
        print(
            f"peak memory, 50 clients: {mem50['peak_pss_gb']:.2f} GB (target <= 3); "
            f"1000 clients, fraction 0.01: {mem1000['peak_pss_gb']:.2f} GB; ratio "
            f"{mem1000['peak_pss_gb'] / mem50['peak_pss_gb']:.3f} (target <= 1.2)"
        )


if __name__ == "__main__":
    main()
