"""``fedspeech simulate``: prepare a run, then drive Flower's simulation engine on Ray.

Interrupts: SIGINT (Ctrl-C) and SIGTERM set the server's stop event. While Flower's
``run_simulation`` runs, the first signal only does that: the server leaves its wait for
replies at once, Flower's engine lets the clients now training finish and shuts Ray down
itself, and ``run_simulation`` returns. (Raising in the main thread instead would shut Ray
down under the engine's worker threads, and Ray's core worker then ends the process with
exit code 1.) A second signal stops at once. Outside the simulation (preparing data) the
signal raises :class:`KeyboardInterrupt`. Either way the driver then writes every capture
already received (with its truth), removes the temporary files of atomic writes, saves
``metrics.json`` with ``"interrupted": true`` and raises
:class:`~fedspeech.errors.Interrupted` (exit code 130 or 143). Ray's ``init`` replaces the
driver's SIGTERM handler with one calling ``sys.exit(15)``: it is kept from doing so while
the simulation runs (a ``SystemExit(15)`` is still handled as SIGTERM). Further signals are
ignored while the run is saved.

``--resume RUN_DIR`` continues such a run from the global model saved after its last
completed round (:mod:`fedspeech.federation.checkpoint`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from fedspeech.audit import audit_rounds
from fedspeech.cluster import check_reachable
from fedspeech.config import SimConfig
from fedspeech.errors import FedspeechError, Interrupted, RunFailed
from fedspeech.federation.checkpoint import load_global
from fedspeech.federation.control import ServerControl
from fedspeech.fileio import atomic_write_text
from fedspeech.report import RunRecorder
from fedspeech.report.recorder import privacy_ledger
from fedspeech.tasks import RunData, defense_of, prepare_run

#: Exit codes of a run stopped by a signal (128 + the signal's number, as shells do).
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
# How long an interrupted run waits for the server thread to leave its round (it may be
# evaluating, or auditing with --audit).
_SERVER_GRACE = 120.0


def backend_config(cfg: SimConfig) -> dict[str, Any]:
    """Ray backend settings: 1 CPU per client, a quiet local or an existing cluster."""
    init_args: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.ERROR,
        "log_to_driver": False,
    }
    if cfg.ray_address:
        init_args["address"] = cfg.ray_address
    else:
        # "local": a new instance even where a cluster runs on this machine (a sweep's
        # variant on a cluster node), which ray.init() would otherwise join.
        init_args["address"] = "local"
        init_args["num_cpus"] = os.cpu_count() or 1
    return {
        "client_resources": {"num_cpus": cfg.cpus_per_client, "num_gpus": 0.0},
        "init_args": init_args,
    }


def simulate(
    cfg: SimConfig, *, stream: Any = sys.stderr, plain: bool = False
) -> tuple[Path, RunRecorder]:
    """Run a whole simulation; returns the run folder and its recorder.

    ``plain=True`` skips the capture wrapper (Flower's strategy alone), for benchmarks.
    Bad input (unknown names, missing data, impossible partitions) raises
    :class:`fedspeech.errors.FedspeechError` before Ray starts. A round in which every
    sampled client failed stops the run: :class:`fedspeech.errors.RunFailed` (exit code 1)
    is raised once ``metrics.json``, the plots and the captures are saved. SIGINT or
    SIGTERM stops the run: :class:`fedspeech.errors.Interrupted` (exit code 130 or 143) is
    raised once the captures received and ``metrics.json`` (``"interrupted": true``) are
    saved. ``cfg.resume`` continues an interrupted run (see :func:`resume_point`).
    """
    control = ServerControl()
    with _signal_handlers(control.stop) as signals:
        state: dict[str, Any] = {}
        try:
            return _simulate(cfg, stream, plain, control, state, signals)
        except (KeyboardInterrupt, SystemExit) as exc:
            if isinstance(exc, SystemExit) and exc.code != signal.SIGTERM:
                raise
            # Ray's SIGTERM handler (sys.exit(15)) may have replaced ours: ours again.
            signals.saving = True
            signals.install()
            signum = signals.received
            if signum is None:
                signum = signal.SIGTERM if isinstance(exc, SystemExit) else signal.SIGINT
            raise _interrupted(cfg, control, state, signal.Signals(signum)) from None


def _simulate(
    cfg: SimConfig,
    stream: Any,
    plain: bool,
    control: ServerControl,
    state: dict[str, Any],
    signals: _Signals,
) -> tuple[Path, RunRecorder]:
    t0 = time.perf_counter()
    if cfg.ray_address:
        check_reachable(cfg.ray_address)  # Ray itself would retry for minutes
    metrics_doc: dict[str, Any] | None = None
    if cfg.resume is not None:
        metrics_doc, control.initial_weights, control.start_round = resume_point(cfg)
    data: RunData = prepare_run(cfg)
    if data.initial_weights is not None:
        control.initial_weights = data.initial_weights
    run_dir = data.run_dir
    state["run_dir"] = run_dir
    if cfg.resume is None:
        atomic_write_text(run_dir / "config.toml", cfg.to_toml())
    defense = defense_of(cfg)
    recorder = RunRecorder(
        run_dir,
        cfg.rounds,
        stream=stream if cfg.progress else None,
        privacy=privacy_ledger(cfg, [len(p) for p in data.partitions]),
        defense=defense.as_meta() if defense.active else None,
    )
    if metrics_doc is not None:
        recorder.resume(metrics_doc, control.start_round)
        recorder.save()
    state["recorder"] = recorder
    if cfg.progress and cfg.resume is not None:
        print(
            f"resuming {run_dir} after round {control.start_round} of {cfg.rounds}",
            file=stream,
            flush=True,
        )
    if cfg.progress:
        print(
            f"prepared {sum(len(p) for p in data.partitions)} training clips for "
            f"{cfg.clients} clients in {time.perf_counter() - t0:.1f} s; run folder {run_dir}",
            file=stream,
            flush=True,
        )

    # Flower and Ray import late: preparing data and reporting bad input stay fast.
    from flwr.simulation import run_simulation

    from fedspeech.federation.client_app import app as client_app
    from fedspeech.federation.server_app import make_server_app, stopped_early

    _quiet_flower()
    # Ray workers inherit the environment; one BLAS thread per client process.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    with _ray_keeps_our_sigterm_handler(), signals.gracefully(stream):
        run_simulation(
            server_app=make_server_app(cfg, data, recorder, plain=plain, control=control),
            client_app=client_app,
            num_supernodes=cfg.clients,
            backend_config=backend_config(cfg),  # type: ignore[arg-type]
        )
    if control.stop.is_set():
        raise KeyboardInterrupt  # the engine has stopped; simulate() saves the run
    failed = stopped_early(recorder)
    if cfg.audit and not plain and recorder.rounds:
        # Every capture is audited already; this only summarises all rounds together.
        audit_rounds(cfg, run_dir, None)
    recorder.save()
    recorder.plot()
    recorder.plot_eer()
    if failed is not None:
        raise RunFailed(failed)  # after saving: metrics.json and captures are complete
    if cfg.progress:
        print(recorder.summary_table(), file=stream)
        final = recorder.as_dict()["final"]
        if final is not None:
            scores = "".join(
                f", {k} {final[k]:.3f}" for k in ("eer", "eer_unseen") if final.get(k) is not None
            )
            print(
                f"final accuracy {final['accuracy']:.3f}, loss {final['loss']:.3f}{scores}; "
                f"total {time.perf_counter() - t0:.1f} s; results in {run_dir}",
                file=stream,
                flush=True,
            )
    return run_dir, recorder


def resume_point(cfg: SimConfig) -> tuple[dict[str, Any], dict[str, torch.Tensor], int]:
    """What ``--resume`` continues: ``metrics.json``, the saved global model, its round.

    Raises
    ------
    FedspeechError
        No such folder, no saved model or ``metrics.json``, a FedAdam run (its moments are
        not saved), or a run that finished all its rounds.
    """
    run_dir = Path(str(cfg.resume))
    if not run_dir.is_dir():
        raise FedspeechError(f"--resume {run_dir}: no such run folder")
    if cfg.strategy == "fedadam":
        raise FedspeechError(
            f"--resume {run_dir}: a --strategy fedadam run cannot be resumed (its server-side "
            "moments are not saved)"
        )
    weights, done = load_global(run_dir)
    if done >= cfg.rounds:
        raise FedspeechError(f"--resume {run_dir}: the run finished all its {cfg.rounds} rounds")
    try:
        doc = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FedspeechError(f"--resume {run_dir}: cannot read metrics.json: {exc}") from None
    return doc, weights, done


class _Signals:
    """SIGINT/SIGTERM handlers: the first signal sets ``stop``.

    Outside :meth:`gracefully` it also raises :class:`KeyboardInterrupt` in the main
    thread. Inside, it only asks the engine to stop (the run ends once the clients now
    training finish); a second signal there raises. Once the run is being saved, further
    signals are ignored.
    """

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.received: int | None = None
        self.enabled = threading.current_thread() is threading.main_thread()
        self._graceful = False
        self._stream: Any = None
        self.saving = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.saving:
            return  # the run is being saved
        if self.received is None:
            self.received = signum
            self.stop.set()
            if self._graceful:
                if self._stream is not None:
                    print(
                        f"{signal.Signals(signum).name}: stopping once the clients now "
                        "training finish (send it again to stop at once)",
                        file=self._stream,
                        flush=True,
                    )
                return
        self.saving = True
        raise KeyboardInterrupt

    def install(self) -> None:
        if self.enabled:
            for signum in EXIT_CODES:
                signal.signal(signum, self.handle)

    @contextmanager
    def gracefully(self, stream: Any) -> Iterator[None]:
        """Within the block, a first signal stops the engine without raising."""
        self._graceful, self._stream = True, stream
        try:
            yield
        finally:
            self._graceful, self._stream = False, None


@contextmanager
def _signal_handlers(stop: threading.Event) -> Iterator[_Signals]:
    """Handle SIGINT and SIGTERM in the block (main thread only); restore the old handlers."""
    signals = _Signals(stop)
    old = {s: signal.getsignal(s) for s in EXIT_CODES} if signals.enabled else {}
    signals.install()
    try:
        yield signals
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)


@contextmanager
def _ray_keeps_our_sigterm_handler() -> Iterator[None]:
    """Keep Ray's ``init`` from replacing the SIGTERM handler with ``sys.exit(15)``.

    Ray's handler would end the main thread without setting the server's stop event, so
    the server thread could record the round that Ray's shutdown fails as a round of failed
    clients. Ours stops the server first; Ray is shut down all the same. Should Ray's
    internals change, its handler's ``SystemExit(15)`` is still handled as SIGTERM.
    """
    try:
        import ray._private.utils as ray_utils
    except ImportError:  # pragma: no cover - Ray is a dependency of Flower's simulation
        yield
        return
    original = getattr(ray_utils, "set_sigterm_handler", None)
    if original is None:
        yield
        return
    setattr(ray_utils, "set_sigterm_handler", lambda handler: None)  # noqa: B010
    try:
        yield
    finally:
        setattr(ray_utils, "set_sigterm_handler", original)  # noqa: B010


def _interrupted(
    cfg: SimConfig, control: ServerControl, state: dict[str, Any], signum: signal.Signals
) -> Interrupted:
    """Save what an interrupted run received; the :class:`Interrupted` to raise."""
    control.stop.set()
    if control.started:
        control.done.wait(_SERVER_GRACE)
    if control.strategy is not None:
        control.strategy.close()  # every capture received, with its truth
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    recorder: RunRecorder | None = state.get("recorder")
    run_dir: Path | None = state.get("run_dir")
    if recorder is not None:
        recorder.interrupted = True
        recorder.save()
    if run_dir is not None:
        remove_temp_files(run_dir)
    code = EXIT_CODES[signum]
    if run_dir is None:
        return Interrupted(f"{signum.name} before the run started", code)
    done = recorder.rounds[-1]["round"] if recorder is not None and recorder.rounds else 0
    if done == 0:
        return Interrupted(
            f"{signum.name} before the first round ended; the run folder is {run_dir}", code
        )
    hint = f"; continue with: fedspeech simulate --resume {run_dir}"
    if cfg.strategy == "fedadam" or done >= cfg.rounds:
        hint = ""
    return Interrupted(
        f"{signum.name} after round {done} of {cfg.rounds}; results so far in {run_dir}{hint}",
        code,
    )


def remove_temp_files(run_dir: Path) -> list[Path]:
    """Remove the temporary files of atomic writes (``.NAME.*.tmp``) under ``run_dir``."""
    removed = []
    for path in Path(run_dir).rglob(".*.tmp"):
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def _quiet_flower() -> None:
    # Flower logs every message at INFO; the recorder prints one line per round instead.
    logging.getLogger("flwr").setLevel(logging.ERROR)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
