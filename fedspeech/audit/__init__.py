"""The privacy audit of a run folder: ``fedspeech audit RUN_DIR`` and ``simulate --audit``.

It runs the attack library :mod:`attacks` on a run's captures and scores the leakage
against the truth the run kept. One module per job:

* :mod:`~fedspeech.audit.settings` -- :class:`AuditSettings` and the cache keys it implies;
* :mod:`~fedspeech.audit.selection` -- which captures (:func:`find_captures`), as jobs;
* :mod:`~fedspeech.audit.cache` -- the per-capture resume files;
* :mod:`~fedspeech.audit.execution` -- stage 1 in this process, in worker processes or on Ray;
* :mod:`~fedspeech.audit.truth` -- the truth side rebuilt from the corpus and run config;
* :mod:`~fedspeech.audit.speech` -- public eSpeak NG speech for the attacker's CMVN prior;
* :mod:`~fedspeech.audit.scoring` -- stage 2, pairing and judges for one capture;
* :mod:`~fedspeech.audit.outputs` -- CSV, JSON, WAVs, figures, summary and its table;
* :mod:`~fedspeech.audit.run` -- :func:`audit_run`, all of the above in order;
* :mod:`~fedspeech.audit.rounds` -- what ``fedspeech simulate --audit`` calls each round.
"""

from fedspeech.audit.outputs import FF_PREFIX, LEAKAGE_COLUMNS, SUMMARY_METRICS, summary_table
from fedspeech.audit.rounds import audit_rounds, audit_settings, leakage_means
from fedspeech.audit.run import AUDIT_DIR, audit_run
from fedspeech.audit.selection import find_captures
from fedspeech.audit.settings import AuditSettings

__all__ = [
    "AUDIT_DIR",
    "FF_PREFIX",
    "LEAKAGE_COLUMNS",
    "SUMMARY_METRICS",
    "AuditSettings",
    "audit_rounds",
    "audit_run",
    "audit_settings",
    "find_captures",
    "leakage_means",
    "summary_table",
]
