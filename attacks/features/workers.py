"""Stage 1 in several worker processes, one torch thread each, targets split between them.

Each worker runs :func:`attacks.features.batched.reconstruct_batched` on its share. On a
small CPU the batched step of :func:`attacks.features.reconstruct` uses a second
intra-op thread poorly (hundreds of small operations per step), and the end of a run,
when only a few slow targets are left, steps them one or two at a time. Two processes with
one thread each, each optimising half of the targets as one batch, keep both cores busy
with larger operations (``benchmarks/bench_attack.py`` measures it beside one process).

Targets are dealt round-robin in decreasing order of their shared gradient's squared norm
(loud clips have large gradients and need the most steps: their features travel furthest
at Adam's fixed step size), so that the slowest ones do not all land in one worker. Each
target's result is the same as in one process, up to floating-point rounding: restarts,
starts and stopping rules are per target.

The targets travel to the workers through :mod:`torch.multiprocessing` (a ``spawn``
context: no forked copy of this process's thread pools); they are this process's own
objects, built from capture files by :func:`attacks.target.target_from_capture`, not data
read from anywhere else.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from typing import Any

import torch

from attacks.features.batched import reconstruct_batched
from attacks.features.objective import Reconstruction
from attacks.features.settings import Stage1Settings
from attacks.target import AttackTarget
from fedspeech.errors import MAIN_GUARD_HINT, check_main_guard

__all__ = ["deal", "reconstruct_in_workers"]

_FIELDS = ("features", "labels", "matching_loss", "iterations", "restarts_run", "seconds")


def deal(targets: Sequence[AttackTarget], workers: int) -> list[list[int]]:
    """Target indices per worker: round-robin over decreasing ``||g_shared||^2``.

    Examples
    --------
    >>> import torch
    >>> from attacks.target import AttackTarget
    >>> ts = [AttackTarget(None, {}, {"w": torch.tensor([float(v)])}, "gradient", 1)
    ...       for v in (1, 4, 2, 3)]
    >>> deal(ts, 2)
    [[1, 2], [3, 0]]
    """
    size = [sum(float(g.double().square().sum()) for g in t.grads.values()) for t in targets]
    order = sorted(range(len(targets)), key=lambda i: -size[i])
    n = max(1, min(workers, len(targets)))
    return [order[k::n] for k in range(n)]


def _work(
    targets: list[AttackTarget],
    labels: list[torch.Tensor],
    index: list[int],
    settings: Stage1Settings,
    queue: Any,
) -> None:
    """Body of one worker: reconstruct its targets, reporting each as it finishes."""
    try:
        torch.set_num_threads(1)

        def on_result(i: int, rec: Reconstruction) -> None:
            # Plain arrays, copied into the message: shared tensors would need this process
            # alive until the parent has read them.
            fields = {k: getattr(rec, k) for k in _FIELDS}
            fields["features"] = rec.features.numpy().copy()
            fields["labels"] = rec.labels.numpy().copy()
            queue.put(("done", index[i], fields))

        reconstruct_batched(targets, labels, settings, on_result=on_result)
        queue.put(("end", None, None))
    except BaseException:  # reported to the parent, which raises it
        queue.put(("error", None, traceback.format_exc()))


def reconstruct_in_workers(
    targets: list[AttackTarget],
    labels: list[torch.Tensor],
    workers: int,
    settings: Stage1Settings,
    progress: Callable[[int, int], None] | None = None,
    on_result: Callable[[int, Reconstruction], None] | None = None,
) -> list[Reconstruction]:
    """:func:`attacks.features.reconstruct` of ``targets`` split over ``workers`` processes.

    Parameters
    ----------
    targets, labels
        As for :func:`attacks.features.reconstruct`.
    workers : int
        Processes (at most one per target), one torch thread each.
    settings : Stage1Settings
        The search's options, the same in every worker.
    progress, on_result : callable, optional
        Called in this process as each target's result arrives.

    Returns
    -------
    list[Reconstruction]
        One per target, in input order.
    """
    check_main_guard()
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = []
    for index in deal(targets, workers):
        args = ([targets[i] for i in index], [labels[i] for i in index], index, settings, queue)
        proc = ctx.Process(target=_work, args=args, daemon=True)
        proc.start()
        procs.append(proc)
    results: dict[int, Reconstruction] = {}
    running = len(procs)
    try:
        while running:
            try:
                kind, i, payload = queue.get(timeout=5.0)
            except Exception:  # queue.Empty: check that nobody died silently
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    code = dead[0].exitcode
                    # Exit code 2: check_main_guard stopped a worker re-running the script.
                    why = f" ({MAIN_GUARD_HINT})" if code == 2 else ""
                    raise RuntimeError(
                        f"a stage-1 worker process ended with exit code {code}{why}"
                    ) from None
                continue
            if kind == "error":
                raise RuntimeError(f"a stage-1 worker process failed:\n{payload}")
            if kind == "end":
                running -= 1
                continue
            payload["features"] = torch.from_numpy(payload["features"])
            payload["labels"] = torch.from_numpy(payload["labels"])
            results[i] = Reconstruction(**payload)
            if on_result is not None:
                on_result(i, results[i])
            if progress is not None:
                progress(len(results), len(targets))
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()
    return [results[i] for i in range(len(targets))]
