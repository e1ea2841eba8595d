"""Runs that repeat and survive faults: whole simulations on Ray (tens of seconds each).

Faults are injected through the client app's test-only hook ``FEDSPEECH_TEST_FAIL``
(``client:round`` raises, ``client:round:lie`` claims another client's id).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedspeech.capture import load_capture, load_truth
from fedspeech.models import build_model
from fedspeech.training import compute_gradient
from tests.helpers import TINY_KWS, TINY_SDD, rounds, simulate

pytestmark = pytest.mark.slow

FEDSGD = ["--share", "gradient", "--batch-size", "1", "--capture-clients", "all"]


def captures(run_dir: Path) -> list[str]:
    return sorted(p.stem for p in (run_dir / "captures").glob("*.safetensors"))


def test_kws_runs_repeat(tmp_path: Path, tiny_cache: Path) -> None:
    # 2 of 4 clients a round: the same seed must pick the same ones, whatever node ids
    # Flower draws, and average them in the same order.
    args = [*TINY_KWS, "--clients", "4", "--fraction", "0.5", "--rounds", "3"]
    env = {"FEDSPEECH_CACHE": str(tiny_cache)}
    simulate(tmp_path / "a", *args, env=env)
    simulate(tmp_path / "b", *args, env=env)
    a = rounds(tmp_path / "a")
    assert a == rounds(tmp_path / "b")
    assert [len(r["clients"]) for r in a] == [2, 2, 2]
    assert captures(tmp_path / "a") == captures(tmp_path / "b")


def test_sdd_runs_repeat(tmp_path: Path, tiny_spoof_root: Path) -> None:
    # AASIST with dropout: equal only if every client seeds torch from (seed, round, id).
    args = [*TINY_SDD, "--data-root", str(tiny_spoof_root), "--clients", "3", "--rounds", "2"]
    simulate(tmp_path / "a", *args, "--capture-clients", "0")
    simulate(tmp_path / "b", *args, "--capture-clients", "0")
    a = rounds(tmp_path / "a")
    assert a == rounds(tmp_path / "b")
    assert [len(r["clients"]) for r in a] == [2, 2]  # --min-clients 2, though 3 × 0.1 < 1


def test_failed_clients_are_counted_and_left_out(tmp_path: Path, tiny_cache: Path) -> None:
    run = tmp_path / "run"
    args = [*TINY_KWS, *FEDSGD, "--clients", "3", "--fraction", "1", "--rounds", "2"]
    env = {"FEDSPEECH_CACHE": str(tiny_cache), "FEDSPEECH_TEST_FAIL": "1:1,2:2:lie"}
    simulate(run, *args, env=env)
    r1, r2 = rounds(run)
    assert [c["client_id"] for c in r1["clients"]] == [0, 2]
    assert r1["failures"] == [{"client_id": 1, "error": "injected test fault: client 1, round 1"}]
    assert [c["client_id"] for c in r2["clients"]] == [0, 1]
    assert r2["failures"] == [
        {"client_id": 2, "error": "client id mismatch: reply claims client 0"}
    ]
    assert "all_failed" not in r1 and "all_failed" not in r2
    # Captures carry the ids the server assigned: client 2's claim did not take client 0's.
    assert captures(run) == ["r001_c0000", "r001_c0002", "r002_c0000", "r002_c0001"]
    feats = np.load(run / "data" / "features.npy")
    labels = np.load(run / "data" / "labels.npy")
    cap = load_capture(run / "captures" / "r002_c0000.safetensors")
    (batch,) = load_truth(run / "truth" / "r002_c0000.json")["batches"]
    model = build_model(cap.model, **cap.model_kwargs)
    model.load_state_dict(cap.global_weights)
    pos = batch["positions"]
    grads = compute_gradient(model, torch.from_numpy(feats[pos]), torch.from_numpy(labels[pos]))
    for name, g in grads.items():
        torch.testing.assert_close(cap.shared[name], g, rtol=1e-4, atol=1e-6)
    # FedSGD with FedAvg: round 2 starts from the example-weighted mean of the usable
    # round-1 steps w − lr·g (clients 0 and 2), without client 1.
    ok = [load_capture(run / "captures" / f"r001_c{c:04d}.safetensors") for c in (0, 2)]
    total = sum(c.num_examples for c in ok)
    lr = ok[0].training["lr"]
    for name, w in cap.global_weights.items():
        steps = [c.num_examples * (c.global_weights[name] - lr * c.shared[name]) for c in ok]
        torch.testing.assert_close(w, sum(steps) / total, rtol=1e-5, atol=1e-6)


def test_a_round_where_every_client_fails_ends_the_run(tmp_path: Path, tiny_cache: Path) -> None:
    run = tmp_path / "run"
    args = [*TINY_KWS, *FEDSGD, "--clients", "3", "--fraction", "1", "--rounds", "3"]
    env = {"FEDSPEECH_CACHE": str(tiny_cache), "FEDSPEECH_TEST_FAIL": "0:2,1:2,2:2"}
    proc = simulate(run, *args, env=env, code=1)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("fedspeech: error: round 2: all 3 sampled clients failed (client 0: ")
    r1, r2 = rounds(run)  # saved, and no round 3
    assert r2["all_failed"] is True and r2["clients"] == []
    assert [f["client_id"] for f in r2["failures"]] == [0, 1, 2]
    assert captures(run) == ["r001_c0000", "r001_c0001", "r001_c0002"]
    assert (run / "accuracy.png").is_file()
