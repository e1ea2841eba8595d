"""Bad input: one error line naming the problem, exit code 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import FSDD, assert_one_line_error, needs_fsdd, run_cli


def test_missing_data_root(tmp_path: Path) -> None:
    proc = run_cli("simulate", "--dataset", "fsdd", "--data-root", str(tmp_path / "nope"))
    assert_one_line_error(proc, "does not exist", "nope")


def test_empty_data_root(tmp_path: Path) -> None:
    proc = run_cli("simulate", "--dataset", "speech_commands", "--data-root", str(tmp_path))
    assert_one_line_error(proc, "no", str(tmp_path))


def test_unknown_dataset(tmp_path: Path) -> None:
    proc = run_cli("simulate", "--dataset", "timit", "--data-root", str(tmp_path))
    assert_one_line_error(proc, "unknown dataset 'timit'", "fsdd")


def test_unknown_model(tmp_path: Path) -> None:
    proc = run_cli("simulate", "--model", "resnet9", "--data-root", str(tmp_path))
    assert_one_line_error(proc, "unknown model 'resnet9'", "kws-cnn")


def test_unknown_frontend(tmp_path: Path) -> None:
    proc = run_cli("simulate", "--frontend", "gammatone", "--data-root", str(tmp_path))
    assert_one_line_error(proc, "unknown front-end 'gammatone'", "mel, mfcc")


@pytest.mark.parametrize("fraction", ["0", "1.2"])
def test_fraction_outside(fraction: str) -> None:
    proc = run_cli("simulate", "--fraction", fraction)
    assert_one_line_error(proc, "--fraction must be in (0, 1]")


def test_unknown_config_key(tmp_path: Path) -> None:
    cfg = tmp_path / "x.toml"
    cfg.write_text("clients = 3\nnum_rounds = 4\n")
    proc = run_cli("simulate", "--config", str(cfg))
    assert_one_line_error(proc, "unknown config key 'num_rounds'", str(cfg))


def test_unknown_flag() -> None:
    proc = run_cli("simulate", "--rouns", "3")
    assert_one_line_error(proc, "unrecognized arguments: --rouns")


@needs_fsdd
def test_more_clients_than_speakers(tmp_path: Path) -> None:
    proc = run_cli(
        "simulate",
        "--dataset",
        "fsdd",
        "--data-root",
        str(FSDD),
        "--clients",
        "7",
        "--out",
        str(tmp_path / "run"),
    )
    assert_one_line_error(proc, "7 clients but only 6 speakers")
