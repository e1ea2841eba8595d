"""Every experiment configuration in ``experiments/`` is a valid configuration."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fedspeech.config import SimConfig, read_toml
from fedspeech.federation.sweep import load_sweep
from tests.helpers import REPO

EXPERIMENTS = sorted((REPO / "experiments").glob("*.toml"))


def _is_sweep(path: Path) -> bool:
    return "sweep" in tomllib.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_experiment_config_is_valid(path: Path) -> None:
    if _is_sweep(path):
        # A sweep file: every variant's two configurations are built and checked.
        assert load_sweep(path).variants
    else:
        SimConfig.from_mapping(read_toml(path), str(path))


def test_there_are_experiments() -> None:
    assert EXPERIMENTS
    assert any(_is_sweep(p) for p in EXPERIMENTS)


def test_same_clips_gradient_is_the_gradient_of_the_updates_clips(tmp_path: Path) -> None:
    import importlib.util

    import numpy as np
    import torch

    from fedspeech.capture import Capture, load_capture, load_truth, save_capture, save_truth
    from fedspeech.models import build_model
    from fedspeech.training import compute_gradient

    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "captures").mkdir()
    (run / "truth").mkdir()
    (run / "config.toml").write_text("[simulate]\n", encoding="utf-8")
    feats = np.random.default_rng(0).standard_normal((5, 32, 32)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 4])
    np.save(run / "data" / "features.npy", feats)
    np.save(run / "data" / "labels.npy", labels)
    state = build_model("kws-cnn").state_dict()
    cap = Capture(
        kind="update", server_round=1, client_id=3, num_examples=4, global_weights=state,
        shared={k: v.clone() for k, v in state.items()}, model="kws-cnn", frontend="mel",
        training={"lr": 0.1, "batch_size": 2, "batch_order": [[0, 1], [1, 0]]},
    )  # fmt: skip
    save_capture(cap, run / "captures" / "r001_c0003.safetensors")
    batch = {"positions": [4, 2], "clip_ids": ["e", "c"], "labels": [4, 2], "speakers": ["s", "t"]}
    truth = {"round": 1, "client_id": 3, "kind": "update", "batches": [batch, batch]}
    save_truth(run / "truth" / "r001_c0003.json", truth)

    script = REPO / "experiments" / "same_clips_gradient.py"
    spec = importlib.util.spec_from_file_location("same_clips_gradient", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.convert(run, tmp_path / "grad") == 1
    got = load_capture(tmp_path / "grad" / "captures" / "r001_c0003.safetensors")
    assert got.kind == "gradient" and got.num_examples == 2
    assert "batch_order" not in got.training
    model = build_model("kws-cnn")
    model.load_state_dict(state)
    want = compute_gradient(model, torch.from_numpy(feats[[4, 2]]), torch.tensor([4, 2]))
    assert all(torch.allclose(got.shared[n], want[n]) for n in want)
    rewritten = load_truth(tmp_path / "grad" / "truth" / "r001_c0003.json")
    assert rewritten["batches"] == [batch] and rewritten["kind"] == "gradient"
