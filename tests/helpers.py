"""Helpers shared by the tests (not a test file): paths, the CLI in a subprocess, processes.

Tests import from here, never from one another.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
FSDD = SHARED_DATA / "fsdd"

needs_fsdd = pytest.mark.skipif(
    not (FSDD / "recordings").is_dir(),
    reason=f"real FSDD data not found at {FSDD} (only present on developer and CI machines)",
)


#: A tiny keyword-spotting run on the built-in corpus (FEDSPEECH_CACHE: the tiny cache).
TINY_KWS = ["--synth-speakers", "12", "--synth-takes", "1", "--local-epochs", "1"]
#: A tiny spoofing run (``--data-root``: the tiny spoof corpus of ``conftest.py``).
TINY_SDD = [
    *("--task", "sdd", "--dataset", "builtin", "--local-steps", "1", "--batch-size", "4"),
    *("--clip-samples", "2400", "--test-clips", "0", "--augment", "rawboost:2"),
]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m fedspeech ARGS`` in a subprocess, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "fedspeech", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit code 2, no traceback, and one ``fedspeech: error:`` line holding ``needles``."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    # Progress bars may come first; the error is one line, and the last one.
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    assert errors[0].startswith("fedspeech: error: ")
    for needle in needles:
        assert needle in errors[0], errors[0]


def processes_with_marker(marker: str) -> list[int]:
    """Live processes whose environment carries ``marker`` (inherited from our child)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if marker.encode() in fh.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def leftover_processes(marker: str, grace: float = 60.0) -> list[int]:
    """Processes carrying ``marker`` still alive after up to ``grace`` seconds.

    Ray's workers exit asynchronously after the driver: on a loaded machine that takes more
    than a second, and a process that is merely slow to exit is not one left behind.
    """
    deadline = time.monotonic() + grace
    while (found := processes_with_marker(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return found


def stop_processes(marker: str, grace: float = 10.0) -> None:
    """SIGTERM, then after ``grace`` seconds SIGKILL, the processes carrying ``marker``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [p for p in processes_with_marker(marker) if p != os.getpid()]
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while processes_with_marker(marker) and time.monotonic() < deadline:
            time.sleep(0.2)


def simulate(
    run_dir: Path, *args: str, env: dict[str, str] | None = None, code: int = 0
) -> subprocess.CompletedProcess[str]:
    """``fedspeech simulate ARGS --out RUN_DIR --quiet``, expecting exit code ``code``.

    Also checks that the run left no process behind (Ray's included).
    """
    marker = uuid.uuid4().hex  # inherited by every process of the run, Ray's too
    proc = subprocess.run(
        [sys.executable, "-m", "fedspeech", "simulate", *args, "--out", str(run_dir), "--quiet"],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {}), "FEDSPEECH_TEST_RUN": marker},
        timeout=600,
    )
    assert proc.returncode == code, proc.stderr[-3000:]
    assert not leftover_processes(f"FEDSPEECH_TEST_RUN={marker}"), "simulate left processes"
    return proc


def rounds(run_dir: Path) -> list[dict[str, Any]]:
    """``metrics.json`` rounds without their timings (the only thing allowed to differ)."""
    doc = json.loads((run_dir / "metrics.json").read_text())
    return [{k: v for k, v in r.items() if k != "seconds"} for r in doc["rounds"]]


def write_tiny_sweep(folder: Path, second: tuple[str, str]) -> Path:
    """A two-variant sweep file on the tiny built-in corpus in ``folder``; its path.

    The variants are ``none`` and ``second = (name, 'key = value')``; the utility run is one
    round of 2 clients, the leakage run one gradient of one clip per client, audited on a
    tiny budget without the speaker and content judges.
    """
    tiny = "synth-speakers = 12\nsynth-takes = 1\nclients = 2\nfraction = 1.0\nrounds = 1\n"
    (folder / "utility.toml").write_text(f"[simulate]\n{tiny}local-epochs = 1\n")
    (folder / "leakage.toml").write_text(
        f'[simulate]\n{tiny}share = "gradient"\nbatch-size = 1\ncapture-clients = "all"\n'
    )
    name, setting = second
    path = folder / "sweep.toml"
    path.write_text(
        '[sweep]\nutility = "utility.toml"\nleakage = "leakage.toml"\n'
        "audit = { iterations = 20, restarts = 1, speaker = false, content = false, "
        "threads = 1 }\n\n"
        f'[[variant]]\nname = "none"\n\n[[variant]]\nname = "{name}"\n{setting}\n'
    )
    return path


def train_reply(client_id: int, value: float | None = None, examples: int = 2) -> Any:
    """A client's training reply (a Flower ``Message``): 4 weights of ``value`` (default:
    the client id), ``examples`` examples, its id (``server_identity`` must be in use)."""
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

    content = RecordDict(
        {
            "arrays": ArrayRecord(
                {"w": torch.full((4,), float(client_id if value is None else value))}
            ),
            "metrics": MetricRecord({"num-examples": examples, "train-loss": 0.5}),
            "client": ConfigRecord({"client-id": client_id}),
        }
    )
    return Message(content, dst_node_id=100 + client_id, message_type=MessageType.TRAIN)


def capture_strategy(run_dir: Path, truth_writer: Any, **kwargs: Any) -> Any:
    """A ``HonestButCuriousStrategy`` over FedAvg for 3 clients, capturing all, at the global
    weights ``w = 0`` (4 entries) of :func:`train_reply`; ``kwargs`` override its settings."""
    import torch
    from flwr.app import ArrayRecord
    from flwr.serverapp.strategy import FedAvg

    from fedspeech.federation.strategy import HonestButCuriousStrategy

    settings: dict[str, Any] = {
        "share": "update",
        "lr": 0.1,
        "run_dir": run_dir,
        "capture_count": None,
        "capture_meta": {"model": "kws-cnn", "frontend": "mel"},
        "num_clients": 3,
        "clients_per_round": 3,
        "truth_writer": truth_writer,
        **kwargs,
    }
    strat = HonestButCuriousStrategy(FedAvg(), **settings)
    strat._global = ArrayRecord({"w": torch.zeros(4)})
    return strat


def speech_like(batch: int, seed: int, shape: tuple[int, int]) -> Any:
    """Smooth positive ``(B, F, T)`` patterns in (0, 1), like a Mel spectrogram's broad shapes.

    A ``torch.Tensor``; torch is imported here so that tests without it do not load it.
    """
    import torch
    from torch.nn import functional as F

    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, 1, 4, 4, generator=gen)
    return torch.sigmoid(2 * F.interpolate(z, size=shape, mode="bicubic", align_corners=True)[:, 0])
