"""Worker processes end with a clear error, never a hang: a killed worker, and a user's script
without an ``if __name__ == "__main__":`` guard (whose workers re-run it on start)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedspeech.data.pool import map_in_processes
from fedspeech.errors import MAIN_GUARD_HINT, FedspeechError, check_main_guard
from tests.helpers import REPO


def _square(x: int) -> int:
    return x * x


def _die_on_three(x: int) -> int:
    if x == 3:
        os._exit(9)  # as a worker killed by the system would, with no exception to send back
    return x


def test_results_come_back_in_order() -> None:
    out = list(
        map_in_processes(_square, range(7), 2, preload=__name__, what="squares", chunksize=2)
    )
    assert out == [x * x for x in range(7)]


def test_a_dead_worker_is_an_error_not_a_hang() -> None:
    with pytest.raises(FedspeechError, match="building numbers ended before its work was done"):
        list(map_in_processes(_die_on_three, range(6), 2, preload=__name__, what="numbers"))


def test_the_guard_does_nothing_in_a_running_process() -> None:
    check_main_guard()  # this process is not starting up: no exit


def _run_unguarded(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    """Run ``body`` as the top level of a script (no main guard), from ``tmp_path``."""
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": str(REPO), "FEDSPEECH_CACHE": str(tmp_path / "cache")}
    # Before the guard, the corpus builder's pool restarted its workers forever: the timeout
    # is the test's failure, far above the few seconds this takes.
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_an_unguarded_script_building_the_corpus_stops_with_the_hint(tmp_path: Path) -> None:
    done = _run_unguarded(
        tmp_path,
        """
        from pathlib import Path
        from fedspeech.data.synth import synthesize_corpus

        synthesize_corpus(Path("corpus"), n_speakers=2, takes=1, words=("yes",), progress=False)
        """,
    )
    assert done.returncode != 0
    assert f"fedspeech: {MAIN_GUARD_HINT}" in done.stderr
    assert "FedspeechError: a worker process building the synthetic corpus" in done.stderr
    # Neither the script nor its workers left a corpus or a half-built folder behind.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["unguarded.py"]


def test_an_unguarded_script_splitting_the_attack_stops_with_the_hint(tmp_path: Path) -> None:
    done = _run_unguarded(
        tmp_path,
        """
        import torch
        from attacks.features import Stage1Settings
        from attacks.features.workers import reconstruct_in_workers
        from attacks.target import AttackTarget

        targets = [
            AttackTarget(None, {}, {"w": torch.ones(1)}, "gradient", 1) for _ in range(2)
        ]
        labels = [torch.zeros(1, dtype=torch.long)] * 2
        reconstruct_in_workers(targets, labels, 2, Stage1Settings())
        """,
    )
    assert done.returncode != 0
    assert f"fedspeech: {MAIN_GUARD_HINT}" in done.stderr
    assert "a stage-1 worker process ended with exit code 2 (a script" in done.stderr
