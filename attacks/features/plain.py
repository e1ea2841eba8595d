"""Stage 1 exactly as the speech study runs it: one target, fixed iterations, no early stop.

Li, Zhang, Liu, "Speech privacy leakage from shared gradients in distributed learning",
following Zhu et al.'s DLG: Adam on the features from a standard-normal start,
minimising the gradient distance plus a total-variation prior, a fixed number of
iterations per restart, keeping the restart with the lower final matching loss.
"""

from __future__ import annotations

import time

import torch
from torch.nn import functional as F

from attacks.features.objective import (
    DISTANCES,
    Reconstruction,
    initial_features,
    resolve_distance,
    total_variation,
)
from attacks.features.settings import Stage1Settings
from attacks.local_training import replay_update
from attacks.target import AttackTarget
from fedspeech.errors import ConfigError

__all__ = ["reconstruct_plain"]


def reconstruct_plain(
    target: AttackTarget,
    labels: torch.Tensor,
    settings: Stage1Settings = Stage1Settings.preset("study"),
) -> Reconstruction:
    """Recover the input ``(B, *input_shape)`` behind ``target``'s gradient (the baseline).

    Parameters
    ----------
    target : AttackTarget
        Model, global weights and shared gradient.
    labels : torch.Tensor
        ``(B,)`` labels, e.g. from :func:`attacks.labels.recover_labels`.
    settings : Stage1Settings
        Its ``iterations`` (Adam steps per restart, all of them: 8000 in the study),
        ``restarts`` (the one with the lower final matching loss is kept), ``lr`` (a
        constant step), ``tv_weight``, ``tv_reduction``, ``distance`` and ``seed`` (of the
        starts) apply; the fast loop's schedule, stopping and batching options are ignored.
        Default: the study's (``Stage1Settings.preset("study")``).

    Returns
    -------
    Reconstruction
        Final iterate of the best restart; ``iterations`` counts all restarts.
    """
    if tuple(labels.shape) != (target.batch_size,):
        shape = tuple(labels.shape)
        raise ConfigError(f"labels have shape {shape}, expected ({target.batch_size},)")
    iterations, restarts, lr = settings.iterations, settings.restarts, settings.lr
    tv_weight, tv_reduction, seed = settings.tv_weight, settings.tv_reduction, settings.seed
    unrolled = target.local_training is not None
    dist = DISTANCES.get(resolve_distance(settings.distance, unrolled)).direct
    start = time.perf_counter()
    model = target.model
    names = list(target.grads)
    params = dict(model.named_parameters())
    plist = [params[n] for n in names]
    device = plist[0].device
    ref = [target.grads[n].to(device) for n in names]
    # A pruned update: only the entries the client kept are matched.
    mask = [target.mask[n].to(device) for n in names] if target.mask is not None else None
    y = labels.to(device=device, dtype=torch.long)
    shape = (target.batch_size, *target.input_shape)
    tv_dims = len(target.input_shape)

    # A dual-path update: the mean of the clean and the (expected) augmented path's gradients.
    keep = target.second_path.to(device) if target.second_path is not None else None

    plan = target.local_training
    fixed = {n: params[n].detach() for n in names}
    buffers = dict(model.named_buffers())

    def matching(u: torch.Tensor, create_graph: bool) -> torch.Tensor:
        if plan is not None:
            # The client's local steps replayed on the candidates (torch.func, so that the
            # outer autograd differentiates through every step).
            update = replay_update(model, fixed, buffers, u, y, plan, keep)
            replayed = [update[n] for n in names]
            if mask is not None:
                replayed = [g * m for g, m in zip(replayed, mask, strict=True)]
            return dist(replayed, ref)
        loss = F.cross_entropy(model(u), y)
        if keep is not None:
            # Two forward passes, as the client ran them: each path has its own batch.
            loss = 0.5 * (loss + F.cross_entropy(model(u * keep), y))
        grads = torch.autograd.grad(loss, plist, create_graph=create_graph)
        if mask is not None:
            grads = tuple(g * m for g, m in zip(grads, mask, strict=True))
        return dist(grads, ref)

    best_u: torch.Tensor | None = None
    best_loss = float("inf")
    for restart in range(restarts):
        u = initial_features(shape, seed, restart, device, target.init_std).requires_grad_(True)
        opt = torch.optim.Adam([u], lr=lr)
        for _ in range(iterations):
            opt.zero_grad(set_to_none=True)
            obj = matching(u, True) + tv_weight * total_variation(u, tv_dims, tv_reduction)
            (grad_u,) = torch.autograd.grad(obj, [u])
            u.grad = grad_u
            opt.step()
        final = float(matching(u, False).detach())
        if best_u is None or final < best_loss:
            best_u, best_loss = u.detach().clone(), final
    assert best_u is not None
    return Reconstruction(
        features=best_u.cpu(),
        labels=y.cpu(),
        matching_loss=best_loss,
        iterations=iterations * restarts,
        restarts_run=restarts,
        seconds=time.perf_counter() - start,
    )
