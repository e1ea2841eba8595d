"""Under ``flwr run``, the same seed gives the same run, and the same run as ``simulate``.

``flwr run`` starts a local SuperLink of its own (in the background, under ``FLWR_HOME``),
which runs the ServerApp and the simulated SuperNodes in subprocesses. The test points
``FLWR_HOME`` at a temporary folder, writes a Flower App folder whose
``[tool.flwr.app.config]`` names a tiny run, runs it twice and compares both with
``fedspeech simulate`` given the same settings; it then stops the SuperLink it started
(found by its ``FLWR_HOME``), and only that one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import leftover_processes, rounds, simulate, stop_processes

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
# The run: 2 SuperNodes (Flower's default local federation), a tiny built-in corpus.
SETTINGS = {
    "clients": 2,
    "fraction": 1.0,
    "rounds": 2,
    "synth-speakers": 12,
    "synth-takes": 1,
    "local-epochs": 1,
    "capture-clients": "all",
    "progress": False,
}


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _app(folder: Path, out: Path) -> Path:
    """A Flower App folder running fedspeech's apps with :data:`SETTINGS`, results in ``out``."""
    folder.mkdir()
    config = "\n".join(f"{k} = {_toml_value(v)}" for k, v in {**SETTINGS, "out": str(out)}.items())
    (folder / "pyproject.toml").write_text(
        '[project]\nname = "fedspeech-flwr-run-test"\nversion = "0.1.0"\n'
        "dependencies = []\n\n"
        '[tool.flwr.app]\npublisher = "fedspeech"\n\n'
        "[tool.flwr.app.components]\n"
        'serverapp = "fedspeech.federation.server_app:app"\n'
        'clientapp = "fedspeech.federation.client_app:app"\n\n'
        f"[tool.flwr.app.config]\n{config}\n",
        encoding="utf-8",
    )
    return folder


@pytest.mark.skipif(
    shutil.which("flower-superlink", path=str(BIN)) is None,
    reason="Flower's command-line tools are not installed beside this Python",
)
def test_flwr_run_repeats_and_matches_simulate(tmp_path: Path, tiny_cache: Path) -> None:
    home = tmp_path / "flwr-home"
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FEDSPEECH_CACHE": str(tiny_cache),
        # Flower would reinstall the app's dependencies (and a CUDA build of torch).
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    try:
        for name in ("a", "b"):
            app = _app(tmp_path / f"app-{name}", tmp_path / name)
            proc = subprocess.run(
                [str(BIN / "flwr"), "run", str(app), "--stream"],
                capture_output=True,
                text=True,
                env=env,
                timeout=600,
            )
            assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
            assert (tmp_path / name / "metrics.json").exists(), (proc.stdout + proc.stderr)[-3000:]
    finally:
        stop_processes(str(home))
    assert not leftover_processes(str(home)), "the SuperLink started by the test is still running"

    a, b = rounds(tmp_path / "a"), rounds(tmp_path / "b")
    assert [len(r["clients"]) for r in a] == [2, 2]
    assert a == b
    flags = [
        f"--{k}" if v is True else f"--{k}={v}" for k, v in SETTINGS.items() if k != "progress"
    ]
    simulate(tmp_path / "sim", *flags, env={"FEDSPEECH_CACHE": str(tiny_cache)})
    assert rounds(tmp_path / "sim") == a
