"""Which recovered label goes with which local step, for an update whose steps are replayed.

Labels are recovered from an update as a multiset (:mod:`attacks.labels.count`): which
step trained on which label is not in it. For one gradient that does not matter (the
samples of a batch are interchangeable), but a replayed update takes each step at other
weights, so a label attached to the wrong step is a wrong model of the update (in a trial
on FSDD updates of 4 one-clip steps, labels in ascending order left the replay at a far
higher matching loss than labels in the client's order).

:func:`order_labels` finds the order in two cheap passes. The averaged model
(:mod:`attacks.target`: one gradient of all the clips, blind to the order) first recovers
``(clip, label)`` pairs; then the pairs are put in the order whose replayed update is
closest to the captured one, by best-improvement swaps of two pairs from different steps
(a local search: ``N^2 / 2`` replays per pass, no optimisation of the clips). The replayed
attack then runs with the labels in that order, its first restart starting from fresh random
clips or, with ``Stage1Settings.unrolled_start == "averaged"``, from the pass's clips in that
order.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence

import torch

from attacks.features.objective import DISTANCES, resolve_distance
from attacks.features.settings import Stage1Settings
from attacks.local_training import replay_update
from attacks.target import AttackTarget

__all__ = ["MAX_ORDERED_CLIPS", "best_order", "order_labels"]

#: Most candidate clips whose step order is searched (a pass replays ``N^2 / 2`` orders).
MAX_ORDERED_CLIPS = 32

Reconstruct = Callable[[Sequence[AttackTarget], Sequence[torch.Tensor], Stage1Settings], list]


def best_order(
    target: AttackTarget, clips: torch.Tensor, labels: torch.Tensor, distance: str
) -> list[int]:
    """The order of the ``(clip, label)`` pairs whose replay best matches ``target``.

    Parameters
    ----------
    target : AttackTarget
        An unrolled target (``target.local_training`` set).
    clips : torch.Tensor
        ``(N, *input_shape)`` candidate clips, e.g. the averaged model's reconstruction.
    labels : torch.Tensor
        ``(N,)`` their labels.
    distance : str
        A registered gradient distance.

    Returns
    -------
    list[int]
        A permutation ``p`` of ``range(N)``: slot ``k`` gets pair ``p[k]``.
    """
    plan = target.local_training
    assert plan is not None
    names = list(target.grads)
    model = copy.deepcopy(target.model)
    params = {n: target.params[n] for n in names}
    buffers = dict(model.named_buffers())
    ref = [target.grads[n] for n in names]
    mask = [target.mask[n] for n in names] if target.mask is not None else None
    dist = DISTANCES.get(distance).direct
    keep = target.second_path
    # Slots that appear in the same steps are interchangeable: swapping them changes nothing.
    steps_of: list[list[int]] = [[] for _ in range(plan.clips)]
    for k, batch in enumerate(plan.batches):
        for slot in batch:
            steps_of[slot].append(k)

    def loss(order: list[int]) -> float:
        upd = replay_update(model, params, buffers, clips[order], labels[order], plan, keep)
        got = [upd[n] for n in names]
        if mask is not None:
            got = [g * m for g, m in zip(got, mask, strict=True)]
        return float(dist(got, ref).detach())

    order = list(range(plan.clips))
    best = loss(order)
    while True:
        found: tuple[float, int, int] | None = None
        for a in range(len(order)):
            for b in range(a + 1, len(order)):
                if steps_of[a] == steps_of[b] or int(labels[order[a]]) == int(labels[order[b]]):
                    continue
                trial = list(order)
                trial[a], trial[b] = trial[b], trial[a]
                value = loss(trial)
                if value < best and (found is None or value < found[0]):
                    found = (value, a, b)
        if found is None:
            return order
        best, a, b = found
        order[a], order[b] = order[b], order[a]


def order_labels(
    targets: Sequence[AttackTarget],
    labels: Sequence[torch.Tensor],
    settings: Stage1Settings,
    reconstruct: Reconstruct,
) -> tuple[list[torch.Tensor], dict[int, tuple[int, float]], dict[int, torch.Tensor]]:
    """Labels in step order for the unrolled targets (others unchanged), the cost, the clips.

    Parameters
    ----------
    targets, labels : sequences
        What stage 1 was given.
    settings : Stage1Settings
        The pairs are recovered with these settings and the distance the replayed attack
        uses (``settings.distance`` resolved for an unrolled target).
    reconstruct : callable
        ``reconstruct(targets, labels, settings)``: the engine that recovers the pairs
        (:func:`attacks.features.batched.reconstruct_batched`).

    Returns
    -------
    labels : list[torch.Tensor]
        Per target, its labels, reordered for each unrolled target with 2 to
        :data:`MAX_ORDERED_CLIPS` clips and more than one distinct label.
    cost : dict[int, tuple[int, float]]
        Per reordered target, the averaged pass's steps and its share of the seconds.
    clips : dict[int, torch.Tensor]
        Per reordered target, the averaged pass's clips in the same step order
        ``(N, *input_shape)``: a start for the replayed attack
        (``Stage1Settings.unrolled_start``).
    """
    out = list(labels)
    chosen = [
        i
        for i, t in enumerate(targets)
        if t.local_training is not None
        and 1 < t.batch_size <= MAX_ORDERED_CLIPS
        and len(set(labels[i].tolist())) > 1
    ]
    if not chosen:
        return out, {}, {}
    start = time.perf_counter()
    distance = resolve_distance(settings.distance, unrolled=True)
    averaged = [dataclasses.replace(targets[i], local_training=None) for i in chosen]
    recs = reconstruct(
        averaged, [labels[i] for i in chosen], dataclasses.replace(settings, distance=distance)
    )
    cost: dict[int, tuple[int, float]] = {}
    starts: dict[int, torch.Tensor] = {}
    for i, rec in zip(chosen, recs, strict=True):
        clips = rec.features.to(targets[i].params[next(iter(targets[i].params))].device)
        order = best_order(targets[i], clips, rec.labels.to(clips.device), distance)
        out[i] = labels[i][torch.tensor(order)]
        starts[i] = clips[torch.tensor(order)]
    seconds = (time.perf_counter() - start) / len(chosen)
    for i, rec in zip(chosen, recs, strict=True):
        cost[i] = (rec.iterations, seconds)
    return out, cost, starts
