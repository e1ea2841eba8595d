"""Tasks as plugins: the registry, each task's validation, and the sdd local trainers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from fedspeech.config import SimConfig
from fedspeech.errors import ConfigError
from fedspeech.tasks import TASKS, RunData
from fedspeech.training.aligners import ALIGNERS
from fedspeech.training.domains import ROGA_DOMAINS
from fedspeech.training.sdd import LOCAL_TRAINERS, ROGA, train_sdd


def test_registry_holds_both_tasks() -> None:
    assert TASKS.names() == ["kws", "sdd"]
    with pytest.raises(ConfigError, match="unknown task 'asr'; known: kws, sdd"):
        TASKS.get("asr")


def _unchecked(**values: object) -> SimConfig:
    """A valid sdd config with ``values`` put in without the schema's own validation."""
    return dataclasses.replace(SimConfig.from_mapping({"task": "sdd"}), **values)  # type: ignore[arg-type]


def test_valid_configs_pass_their_task() -> None:
    for cfg in (SimConfig(), SimConfig.from_mapping({"task": "sdd", "alignment": "roga"})):
        TASKS.get(cfg.task).validate(cfg)
    with pytest.raises(ConfigError, match="--normalize must be one of peak, none, got 'rms'"):
        TASKS.get("kws").validate(dataclasses.replace(SimConfig(), normalize="rms"))


def test_model_kwargs_and_capture_meta_per_task(tmp_path: Path) -> None:
    data = RunData(
        run_dir=tmp_path,
        classes=["a", "b", "c"],
        input_shape=(40, 32),
        test_indices=np.arange(2),
        partitions=[],
        corpus_meta={},
    )
    kws = SimConfig()
    assert TASKS.get("kws").model_kwargs(kws, data) == {
        "num_classes": 3,
        "input_shape": [40, 32],
        "activation": "relu",
    }
    assert TASKS.get("kws").client_config(kws) == {
        "clip-norm": 5.0,
        "frontend": "mel",
        "augment": "none",
        "alignment": "pcgrad",
        "optimizer": "sgd",
        "weight-decay": 0.0,
    }
    assert TASKS.get("kws").training_meta(kws) == {"clip_norm": 5.0}
    assert TASKS.get("kws").capture_frontend(kws) == "mel"
    sdd = SimConfig.from_mapping({"task": "sdd", "dropout": False})
    data.input_shape = (4000,)
    assert TASKS.get("sdd").model_kwargs(sdd, data) == {
        "num_classes": 3,
        "num_samples": 4000,
        "dropout": False,
    }
    assert TASKS.get("sdd").capture_frontend(sdd) == "waveform"
    assert list(TASKS.get("sdd").client_config(sdd)) == [
        "augment",
        "alignment",
        "optimizer",
        "weight-decay",
        "roga-rho",
        "roga-alpha",
        "roga-domains",
    ]
    assert TASKS.get("sdd").training_meta(sdd)["task"] == "sdd"


def test_local_trainers_are_the_aligners_and_roga() -> None:
    assert LOCAL_TRAINERS.names() == sorted([*ALIGNERS.names(), ROGA])
    with pytest.raises(ConfigError, match="unknown alignment 'mgda'; known: cagrad, .*roga"):
        train_sdd(
            None,  # type: ignore[arg-type]
            np.zeros((1, 4), np.float32),
            np.zeros(1, np.int64),
            [],
            augment="rawboost:3",
            alignment="mgda",
            lr=1e-3,
            optimizer="adam",
        )


def test_roga_domain_kinds() -> None:
    assert ROGA_DOMAINS.names() == ["attack", "path", "speaker"]
    assert SimConfig().roga_domains in ROGA_DOMAINS
    assert [ROGA_DOMAINS.get(k).attribute for k in ROGA_DOMAINS] == ["attacks", None, "speakers"]
