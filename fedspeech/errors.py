"""User-facing errors.

Anything raised as :class:`FedspeechError` ends a command with its message on one line,
without a traceback, and the error's ``exit_code``: 2 for bad input, 1 for a run that
stopped on its own (:class:`RunFailed`). A run stopped by SIGINT or SIGTERM raises
:class:`Interrupted` (exit code 130 or 143) once what it received is saved.
"""

from __future__ import annotations

import multiprocessing
import sys


class FedspeechError(Exception):
    """Bad input or configuration, reported to the user as one line (exit code 2)."""

    exit_code = 2


class DataError(FedspeechError):
    """A dataset is missing, empty or malformed."""


class ConfigError(FedspeechError):
    """A configuration key or value is invalid."""


class RunFailed(FedspeechError):
    """A run that started well stopped early (every client of a round failed): exit code 1.

    What the run finished is saved before this is raised (``metrics.json``, captures).
    """

    exit_code = 1


class DivergedError(RunFailed):
    """Training diverged: a loss became NaN or infinite, so the run stops (exit code 1).

    What the run finished is saved first, with ``"diverged"`` in ``metrics.json``.
    """


class Interrupted(Exception):
    """A run stopped by a signal (SIGINT: exit code 130, SIGTERM: 143), its data saved.

    Not a :class:`FedspeechError`: the command reports it as ``fedspeech: interrupted ...``
    rather than as an error.
    """

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


#: What a worker process that re-ran an unguarded script prints before it exits.
MAIN_GUARD_HINT = (
    "a script that calls fedspeech must keep its top-level code under "
    '`if __name__ == "__main__":`: fedspeech\'s worker processes import the script first'
)


def check_main_guard() -> None:
    """End a worker process that is re-running its parent's unguarded script.

    A process started with ``spawn`` or ``forkserver`` imports the parent's ``__main__``
    script before its work. If that script calls fedspeech at its top level, the import
    reaches fedspeech's worker pool again, which Python refuses inside a starting worker
    (and :class:`multiprocessing.pool.Pool` answers by starting new workers forever).
    Called just before fedspeech starts worker processes, this prints
    :data:`MAIN_GUARD_HINT` on one line and exits such a worker with code 2, so the parent
    sees one lost worker and reports it. Anywhere else it does nothing.
    """
    # The flag multiprocessing itself checks for this case (spawn._check_not_importing_main).
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        print(f"fedspeech: {MAIN_GUARD_HINT}", file=sys.stderr, flush=True)
        raise SystemExit(2)
