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
