"""``fedspeech simulate --audit``: the privacy audit of a run's captures, round by round.

The simulator only calls :func:`fedspeech.audit.audit_run` (the same code as ``fedspeech
audit RUN_DIR``) on the captures of the round that just ended; per-capture results are
cached in ``RUN/audit/``, so the final audit over all rounds only summarises them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedspeech.audit.run import audit_run
from fedspeech.audit.settings import AuditSettings
from fedspeech.config import SimConfig

__all__ = ["audit_rounds", "audit_settings", "leakage_means"]


def audit_settings(cfg: SimConfig, rounds: list[int] | None) -> AuditSettings:
    """The :class:`~fedspeech.audit.AuditSettings` of a simulation's ``--audit-*`` keys.

    A key left unset (``audit_iterations=None``) keeps the audit's own default.
    """
    given: dict[str, Any] = {"rounds": rounds, "threads": cfg.audit_threads or None}
    if cfg.audit_iterations is not None:
        given["iterations"] = cfg.audit_iterations
    if cfg.audit_preset is not None:
        given["preset"] = cfg.audit_preset
    return AuditSettings(seed=cfg.seed, **given)


def audit_rounds(
    cfg: SimConfig,
    run_dir: Path,
    rounds: list[int] | None,
    scorers: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Audit the captures of ``rounds`` (``None``: all) and return ``audit/summary.json``.

    ``scorers`` is kept by the caller across rounds so that the corpus is read and the
    speaker verifier fitted once per run (see :func:`fedspeech.audit.audit_run`).
    """
    return audit_run(
        Path(run_dir), audit_settings(cfg, rounds), progress=cfg.progress, scorers=scorers
    )


def leakage_means(summary: dict[str, Any]) -> dict[str, float]:
    """Metric -> mean over the audited samples, from gradients (what ``metrics.json`` keeps).

    Examples
    --------
    >>> leakage_means({"from_gradients": {"stoi": {"mean": 0.5, "n": 2}, "f_mse": {"n": 0}}})
    {'stoi': 0.5}
    """
    return {
        name: float(stats["mean"])
        for name, stats in summary.get("from_gradients", {}).items()
        if stats.get("n")
    }
