from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from fedspeech.config import GROUPS, SimConfig, read_toml, settings_of, task_defaults
from fedspeech.errors import ConfigError
from tests.helpers import REPO as ROOT


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


@pytest.mark.parametrize(
    ("values", "per_round"),
    [
        ({"clients": 6}, 2),  # 6 × 0.2 = 1.2: --min-clients 2 still averages two clients
        ({"clients": 6, "min_clients": 1}, 1),  # asked for: one is allowed
        ({"clients": 20}, 4),  # the fraction, when it gives more
        ({"clients": 3, "min_clients": 5}, 3),  # never more than there are
        ({"clients": 1}, 1),
    ],
)
def test_clients_per_round(values: dict[str, int], per_round: int) -> None:
    assert SimConfig.from_mapping(values).clients_per_round() == per_round


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("min_clients", 0, "--min-clients must be at least 1"),
        ("round_timeout", 0.0, "--round-timeout must be positive"),
    ],
)
def test_federation_bounds(key: str, value: float, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SimConfig.from_mapping({key: value})


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


def test_every_setting_is_declared_with_help_and_group() -> None:
    fields = [f.name for f in dataclasses.fields(SimConfig) if f.name != "explicit"]
    infos = {info.name: info for info in settings_of(SimConfig)}
    assert sorted(infos) == sorted(fields)
    for info in infos.values():
        assert info.help and info.group in GROUPS, info.name


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("lr", float("nan"), "--lr must be a finite number"),
        ("lr", float("inf"), "--lr must be a finite number"),
        ("lr", 0.0, "--lr must be positive"),
        ("momentum", -0.1, "--momentum must not be negative"),
        ("momentum", 1.5, "--momentum must be at most 1, got 1.5"),
        ("momentum", float("inf"), "--momentum must be a finite number"),
        ("cpus_per_client", 1e-5, "--cpus-per-client must be at least 0.0001"),
        ("seed", 2**32, "--seed must be at most 4294967295, got 4294967296"),
        ("server_lr", -1.0, "--server-lr must be positive"),
        ("proximal_mu", -1.0, "--proximal-mu must not be negative"),
        ("cpus_per_client", float("nan"), "--cpus-per-client must be a finite number"),
        ("seed", -1, "--seed must not be negative"),
        ("normalize", "loud", "--normalize must be one of peak, none"),
        ("strategy", "fedsgd", "--strategy must be one of fedavg, fedprox, fedadam"),
        ("clients", 0, "--clients must be at least 1"),
    ],
)
def test_declared_ranges_are_checked(key: str, value: object, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        SimConfig.from_mapping({key: value})
    assert needle in str(err.value)


def test_task_defaults_come_from_the_declaration() -> None:
    sdd = SimConfig.from_mapping({"task": "sdd"})
    for key, value in task_defaults("sdd").items():
        assert getattr(sdd, key) == value
    # Back to kws: the declared defaults again, unless set explicitly.
    back = SimConfig.from_mapping({"task": "sdd", "rounds": 4}).updated({"task": "kws"})
    assert back.rounds == 4 and back.lr == SimConfig().lr and back.model == "kws-cnn"


def test_flower_app_config_holds_known_settings() -> None:
    """``[tool.flwr.app.config]`` (``flwr run .``) is read through the same declaration."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    run_config = pyproject["tool"]["flwr"]["app"]["config"]
    cfg = SimConfig.from_mapping(run_config, "the Flower run config")
    assert cfg.clients == run_config["clients"]
    assert set(run_config) <= {info.key for info in settings_of(SimConfig)}


def test_toml_writer_escapes_strings(tmp_path: Path) -> None:
    cfg = SimConfig.from_mapping({"data-root": 'C:\\odd "quoted" path', "out": "x\ny"})
    path = tmp_path / "config.toml"
    path.write_text(cfg.to_toml())
    assert SimConfig.from_toml(path) == cfg
