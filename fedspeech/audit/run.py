"""The privacy audit of a run folder: attack every capture, then score what leaked.

:func:`audit_run` plays the honest-but-curious server on the captures a
``fedspeech simulate --out RUN`` run kept, and measures the leakage against the truth:

* **Attack side** -- reads ``RUN/captures/`` only (never ``truth/`` or ``data/``): labels
  from the gradient (:func:`attacks.labels.recover_labels`), features by gradient matching
  (stage 1, :func:`attacks.features.reconstruct`, run by :mod:`fedspeech.audit.execution`),
  waveform by NNLS + Griffin-Lim (stage 2, :func:`attacks.waveform.features_to_wave`).
* **Scoring side** -- only when ``RUN/truth/`` exists: the truth rebuilt from the run folder
  (:mod:`fedspeech.audit.truth`), paired with the reconstructions and judged
  (:mod:`fedspeech.audit.scoring`).
* **Raw-waveform runs** (``--task sdd``, captures with ``frontend = "waveform"``): stage 1
  recovers the waveform itself and stage 2 is skipped; there is no "from features"
  ceiling, and the speaker and content judges are not fitted.

Results go to ``RUN/audit/`` (:mod:`fedspeech.audit.outputs`): ``leakage.csv`` (one row per
sample), ``summary.json``, ``wav/``, ``spectrograms/``, ``summary.png`` and, for several
rounds, ``leakage_by_round.png``. Each capture's stage-1 result (``reconstructions/``) and
scores (``samples/``) are saved as soon as they exist (:mod:`fedspeech.audit.cache`), keyed
by the settings they depend on and a hash of the capture, so an interrupted or repeated
audit only redoes what is missing or stale, and a change of scoring options re-scores
without re-running stage 1.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from fedspeech.audit.cache import (
    Stage1Result,
    load_scored,
    load_stage1,
    restore_row,
    save_stage1,
    stage1_path,
)
from fedspeech.audit.execution import run_stage1
from fedspeech.audit.outputs import clean_json, write_json, write_outputs
from fedspeech.audit.scoring import Scorer, build_scorer, score_capture
from fedspeech.audit.selection import Job, find_captures, select_jobs
from fedspeech.audit.settings import AuditSettings
from fedspeech.audit.truth import is_waveform_run
from fedspeech.capture import load_training
from fedspeech.cluster import check_reachable
from fedspeech.errors import FedspeechError
from fedspeech.training.defense import Defense

__all__ = ["AUDIT_DIR", "audit_run"]

AUDIT_DIR = "audit"


def audit_run(
    run_dir: Path,
    settings: AuditSettings,
    *,
    progress: bool = True,
    scorers: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Attack every selected capture of a run folder and score the leakage.

    Parameters
    ----------
    run_dir : Path
        A folder written by ``fedspeech simulate --out``.
    settings : AuditSettings
        What to attack and how.
    progress : bool
        A tqdm bar over captures and one-line notes on stderr.
    scorers : dict, optional
        A cache kept by the caller between calls on the same run folder (``fedspeech
        simulate --audit`` audits one round at a time): the truth side (corpus, speaker
        verifier, content classifier) is then loaded and fitted once, not every call.

    Returns
    -------
    dict
        The content of ``audit/summary.json``: ``from_gradients`` and ``from_features``,
        each ``{metric: {"mean", "std", "n"}}`` (empty without ``truth/``), plus
        ``settings``, ``captures``, ``samples``, ``scored``, ``speaker_eer`` and
        ``speaker_threshold`` (speaker scoring), ``content_train_accuracy``, ``stage1``
        (captures reconstructed, re-scored and reused in this call) and ``seconds``.

    Raises
    ------
    FedspeechError
        Missing run folder or captures, a capture that is not a readable capture
        (:class:`~fedspeech.capture.CaptureFormatError`) or does not fit its model, or a
        dataset that changed since the run.
    """
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        problem = "is not a folder" if run_dir.exists() else "does not exist"
        raise FedspeechError(f"run folder {run_dir} {problem}")
    if settings.ray_address and settings.ray_address != "local":
        # Before any work: an unreachable cluster fails in seconds, not after stage 1 starts.
        check_reachable(settings.ray_address)
    waveform_run = is_waveform_run(run_dir)
    if waveform_run and (settings.speaker or settings.content):
        # Clips of a fraction of a second say little to a speaker encoder, and a spoofing
        # corpus has no keyword to hear: scoring is W-MSE, PESQ, STOI and labels.
        settings = dataclasses.replace(settings, speaker=False, content=False)
        skipped_judges = True
    else:
        skipped_judges = False
    found = find_captures(run_dir, settings.rounds, settings.clients)
    if not found:
        where = ""
        if settings.rounds is not None or settings.clients is not None:
            where = (
                f" for rounds {settings.rounds or 'all'} and clients {settings.clients or 'all'}"
            )
        raise FedspeechError(
            f"run folder {run_dir} has no captures{where} (expected "
            f"{run_dir / 'captures'}/rNNN_cNNNN.safetensors from fedspeech simulate)"
        )
    settings, informed = informed_settings(settings, found[0][1])
    out = run_dir / AUDIT_DIR
    scored = (run_dir / "truth").is_dir()
    key1 = settings.stage1_key()
    key = settings.scoring_key(scored)

    def note(msg: str) -> None:
        if progress:
            tqdm.write(msg, file=sys.stderr)

    threads_before = torch.get_num_threads()
    torch.set_num_threads(settings.threads or max(1, os.cpu_count() or 1))
    try:
        # Selection and validation before any long computation: a capture that is not a
        # capture, or does not fit its model, fails now rather than after hours of stage 1.
        selection = select_jobs(found, settings, lambda job: load_scored(out, job, key))
        jobs, results = selection.jobs, selection.done
        todo = [j for j in jobs if j.name not in results]
        stage1: dict[str, Stage1Result] = {}
        for job in todo:
            s1 = load_stage1(stage1_path(out, job), job, key1)
            if s1 is not None:
                stage1[job.name] = s1
        counts = {
            "reused": len(results),
            "rescored": len(stage1),
            "reconstructed": len(todo) - len(stage1),
        }
        if skipped_judges:
            note("raw-waveform run: stage 2, speaker and content scoring do not apply")
        if informed:
            note(f"note: {informed}")
        for caveat in selection.caveats:
            note(f"note: {caveat}")
        note(
            f"audit of {len(jobs)} captures ({selection.samples} samples): {counts['reused']} "
            f"done before, {counts['rescored']} to re-score, {counts['reconstructed']} to "
            "reconstruct"
        )
        bar = tqdm(
            total=len(jobs),
            initial=len(results),
            desc="audit",
            unit="capture",
            disable=not progress,
            file=sys.stderr,
        )
        scorer: Scorer | None = None

        def finish(job: Job, s1: Stage1Result) -> None:
            nonlocal scorer
            if scored and scorer is None:
                cache_key = json.dumps(
                    [str(run_dir.resolve()), key, job.frontend, job.frontend_kwargs],
                    sort_keys=True,
                    default=str,
                )
                scorer = scorers.get(cache_key) if scorers is not None else None
                if scorer is None:
                    scorer = build_scorer(run_dir, out, settings, job, note)
                    if scorers is not None:
                        scorers[cache_key] = scorer
            rows = score_capture(job, s1, settings, out, scorer)
            record = {
                "capture": job.name,
                "key": key,
                "digest": job.digest,
                "scorer": scorer.info if scorer is not None else {},
                "stage1": {
                    "matching_loss": s1.matching_loss,
                    "iterations": s1.iterations,
                    "restarts_run": s1.restarts_run,
                    "seconds": s1.seconds,
                },
                "rows": rows,
            }
            write_json(out / "samples" / f"{job.name}.json", record)
            # Read back as a resumed audit would, so both paths summarise the same values.
            results[job.name] = json.loads(json.dumps(clean_json(record)))
            bar.update(1)

        with bar:
            for job in todo:
                if job.name in stage1:
                    finish(job, stage1.pop(job.name))
            fresh = [j for j in todo if j.name not in results]
            if fresh:

                def save(job: Job, s1: Stage1Result) -> None:
                    save_stage1(stage1_path(out, job), job, key1, s1)

                for job, s1 in run_stage1(fresh, settings, note, save):
                    save(job, s1)
                    finish(job, s1)

        rows = [restore_row(r) for job in jobs for r in results[job.name]["rows"]]
        summary = write_outputs(out, jobs, results, rows, settings, scored, counts, t_start)
    finally:
        torch.set_num_threads(threads_before)
    scored_rows = sum(1 for r in rows if "label" in r)
    for metric, stats in summary["from_gradients"].items():
        if stats["n"] < scored_rows:
            note(f"{metric}: {stats['n']} of {scored_rows} samples could be scored")
    note(f"audit written to {out}")
    return summary


def informed_settings(settings: AuditSettings, capture: Path) -> tuple[AuditSettings, str]:
    """The settings an informed attacker uses on this run's defense, and why ("" if as is).

    A client that clipped its update to ``C`` (``--dp central`` or ``local``) sent a
    shorter vector than its gradient: the squared Euclidean distance would pull the
    reconstruction towards inputs with small gradients, so the attacker matches the
    direction only (cosine distance, Geiping et al., 2020). The run's captures share one
    defense, so one capture says it.
    """
    defense = Defense.from_meta(load_training(capture).get("defense"))
    if defense.client_clips and settings.distance in ("l2", "auto"):
        why = (
            f"the clients clipped their updates to norm {defense.clip:g} ({defense.dp} DP): "
            "matched by cosine distance, which the clip does not change"
        )
        return dataclasses.replace(settings, distance="cosine"), why
    return settings, ""
