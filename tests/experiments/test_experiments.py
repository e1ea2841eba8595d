"""Every experiment config parses: unknown keys or bad values fail here, not after a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedspeech.config import SimConfig, read_toml
from tests.helpers import REPO

EXPERIMENTS = sorted((REPO / "experiments").glob("*.toml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_experiment_config_is_valid(path: Path) -> None:
    data = read_toml(path)
    SimConfig.from_mapping(data, str(path))


def test_there_are_experiments() -> None:
    assert EXPERIMENTS
