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
from fedspeech.tasks.base import TASKS, ClientResult, Task, defense_of
from fedspeech.tasks.kws import KWS
from fedspeech.tasks.prepare import RunData, claim_run_dir, claimed_run_dir
from fedspeech.tasks.registries import known_names
from fedspeech.tasks.sdd import SDD


def check_config(cfg: SimConfig) -> Task:
    """Check what :class:`SimConfig` cannot check itself; return the run's task.

    :class:`SimConfig` checks types, ranges and fixed choices on construction; the names
    behind registries (task, alignment, optimizer, augmentation, ...) and rules between
    settings that only a task knows are checked here, by :meth:`Task.validate`.

    Raises
    ------
    ConfigError
        Unknown task, or a value the task cannot use; the message names the flag.
    """
    task = TASKS.get(cfg.task)
    task.validate(cfg)
    return task


def prepare_run(cfg: SimConfig, run_dir: Path | None = None) -> RunData:
    """Check ``cfg`` (:func:`check_config`), then prepare its run: write ``run_dir/data``.

    The run folder (``run_dir``, else ``--out``, else a new ``runs/<timestamp>``) is
    claimed first (:func:`~fedspeech.tasks.prepare.claim_run_dir`: refused if it holds a
    run, unless ``--overwrite``; ``run.json`` written), before any data is read; a folder
    created here is removed again if preparation fails.

    Raises
    ------
    ConfigError, DataError
        Unknown task or names, missing data, impossible partitions, and similar bad input.
    FedspeechError
        The run folder holds a run, or cannot be created or written.
    """
    task = check_config(cfg)
    with claimed_run_dir(cfg, run_dir) as path:
        data = task.prepare(cfg, path)
        if cfg.init_weights and cfg.resume is None:
            # Inside the claim: weights that do not fit leave no run folder behind.
            data.initial_weights = task.initial_weights(cfg, data)
        return data


__all__ = [
    "defense_of",
    "KWS",
    "SDD",
    "TASKS",
    "ClientResult",
    "RunData",
    "Task",
    "check_config",
    "claim_run_dir",
    "known_names",
    "prepare_run",
]
