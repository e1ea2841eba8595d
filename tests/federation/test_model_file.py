"""The global model a run writes (``model.safetensors``) and ``--init-weights``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedspeech.models import build_model
from fedspeech.models.weights import MODEL_FILE, load_weights, read_model_file
from tests.helpers import TINY_KWS, simulate


@pytest.mark.slow
def test_a_run_writes_its_model_and_another_run_starts_from_it(
    tmp_path: Path, tiny_cache: Path
) -> None:
    env = {"FEDSPEECH_CACHE": str(tiny_cache)}
    args = [*TINY_KWS, "--clients", "3", "--fraction", "1"]
    simulate(tmp_path / "first", *args, "--rounds", "2", env=env)
    weights, meta = read_model_file(tmp_path / "first" / MODEL_FILE)
    assert meta["model"] == "kws-cnn" and meta["round"] == "2" and meta["task"] == "kws"
    kwargs = json.loads(meta["model_kwargs"])
    assert json.loads(meta["settings"])["rounds"] == 2
    assert len(json.loads(meta["classes"])) == kwargs["num_classes"]
    # The file rebuilds the model from its metadata alone.
    model = build_model(meta["model"], **kwargs)
    load_weights(model, "kws-cnn", tmp_path / "first")
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    # A run started from it (a run folder given) scores at round 0 what the first one ended at.
    simulate(
        tmp_path / "second",
        *args,
        "--rounds",
        "1",
        "--init-weights",
        str(tmp_path / "first"),
        env=env,
    )
    first = json.loads((tmp_path / "first" / "metrics.json").read_text())
    second = json.loads((tmp_path / "second" / "metrics.json").read_text())
    assert second["initial"] == first["final"]
    assert 'init-weights = "' in (tmp_path / "second" / "config.toml").read_text()
