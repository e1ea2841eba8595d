"""Tasks as plugins: each ``--task`` is a :class:`Task` registered in :data:`TASKS`.

* :mod:`fedspeech.tasks.base` -- the :class:`Task` interface and the registry;
* :mod:`fedspeech.tasks.prepare` -- what every prepared run shares (:class:`RunData`, the
  ``data/`` files and their ``open_*`` readers);
* :mod:`fedspeech.tasks.kws` -- keyword spotting (``kws``);
* :mod:`fedspeech.tasks.sdd` -- speech-deepfake detection (``sdd``).

Examples
--------
>>> TASKS.names()
['kws', 'sdd']
>>> TASKS.get("asr")
Traceback (most recent call last):
...
fedspeech.errors.ConfigError: unknown task 'asr'; known: kws, sdd
"""

from __future__ import annotations

from pathlib import Path

from fedspeech.config import SimConfig
from fedspeech.tasks.base import TASKS, ClientResult, Task
from fedspeech.tasks.kws import KWS
from fedspeech.tasks.prepare import RunData
from fedspeech.tasks.sdd import SDD


def prepare_run(cfg: SimConfig, run_dir: Path | None = None) -> RunData:
    """Prepare a run of ``cfg.task`` (:meth:`Task.prepare`): write ``run_dir/data``.

    Raises
    ------
    ConfigError, DataError
        Unknown task or names, missing data, impossible partitions, and similar bad input.
    """
    return TASKS.get(cfg.task).prepare(cfg, run_dir)


__all__ = ["KWS", "SDD", "TASKS", "ClientResult", "RunData", "Task", "prepare_run"]
