"""Defenses on the server side: secure aggregation's capture, central DP, and a run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg

from fedspeech.capture import load_capture, load_truth
from fedspeech.config import SimConfig
from fedspeech.federation.server_app import build_strategy
from tests.helpers import TINY_KWS, TINY_SDD, capture_strategy, simulate, train_reply


def test_secure_aggregation_captures_only_the_weighted_mean(
    tmp_path: Path, server_identity: None
) -> None:
    seen: list[list[int]] = []

    def truth(server_round: int, client_ids: list[int], path: Path) -> None:
        seen.append(client_ids)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")

    meta = {"model": "kws-cnn", "frontend": "mel", "training": {"lr": 0.1}}
    strat = capture_strategy(tmp_path, truth, share="gradient", capture_meta=meta, secagg=True)
    accepted = [(0, train_reply(0, 1.0, 1)), (2, train_reply(2, 4.0, 3))]
    strat._capture_aggregate(1, accepted)
    strat.flush()
    caps = sorted((tmp_path / "captures").glob("*.safetensors"))
    assert [c.stem for c in caps] == ["r001_c0000"]  # one capture: the aggregate
    cap = load_capture(caps[0])
    torch.testing.assert_close(cap.shared["w"], torch.full((4,), (1.0 * 1 + 4.0 * 3) / 4))
    assert cap.num_examples == 4 and cap.training["secagg_clients"] == [0, 2]
    assert seen == [[0, 2]]  # its truth: the clips of both clients


def test_central_dp_wraps_the_strategy_in_flowers_wrapper() -> None:
    cfg = SimConfig.from_mapping({"dp": "central", "dp_clip": 2.0, "dp_noise": 0.5, "clients": 6})
    strategy = build_strategy(cfg, address_all=True)
    assert isinstance(strategy, DifferentialPrivacyClientSideFixedClipping)
    assert (strategy.noise_multiplier, strategy.clipping_norm) == (0.5, 2.0)
    assert strategy.num_sampled_clients == cfg.clients_per_round()
    assert isinstance(build_strategy(SimConfig(), address_all=True), FedAvg)


def _update_norm(path: Path) -> float:
    cap = load_capture(path)
    return math.sqrt(
        sum(
            float((cap.shared[k] - cap.global_weights[k]).double().square().sum())
            for k in cap.shared
        )
    )


@pytest.mark.slow
def test_a_local_dp_run_records_its_defense_and_budget(tmp_path: Path, tiny_cache: Path) -> None:
    """Clients clip and add noise; every capture and metrics.json say so; epsilon grows."""
    env = {"FEDSPEECH_CACHE": str(tiny_cache)}
    args = [*TINY_KWS, "--clients", "3", "--fraction", "1", "--rounds", "2"]
    defended = [*args, "--dp", "local", "--dp-clip", "0.5", "--dp-noise", "0.001"]
    simulate(tmp_path / "dp", *defended, "--capture-clients", "all", env=env)
    doc = json.loads((tmp_path / "dp" / "metrics.json").read_text())
    assert doc["defense"]["dp"] == "local" and doc["privacy"]["delta"] == 1e-5
    eps = [r["epsilon"] for r in doc["rounds"]]
    assert 0 < eps[0] < eps[1] and doc["final"]["epsilon"] == eps[1]
    assert 'dp = "local"' in (tmp_path / "dp" / "config.toml").read_text()
    for path in sorted((tmp_path / "dp" / "captures").glob("*.safetensors")):
        cap = load_capture(path)
        assert cap.training["defense"]["clip"] == 0.5
        # Clipped to 0.5, plus noise of 0.0005 per entry over 1.6 M entries (~0.6).
        assert _update_norm(path) < 0.5 + 0.001 * 0.5 * math.sqrt(1.7e6) * 1.2
    # No noise and a clip no update reaches: the undefended run, to the last digit.
    simulate(tmp_path / "plain", *args, env=env)
    big = [*args, "--dp", "local", "--dp-clip", "1e9", "--dp-noise", "0"]
    simulate(tmp_path / "big", *big, env=env)
    rounds = [
        json.loads((tmp_path / r / "metrics.json").read_text())["rounds"] for r in ("plain", "big")
    ]
    strip = [
        [{k: v for k, v in r.items() if k not in ("seconds", "epsilon")} for r in rs]
        for rs in rounds
    ]
    assert strip[0] == strip[1]
    assert all(r["epsilon"] is None for r in rounds[1])  # no noise: no finite guarantee


@pytest.mark.slow
def test_secure_aggregation_run_is_audited_as_one_batch(tmp_path: Path, tiny_cache: Path) -> None:
    env = {"FEDSPEECH_CACHE": str(tiny_cache)}
    args = [*TINY_KWS, "--clients", "3", "--fraction", "1", "--rounds", "1"]
    run = tmp_path / "run"
    simulate(
        run,
        *args,
        "--share",
        "gradient",
        "--batch-size",
        "1",
        "--secagg",
        "--capture-clients",
        "all",
        env=env,
    )
    caps = sorted((run / "captures").glob("*.safetensors"))
    assert len(caps) == 1
    cap = load_capture(caps[0])
    truth = load_truth(run / "truth" / f"{caps[0].stem}.json")
    assert cap.num_examples == 3 and truth["clients"] == [0, 1, 2]
    assert sum(len(b["positions"]) for b in truth["batches"]) == 3
    # The aggregate is the gradient of the mean loss over the three clips.
    from fedspeech.models import build_model
    from fedspeech.training import compute_gradient

    model = build_model(cap.model, **cap.model_kwargs)
    model.load_state_dict(cap.global_weights)
    feats = np.load(run / "data" / "features.npy")
    labels = np.load(run / "data" / "labels.npy")
    pos = [p for b in truth["batches"] for p in b["positions"]]
    grads = compute_gradient(model, torch.from_numpy(feats[pos]), torch.from_numpy(labels[pos]))
    for k, g in grads.items():
        torch.testing.assert_close(cap.shared[k], g, rtol=1e-3, atol=1e-6)


@pytest.mark.slow
def test_a_dp_sgd_detector_run_trains_privately_and_records_its_budget(
    tmp_path: Path, tiny_spoof_root: Path
) -> None:
    """--task sdd --dp sgd: per-clip clipping of the dual-path step, BatchNorm frozen."""
    args = [*TINY_SDD, "--data-root", str(tiny_spoof_root), "--clients", "3", "--rounds", "2"]
    dp = ["--dp", "sgd", "--dp-clip", "1", "--dp-noise", "1", "--alignment", "pcgrad"]
    simulate(tmp_path / "dp", *args, *dp, "--capture-clients", "all")
    doc = json.loads((tmp_path / "dp" / "metrics.json").read_text())
    assert doc["defense"]["dp"] == "sgd"
    eps = [r["epsilon"] for r in doc["rounds"]]
    assert 0 < eps[0] < eps[1] < math.inf
    assert all("conflict_rate" not in r for r in doc["rounds"])  # not covered by epsilon
    captures = sorted((tmp_path / "dp" / "captures").glob("*.safetensors"))
    assert captures
    for path in captures:
        cap = load_capture(path)
        assert cap.training["defense"]["dp"] == "sgd"
        changed = [k for k in cap.shared if not torch.equal(cap.shared[k], cap.global_weights[k])]
        # Weights moved; BatchNorm's running statistics were not touched by private training.
        assert any(k.endswith("weight") for k in changed)
        assert not [k for k in changed if "running_" in k or "num_batches" in k]
