"""Dual-path keyword spotting: the detectors' local trainer on keyword features or clips."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedspeech.config import SimConfig
from fedspeech.errors import ConfigError
from fedspeech.frontends import build_frontend
from fedspeech.models import build_model
from fedspeech.tasks import KWS, check_config
from fedspeech.training import train_local


def _settings(augment: str, alignment: str, features_path: Path) -> dict[str, Any]:
    return {
        "augment": augment,
        "alignment": alignment,
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.0,
        "seed": 0,
        "server-round": 1,
        "features-path": str(features_path),
        "frontend": "mel",
        "defense": "{}",
        "share": "update",
    }


def _step(model: torch.nn.Module, settings: dict[str, Any], x: np.ndarray, y: np.ndarray) -> dict:
    res = KWS.train(model, x, y, [np.arange(len(y))], settings, client_id=0)
    assert "conflict-rate" in res.metrics
    return {k: v.clone() for k, v in res.arrays.items()}


@pytest.mark.parametrize("augment", ["specaugment:0", "noise:300"])
def test_a_second_path_that_changes_nothing_is_plain_sgd(augment: str, tmp_path: Path) -> None:
    """Two identical paths averaged (alignment none) give the clean gradient: one SGD step.

    ``specaugment:0`` masks no bin; ``noise:300`` adds noise 300 dB below the clip, and runs
    the waveform path (front-end inside the trained network).
    """
    rng = np.random.default_rng(0)
    waves = (0.1 * rng.standard_normal((4, 16000))).astype(np.float32)
    feats = build_frontend("mel")(torch.from_numpy(waves)).numpy()
    np.save(tmp_path / "features.npy", feats)
    np.save(tmp_path / "waveforms.npy", waves)
    y = np.array([0, 1, 2, 3])
    torch.manual_seed(0)
    model = build_model("kws-cnn", num_classes=10)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    dual = _step(model, _settings(augment, "none", tmp_path / "features.npy"), feats, y)
    model.load_state_dict(start)
    train_local(model, feats, y, [np.arange(4)], lr=0.1, clip_norm=0.0)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(dual[k], v, rtol=1e-4, atol=1e-6, msg=k)
    assert any(not torch.equal(dual[k], start[k]) for k in start)


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"alignment": "pcgrad"}, "--alignment need --augment with --task kws"),
        ({"augment": "specaugment:8", "share": "gradient"}, "dual-path training (--augment)"),
        ({"augment": "specaugment:8", "alignment": "roga"}, "--alignment roga is for --task sdd"),
        ({"augment": "mixup:2"}, "unknown augmentation 'mixup:2'"),
    ],
)
def test_bad_dual_path_settings_are_named(values: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        check_config(SimConfig.from_mapping(values))


def test_dp_sgd_of_the_keyword_dual_path_sends_no_conflict_rate(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((4, 32, 32)).astype(np.float32)
    y = np.array([0, 1, 2, 3])
    torch.manual_seed(0)
    model = build_model("kws-cnn", num_classes=10)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    settings = _settings("specaugment:4", "pcgrad", tmp_path / "features.npy")
    settings["defense"] = '{"dp": "sgd", "clip": 1.0, "noise": 1.0}'
    res = KWS.train(model, feats, y, [np.arange(4)], settings, client_id=0)
    assert res.metrics == {} and res.num_examples == 4
    assert any(not torch.equal(res.arrays[k], start[k]) for k in start)
