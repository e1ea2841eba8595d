"""A small simulation across a two-node Ray cluster started on loopback by this test."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

RAY = Path(sys.executable).parent / "ray"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pids_matching(text: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", text], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def stop_nodes(marker: str) -> None:
    """Stop only the Ray processes of this test's cluster (found by its session folder)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [p for p in pids_matching(marker) if p != os.getpid()]
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if not pids:
            return
        time.sleep(2)


@pytest.mark.skipif(not RAY.exists(), reason="ray command-line tool not installed")
def test_simulation_on_two_node_cluster(tmp_path: Path, tiny_cache: Path) -> None:
    port = free_port()
    # A short private temp dir: Ray's socket paths must stay under 107 characters.
    temp_dir = Path("/tmp") / f"fs-ray-{os.getpid()}-{port}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "FEDSPEECH_CACHE": str(tiny_cache)}
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    try:
        subprocess.run(
            [
                str(RAY),
                "start",
                "--head",
                "--port",
                str(port),
                "--node-ip-address",
                "127.0.0.1",
                "--temp-dir",
                str(temp_dir),
                "--include-dashboard",
                "false",
                *common,
            ],
            check=True,
            capture_output=True,
            env=env,
            timeout=120,
        )
        subprocess.run(
            [
                str(RAY),
                "start",
                "--address",
                f"127.0.0.1:{port}",
                "--node-ip-address",
                "127.0.0.1",
                *common,
            ],
            check=True,
            capture_output=True,
            env=env,
            timeout=120,
        )
        import ray  # noqa: F401 - only to query the cluster from a child process below

        nodes = subprocess.run(
            [
                sys.executable,
                "-c",
                f"import ray; ray.init(address='127.0.0.1:{port}', logging_level='ERROR');"
                "print(sum(1 for n in ray.nodes() if n['Alive']))",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert nodes.stdout.strip().splitlines()[-1] == "2", nodes.stderr[-2000:]

        run_dir = tmp_path / "run"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "fedspeech",
                "simulate",
                "--synth-speakers",
                "12",
                "--synth-takes",
                "1",
                "--clients",
                "4",
                "--partition",
                "iid",
                "--fraction",
                "1",
                "--rounds",
                "2",
                "--local-steps",
                "2",
                "--ray-address",
                f"127.0.0.1:{port}",
                "--out",
                str(run_dir),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert len(metrics["rounds"]) == 2
        assert all(len(r["clients"]) == 4 for r in metrics["rounds"])
    finally:
        stop_nodes(str(temp_dir))
        stop_nodes(f"127.0.0.1:{port}")
    assert not pids_matching(str(temp_dir))
