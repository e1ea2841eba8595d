"""``fedspeech simulate``: prepare a run, then drive Flower's simulation engine on Ray."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from fedspeech.audit import audit_rounds
from fedspeech.cluster import check_reachable
from fedspeech.config import SimConfig
from fedspeech.errors import RunFailed
from fedspeech.fileio import atomic_write_text
from fedspeech.report import RunRecorder
from fedspeech.tasks import RunData, prepare_run


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
    is raised once ``metrics.json``, the plots and the captures are saved.
    """
    t0 = time.perf_counter()
    if cfg.ray_address:
        check_reachable(cfg.ray_address)  # Ray itself would retry for minutes
    data: RunData = prepare_run(cfg)
    run_dir = data.run_dir
    atomic_write_text(run_dir / "config.toml", cfg.to_toml())
    recorder = RunRecorder(run_dir, cfg.rounds, stream=stream if cfg.progress else None)
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
    run_simulation(
        server_app=make_server_app(cfg, data, recorder, plain=plain),
        client_app=client_app,
        num_supernodes=cfg.clients,
        backend_config=backend_config(cfg),  # type: ignore[arg-type]
    )
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


def _quiet_flower() -> None:
    # Flower logs every message at INFO; the recorder prints one line per round instead.
    logging.getLogger("flwr").setLevel(logging.ERROR)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
