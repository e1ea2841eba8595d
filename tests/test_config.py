from __future__ import annotations

from pathlib import Path

import pytest

from fedspeech.config import SimConfig, read_toml
from fedspeech.errors import ConfigError


def test_defaults_validate() -> None:
    cfg = SimConfig()
    cfg.validate()
    assert cfg.capture_count() == 1


def test_hyphen_and_underscore_keys_are_the_same() -> None:
    a = SimConfig.from_mapping({"capture-clients": "all", "batch_size": 1})
    assert a.capture_count() is None
    assert a.batch_size == 1


def test_unknown_key_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown config key 'colour'.*known: .*clients"):
        SimConfig.from_mapping({"colour": "red"})


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_fraction_outside_unit_interval(fraction: float) -> None:
    with pytest.raises(ConfigError, match="--fraction must be in"):
        SimConfig.from_mapping({"fraction": fraction})


def test_wrong_type_is_named() -> None:
    with pytest.raises(ConfigError, match="clients in x.toml: expected int"):
        SimConfig.from_mapping({"clients": "many"}, "x.toml")


def test_toml_then_flags_override(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text('[simulate]\nclients = 7\nrounds = 3\nshare = "gradient"\n')
    cfg = SimConfig.from_toml(path).updated({"rounds": 9, "clients": None}, "flags")
    assert (cfg.clients, cfg.rounds, cfg.share) == (7, 9, "gradient")


def test_resolved_toml_round_trips(tmp_path: Path) -> None:
    cfg = SimConfig.from_mapping({"clients": 50, "data-root": "/d/x", "lr": 0.1})
    path = tmp_path / "config.toml"
    path.write_text(cfg.to_toml())
    assert SimConfig.from_mapping(read_toml(path)) == cfg


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("clients = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_toml(path)
