"""The run recorder: strict-JSON metrics.json, and a diverged loss stops the run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from fedspeech.errors import DivergedError, FedspeechError
from fedspeech.report import RunRecorder


def strict_load(path: Path) -> Any:
    """Parse ``path`` as strict JSON: ``NaN`` and ``Infinity`` are errors."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{path.name} holds {name}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def clients(*losses: float) -> list[dict[str, Any]]:
    return [
        {"client_id": i, "num_examples": 4, "train_loss": loss, "captured": False}
        for i, loss in enumerate(losses)
    ]


def test_a_finite_run_is_recorded(tmp_path: Path) -> None:
    rec = RunRecorder(tmp_path, 2, stream=None)
    rec.evaluated(0, 0.1, 2.3, 0.0)
    rec.client_round(1, clients(2.0, 1.5), 1.0)
    rec.evaluated(1, 0.4, 1.7, 1.0, extra={"eer": math.nan})
    doc = strict_load(tmp_path / "metrics.json")
    assert doc["rounds"][0]["loss"] == 1.7 and doc["rounds"][0]["eer"] is None
    assert "diverged" not in doc


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_evaluation_loss_stops_the_run(tmp_path: Path, bad: float) -> None:
    rec = RunRecorder(tmp_path, 5, stream=None)
    rec.client_round(3, clients(1.0), 1.0)
    with pytest.raises(DivergedError) as err:
        rec.evaluated(3, 0.1, bad, 1.0)
    assert isinstance(err.value, FedspeechError)  # the CLI's one line
    assert err.value.exit_code == 1  # a run that started and stopped, not bad input
    assert str(err.value).startswith(f"training diverged in round 3: evaluation loss is {bad}")
    doc = strict_load(tmp_path / "metrics.json")
    assert doc["rounds"][-1]["round"] == 3 and doc["rounds"][-1]["loss"] is None
    assert doc["diverged"] == {"round": 3, "metric": "evaluation loss", "value": str(bad)}


def test_a_non_finite_mean_training_loss_stops_the_run(tmp_path: Path) -> None:
    rec = RunRecorder(tmp_path, 5, stream=None)
    with pytest.raises(DivergedError, match="round 2: mean client training loss is inf"):
        rec.client_round(2, clients(1.0, math.inf), 1.0)
    assert strict_load(tmp_path / "metrics.json")["diverged"]["round"] == 2


def test_a_diverged_initial_model_is_reported_as_round_0(tmp_path: Path) -> None:
    rec = RunRecorder(tmp_path, 5, stream=None)
    with pytest.raises(DivergedError, match="round 0: evaluation loss is nan"):
        rec.evaluated(0, 0.1, math.nan, 0.0)
    assert strict_load(tmp_path / "metrics.json")["initial"]["loss"] is None
