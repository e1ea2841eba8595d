"""Simulations across a two-node Ray cluster started on loopback by this module.

The same seed gives the same rounds on the cluster twice, and the same rounds as a local
run: clients are sampled by client id and replies averaged in client-id order, whichever
node runs which client. Only the nodes this module started are stopped (found by their
environment).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    TINY_KWS,
    TINY_SDD,
    leftover_processes,
    rounds,
    simulate,
    stop_processes,
    write_tiny_sweep,
)

pytestmark = pytest.mark.slow

RAY = Path(sys.executable).parent / "ray"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The address of a head node and a worker node, 1 CPU each, on 127.0.0.1."""
    if not RAY.exists():
        pytest.skip("ray command-line tool not installed")
    port = free_port()
    # A short private temp dir: Ray's socket paths must stay under 107 characters.
    temp_dir = Path("/tmp") / f"fs-ray-{os.getpid()}-{port}"
    # Every process of the cluster inherits the marker: only those are stopped.
    marker = f"FEDSPEECH_TEST_CLUSTER={uuid.uuid4().hex}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **dict([marker.split("=")])}
    common = ["--num-cpus", "1", "--disable-usage-stats", "--node-ip-address", "127.0.0.1"]
    head = [str(RAY), "start", "--head", "--port", str(port), "--temp-dir", str(temp_dir)]
    worker = [str(RAY), "start", "--address", f"127.0.0.1:{port}"]
    try:
        for cmd in (head + ["--include-dashboard", "false"], worker):
            subprocess.run([*cmd, *common], check=True, capture_output=True, env=env, timeout=120)
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
        yield f"127.0.0.1:{port}"
    finally:
        stop_processes(marker)
    assert not leftover_processes(marker, grace=5)


def test_kws_runs_repeat_on_the_cluster_and_match_a_local_run(
    cluster: str, tmp_path: Path, tiny_cache: Path
) -> None:
    # 2 of 4 clients a round, spread over both nodes.
    args = [*TINY_KWS, "--clients", "4", "--fraction", "0.5", "--rounds", "2"]
    env = {"FEDSPEECH_CACHE": str(tiny_cache)}
    simulate(tmp_path / "a", *args, "--ray-address", cluster, env=env)
    simulate(tmp_path / "b", *args, "--ray-address", cluster, env=env)
    simulate(tmp_path / "local", *args, env=env)
    a = rounds(tmp_path / "a")
    assert [len(r["clients"]) for r in a] == [2, 2]
    assert a == rounds(tmp_path / "b")
    assert a == rounds(tmp_path / "local")


def test_sdd_runs_repeat_on_the_cluster_and_match_a_local_run(
    cluster: str, tmp_path: Path, tiny_spoof_root: Path
) -> None:
    # AASIST with dropout: each client seeds torch from (seed, round, id) on any node.
    args = [*TINY_SDD, "--data-root", str(tiny_spoof_root), "--clients", "3", "--rounds", "2"]
    args += ["--capture-clients", "0"]
    simulate(tmp_path / "a", *args, "--ray-address", cluster)
    simulate(tmp_path / "b", *args, "--ray-address", cluster)
    simulate(tmp_path / "local", *args)
    a = rounds(tmp_path / "a")
    assert [len(r["clients"]) for r in a] == [2, 2]
    assert a == rounds(tmp_path / "b")
    assert a == rounds(tmp_path / "local")


def test_a_sweep_runs_its_variants_across_the_cluster(
    cluster: str, tmp_path: Path, tiny_cache: Path
) -> None:
    """Two variants, one CPU each, on two one-CPU nodes: one variant on each node."""
    import json

    write_tiny_sweep(tmp_path, ("q4", "quantize-bits = 4"))
    marker = uuid.uuid4().hex
    proc = subprocess.run(
        [sys.executable, "-m", "fedspeech", "sweep", str(tmp_path / "sweep.toml")]
        + ["--out", str(tmp_path / "out"), "--ray-address", cluster],
        capture_output=True,
        text=True,
        env={**os.environ, "FEDSPEECH_CACHE": str(tiny_cache), "FEDSPEECH_TEST_RUN": marker},
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads((tmp_path / "out" / v / "row.json").read_text()) for v in ("none", "q4")]
    assert len({r["node"] for r in rows}) == 2  # each node took one variant
    assert "sent to the cluster" in proc.stderr and "on node" in proc.stderr
    assert (tmp_path / "out" / "frontier.csv").read_text().count("\n") == 3
    assert not leftover_processes(f"FEDSPEECH_TEST_RUN={marker}")
