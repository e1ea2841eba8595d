"""Worker processes for the corpus builders: a map that fails instead of hanging.

:class:`concurrent.futures.ProcessPoolExecutor` rather than :class:`multiprocessing.pool.Pool`:
when a worker dies (killed, out of memory, or a user's script without a main guard, see
:func:`fedspeech.errors.check_main_guard`) the executor fails every pending task, where a
pool starts a replacement and waits for the lost task forever.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import BaseContext
from typing import TypeVar

from fedspeech.errors import MAIN_GUARD_HINT, FedspeechError, check_main_guard

__all__ = ["map_in_processes"]

T = TypeVar("T")
R = TypeVar("R")


def map_in_processes(
    fn: Callable[[T], R],
    items: Iterable[T],
    workers: int,
    *,
    preload: str,
    what: str,
    chunksize: int = 1,
    fresh: bool = False,
) -> Iterator[R]:
    """``fn`` over ``items`` in ``workers`` processes; results in the order of ``items``.

    Parameters
    ----------
    fn : callable
        A module-level function (it is pickled by name).
    items : iterable
        Its arguments, one per call.
    workers : int
        Processes at most.
    preload : str
        The module that defines ``fn``, imported once by the fork server that the workers
        are forked from (clean processes, cheap to start), or by each worker where there is
        no fork server (``spawn``). Never ``fork``: the caller may hold torch or BLAS
        threads, which a forked child inherits broken.
    what : str
        What the work is, for the error message (``"the synthetic corpus"``).
    chunksize : int
        Items sent to a worker at once.
    fresh : bool
        A new process for every chunk (a worker that has never run ``fn`` before).

    Raises
    ------
    FedspeechError
        A worker ended before its work was done; nothing it had left is returned.
    """
    check_main_guard()
    context: BaseContext
    if "forkserver" in mp.get_all_start_methods():
        server = mp.get_context("forkserver")
        server.set_forkserver_preload([preload])
        context = server
    else:
        context = mp.get_context("spawn")
    try:
        with ProcessPoolExecutor(
            workers, mp_context=context, max_tasks_per_child=1 if fresh else None
        ) as pool:
            yield from pool.map(fn, items, chunksize=chunksize)
    except BrokenProcessPool:
        raise FedspeechError(
            f"a worker process building {what} ended before its work was done (killed, out "
            f"of memory, or: {MAIN_GUARD_HINT})"
        ) from None
