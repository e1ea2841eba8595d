"""Ctrl-C and SIGTERM keep what the server received; ``--resume`` finishes the run.

The end-to-end tests (slow: a Ray simulation each, on the tiny corpus) send a signal to a
running ``python -m fedspeech simulate`` once its first round is in ``metrics.json``; the
unit tests check the order of the capture writer (truth after capture) without Ray.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from flwr.app import Message

from fedspeech.capture import load_capture
from fedspeech.config import SimConfig
from fedspeech.errors import FedspeechError
from fedspeech.federation import strategy as strategy_module
from fedspeech.federation.checkpoint import load_global, save_global
from fedspeech.federation.simulate import _Signals, remove_temp_files, resume_point
from fedspeech.federation.strategy import HonestButCuriousStrategy, StoppableGrid
from tests.helpers import capture_strategy, leftover_processes, train_reply

TINY = ["--synth-speakers", "12", "--synth-takes", "1", "--clients", "3", "--fraction", "1"]
# Rounds of a fraction of a second each: the signal comes while rounds remain.
RUN = [*TINY, "--rounds", "10", "--local-epochs", "2", "--capture-clients", "all"]


# --------------------------------------------------------------------------- unit tests
def _strategy(run_dir: Path, truth_writer: Any) -> HonestButCuriousStrategy:
    return cast(HonestButCuriousStrategy, capture_strategy(run_dir, truth_writer))


def test_truth_is_written_after_its_capture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server_identity: None
) -> None:
    events: list[str] = []
    real_save = strategy_module.save_capture

    def slow_save(cap: Any, path: Path) -> Path:
        time.sleep(0.2)  # a slow disk: the truth must still wait
        out = real_save(cap, path)
        events.append(f"capture {path.stem}")
        return out

    def truth(server_round: int, client_ids: list[int], path: Path) -> None:
        capture = tmp_path / "captures" / f"{path.stem}.safetensors"
        assert capture.is_file(), f"truth {path.name} before its capture"
        events.append(f"truth {path.stem}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")

    monkeypatch.setattr(strategy_module, "save_capture", slow_save)
    strat = _strategy(tmp_path, truth)
    for cid in range(3):
        strat._capture(1, cid, train_reply(cid))
    assert not (tmp_path / "truth").exists()  # nothing yet: the writer is still saving
    strat.flush()
    names = [f"r001_c{c:04d}" for c in range(3)]
    assert events == [f"{kind} {n}" for n in names for kind in ("capture", "truth")]


def test_close_writes_what_was_received_then_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server_identity: None
) -> None:
    real_save = strategy_module.save_capture

    def slow_save(cap: Any, path: Path) -> Path:
        time.sleep(0.3)
        return real_save(cap, path)

    monkeypatch.setattr(strategy_module, "save_capture", slow_save)
    truths: list[Path] = []
    strat = _strategy(tmp_path, lambda r, c, p: truths.append(p))
    strat._capture(2, 1, train_reply(1))
    strat.close()  # waits for the slow write
    cap = load_capture(tmp_path / "captures" / "r002_c0001.safetensors")
    assert cap.server_round == 2 and cap.client_id == 1
    assert [p.name for p in truths] == ["r002_c0001.json"]
    strat._capture(3, 0, train_reply(0))  # after close: not written
    strat.close()
    assert sorted(p.name for p in (tmp_path / "captures").iterdir()) == ["r002_c0001.safetensors"]


def test_a_set_stop_ends_the_wait_for_replies() -> None:
    class SlowGrid:
        def push_messages(self, messages: Any) -> list[str]:
            return ["m1"]

        def pull_messages(self, ids: Any) -> list[Message]:
            return []  # never answers

    stop = threading.Event()
    grid = StoppableGrid(SlowGrid(), stop)  # type: ignore[arg-type]
    threading.Timer(0.2, stop.set).start()
    t0 = time.monotonic()
    with pytest.raises(strategy_module._Stopped):
        grid.send_and_receive([], timeout=60)
    assert time.monotonic() - t0 < 5


def test_a_signal_during_the_simulation_stops_it_without_raising() -> None:
    # Raising in the main thread while Flower's engine runs would shut Ray down under the
    # engine's worker threads (Ray's core worker then ends the process with exit code 1).
    stop = threading.Event()
    signals = _Signals(stop)
    with signals.gracefully(None):
        signals.handle(signal.SIGINT, None)
        assert stop.is_set() and signals.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):  # a second signal: stop at once
            signals.handle(signal.SIGINT, None)
    assert signals.saving
    signals.handle(signal.SIGTERM, None)  # ignored while the run is saved
    assert signals.received == signal.SIGINT


def test_a_signal_outside_the_simulation_raises() -> None:
    signals = _Signals(threading.Event())
    with pytest.raises(KeyboardInterrupt):
        signals.handle(signal.SIGTERM, None)
    assert signals.received == signal.SIGTERM and signals.stop.is_set()


def test_temp_files_are_removed(tmp_path: Path) -> None:
    (tmp_path / "captures").mkdir()
    keep = tmp_path / "captures" / "r001_c0000.safetensors"
    keep.write_bytes(b"x")
    tmp = tmp_path / "captures" / ".r001_c0001.safetensors.abc123.tmp"
    tmp.write_bytes(b"half")
    (tmp_path / ".metrics.json.xyz.tmp").write_text("{")
    assert len(remove_temp_files(tmp_path)) == 2
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [keep.name]


# ------------------------------------------------------------------- end-to-end tests
def _env(cache: Path) -> tuple[dict[str, str], str]:
    """The environment of a run, with a marker that every process it starts inherits."""
    marker = f"FEDSPEECH_TEST_RUN={uuid.uuid4().hex}"
    key, value = marker.split("=")
    return {**os.environ, "FEDSPEECH_CACHE": str(cache), key: value}, marker


def _simulate(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fedspeech", "simulate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finish(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return err


def _interrupt_after_round_one(
    run: Path, cache: Path, signum: int
) -> tuple[subprocess.Popen[str], str, str]:
    """Start a run, send ``signum`` once round 1 is in metrics.json; (process, stderr, marker)."""
    env, marker = _env(cache)
    proc = _simulate(env, *RUN, "--out", str(run))
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if json.loads((run / "metrics.json").read_text())["rounds"]:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    if proc.poll() is not None:
        raise AssertionError(f"the run ended before it was interrupted: {_finish(proc)[-3000:]}")
    proc.send_signal(signum)
    return proc, _finish(proc), marker


def _assert_complete_pairs(run: Path) -> None:
    captures = {p.stem for p in (run / "captures").glob("*.safetensors")}
    truths = {p.stem for p in (run / "truth").glob("*.json")}
    assert captures and truths <= captures, truths - captures
    for name in captures:
        load_capture(run / "captures" / f"{name}.safetensors")
    assert not list(run.rglob("*.tmp")), list(run.rglob("*.tmp"))


@pytest.mark.slow
def test_ctrl_c_keeps_the_captures_and_resume_finishes_the_run(
    tmp_path: Path, tiny_cache: Path
) -> None:
    run = tmp_path / "run"
    proc, err, marker = _interrupt_after_round_one(run, tiny_cache, signal.SIGINT)
    assert proc.returncode == 130, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1].startswith("fedspeech: interrupted: SIGINT after round "), err[-3000:]
    assert "Traceback" not in err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["interrupted"] is True
    done = [r["round"] for r in metrics["rounds"]]
    assert done and done == list(range(1, len(done) + 1)) and len(done) < 10, (done, err)
    _assert_complete_pairs(run)
    assert not leftover_processes(marker), "the interrupted run left processes behind"

    env, marker = _env(tiny_cache)
    resumed = _simulate(env, "--resume", str(run), "--quiet")
    err = _finish(resumed)
    assert resumed.returncode == 0, err[-3000:]
    assert not leftover_processes(marker)
    env, _ = _env(tiny_cache)
    full = _simulate(env, *RUN, "--out", str(tmp_path / "full"), "--quiet")
    err = _finish(full)
    assert full.returncode == 0, err[-3000:]

    got = json.loads((run / "metrics.json").read_text())
    want = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert "interrupted" not in got
    # The model is saved after metrics.json: a round recorded without it is done again.
    assert got["resumed_after"][0] in (max(done), max(done) - 1), got["resumed_after"]
    assert got["final"] == want["final"], (got["rounds"], want["rounds"])
    assert [(r["round"], r["accuracy"], r["loss"]) for r in got["rounds"]] == [
        (r["round"], r["accuracy"], r["loss"]) for r in want["rounds"]
    ]
    _assert_complete_pairs(run)
    assert {p.name for p in (run / "captures").iterdir()} == {
        p.name for p in (tmp_path / "full" / "captures").iterdir()
    }


@pytest.mark.slow
def test_sigterm_saves_and_exits_143(tmp_path: Path, tiny_cache: Path) -> None:
    run = tmp_path / "run"
    proc, err, marker = _interrupt_after_round_one(run, tiny_cache, signal.SIGTERM)
    assert proc.returncode == 143, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("fedspeech: interrupted: SIGTERM"), err
    assert json.loads((run / "metrics.json").read_text())["interrupted"] is True
    _assert_complete_pairs(run)
    assert not leftover_processes(marker)


def test_resume_refuses_fedadam_and_finished_runs(tmp_path: Path) -> None:
    save_global(tmp_path, {"w": torch.arange(3.0)}, 2)
    weights, done = load_global(tmp_path)
    assert done == 2 and torch.equal(weights["w"], torch.arange(3.0))
    (tmp_path / "metrics.json").write_text('{"initial": null, "rounds": []}')
    cfg = SimConfig.from_mapping({"rounds": 4, "resume": str(tmp_path)})
    assert resume_point(cfg)[2] == 2
    with pytest.raises(FedspeechError, match="fedadam run cannot be resumed"):
        resume_point(cfg.updated({"strategy": "fedadam"}))
    with pytest.raises(FedspeechError, match="finished all its 2 rounds"):
        resume_point(cfg.updated({"rounds": 2}))
