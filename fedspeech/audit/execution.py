"""Stage 1 of an audit: in this process, over worker processes, or as Ray tasks.

:func:`run_stage1` yields each capture's :class:`~fedspeech.audit.cache.Stage1Result` as it
is done. In this process, ``settings.chunk`` captures share one batched optimisation
(:func:`attacks.features.reconstruct`, split over ``settings.workers`` processes when more
than 1); with ``settings.ray_address`` each capture is one Ray task on one CPU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from attacks.features import Reconstruction, Stage1Settings, reconstruct
from attacks.labels import recover_labels
from attacks.target import AttackTarget
from fedspeech.audit.cache import Stage1Result
from fedspeech.audit.selection import Job, load_target
from fedspeech.audit.settings import AuditSettings
from fedspeech.cluster import check_reachable
from fedspeech.errors import FedspeechError

__all__ = ["run_stage1", "stage1_local", "stage1_ray"]


def run_stage1(
    jobs: Sequence[Job],
    settings: AuditSettings,
    note: Callable[[str], None],
    save: Callable[[Job, Stage1Result], None] | None = None,
) -> Iterator[tuple[Job, Stage1Result]]:
    """Stage 1 of ``jobs``, where ``settings`` say, yielded as each capture is done.

    ``save`` gets each result as soon as it exists, before the rest of its chunk (in this
    process), so that an interrupted audit keeps it.
    """
    if settings.ray_address:
        return stage1_ray(jobs, settings, note)
    return stage1_local(jobs, settings, note, save)


def stage1_local(
    jobs: Sequence[Job],
    settings: AuditSettings,
    note: Callable[[str], None],
    save: Callable[[Job, Stage1Result], None] | None = None,
) -> Iterator[tuple[Job, Stage1Result]]:
    """Stage 1 of ``jobs``, ``settings.chunk`` captures per batched optimisation."""
    n_chunks = -(-len(jobs) // settings.chunk)
    for k in range(n_chunks):
        chunk = list(jobs[k * settings.chunk : (k + 1) * settings.chunk])
        # Loaded per chunk: a capture holds two copies of the model, too many to keep all.
        targets = [load_target(job, settings.dual_path, settings.update_model) for job in chunk]
        labels = [recover_labels(t, settings.label_method) for t in targets]
        note(f"stage 1: chunk {k + 1}/{n_chunks} ({len(chunk)} captures)")

        def on_result(i: int, rec: Reconstruction, chunk: list[Job] = chunk) -> None:
            if save is not None:
                save(chunk[i], Stage1Result.from_reconstruction(rec))

        recs = reconstruct(
            targets, labels, settings.stage1, on_result=on_result, workers=settings.workers
        )
        del targets
        for job, rec in zip(chunk, recs, strict=True):
            yield job, Stage1Result.from_reconstruction(rec)


def _ray_task(target: AttackTarget, labels: torch.Tensor, settings: Stage1Settings) -> Any:
    """Body of one Ray task: stage 1 of one capture on one thread."""
    # Ray reserves one CPU per task; more threads would oversubscribe the node.
    torch.set_num_threads(1)
    return reconstruct([target], [labels], settings)[0]


def stage1_ray(
    jobs: Sequence[Job], settings: AuditSettings, note: Callable[[str], None]
) -> Iterator[tuple[Job, Stage1Result]]:
    """Stage 1 of ``jobs`` as one Ray task per capture, yielded as they finish."""
    # Imported here: Ray is heavy and only this optional way of running stage 1 needs it.
    import ray

    started = False
    if not ray.is_initialized():
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ.setdefault("MKL_NUM_THREADS", "1")
        # Ray warns on every task that it will stop overriding accelerator variables.
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        address = None if settings.ray_address == "local" else settings.ray_address
        if address is not None:
            check_reachable(address)  # Ray itself would retry for minutes
        try:
            ray.init(
                address=address,
                include_dashboard=False,
                logging_level=logging.ERROR,
                log_to_driver=False,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise FedspeechError(
                f"cannot connect to the Ray cluster at {settings.ray_address!r} ({exc})"
            ) from None
        started = True
    try:
        remote = ray.remote(num_cpus=1)(_ray_task)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        # Bounded in flight: each queued task holds a capture in the object store.
        limit = max(2 * cpus, 1)
        note(f"stage 1: {len(jobs)} Ray tasks on {cpus} CPUs")
        pending = list(jobs)
        inflight: dict[Any, Job] = {}
        while pending or inflight:
            while pending and len(inflight) < limit:
                job = pending.pop(0)
                target = load_target(job, settings.dual_path, settings.update_model)
                labels = recover_labels(target, settings.label_method)
                inflight[remote.remote(target, labels, settings.stage1)] = job
                del target
            ready, _ = ray.wait(list(inflight), num_returns=1)
            job = inflight.pop(ready[0])
            yield job, Stage1Result.from_reconstruction(ray.get(ready[0]))
    finally:
        if started:
            ray.shutdown()
