"""Stage 1, fast: :func:`reconstruct`, in this process or split over worker processes.

The optimisation itself is :mod:`attacks.features.batched` (early stopping, restart
skipping, many targets batched together); :mod:`attacks.features.workers` runs it in
several processes. Both take their options as one :class:`~attacks.features.Stage1Settings`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from attacks.features.batched import reconstruct_batched
from attacks.features.objective import Reconstruction
from attacks.features.settings import Stage1Settings
from attacks.features.workers import reconstruct_in_workers
from attacks.target import AttackTarget
from fedspeech.errors import ConfigError

__all__ = ["reconstruct"]


def reconstruct(
    targets: list[AttackTarget],
    labels: list[torch.Tensor],
    settings: Stage1Settings = Stage1Settings(),
    *,
    progress: Callable[[int, int], None] | None = None,
    on_result: Callable[[int, Reconstruction], None] | None = None,
    workers: int = 1,
) -> list[Reconstruction]:
    """Recover the features of many targets at once, stopping each when it converges.

    Same objective, optimiser, starts and restarts as
    :func:`attacks.features.reconstruct_plain` for the same ``settings`` (the study's
    algorithm), but ``settings.iterations`` is a cap per restart: see
    :mod:`attacks.features.batched` for the stopping rules and the batching.

    Parameters
    ----------
    targets : list[AttackTarget]
        Independent shared gradients; grouped by architecture, input shape and batch size.
    labels : list[torch.Tensor]
        ``(B,)`` labels per target.
    settings : Stage1Settings
        The search's options (checked when it was built).
    progress : callable, optional
        Called as ``progress(finished_targets, total_targets)`` after each target.
    on_result : callable, optional
        Called as ``on_result(i, reconstruction)`` as soon as target ``i`` is done (so that a
        caller can save it before the others finish); ``seconds`` is then the group's time so
        far split across its targets, and the returned list has the final split.
    workers : int
        Processes to split the targets over, one torch thread each
        (:mod:`attacks.features.workers`); 1 (default) runs them all in this process.

    Returns
    -------
    list[Reconstruction]
        One per target, in input order; ``features`` is the best iterate of the best
        restart, ``seconds`` the group's wall time split evenly across its targets.

    Raises
    ------
    ConfigError
        Labels that do not fit the targets, or ``workers`` below 1.
    """
    if len(labels) != len(targets):
        raise ConfigError(f"got {len(targets)} targets but {len(labels)} label tensors")
    for t, y in zip(targets, labels, strict=True):
        if tuple(y.shape) != (t.batch_size,):
            raise ConfigError(
                f"labels for {t.capture_id or 'a target'} have shape {tuple(y.shape)}, "
                f"expected ({t.batch_size},)"
            )
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if workers > 1 and len(targets) > 1:
        return reconstruct_in_workers(targets, labels, workers, settings, progress, on_result)
    return reconstruct_batched(targets, labels, settings, progress=progress, on_result=on_result)
