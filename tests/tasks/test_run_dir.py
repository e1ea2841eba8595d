"""Run folders: claimed once, never shared, replaced only when asked, described by run.json."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fedspeech import __version__
from fedspeech.config import SimConfig
from fedspeech.errors import DataError, FedspeechError
from fedspeech.tasks import KWS, prepare_run
from fedspeech.tasks import prepare as prep
from fedspeech.tasks.prepare import RUN_ENTRIES, claim_run_dir, holds_run, source_commit


def _old_run(path: Path) -> None:
    """A folder holding every entry a run writes, and one file of the user's."""
    for name in RUN_ENTRIES:
        if "." in name:
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_text("old\n")
        else:
            (path / name).mkdir(parents=True)
            (path / name / "old.bin").write_bytes(b"old")
    (path / "notes.md").write_text("mine\n")


def test_default_folders_of_the_same_second_get_a_suffix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(prep, "default_run_dir", lambda: Path("runs") / "20261202-120000")
    claimed = [claim_run_dir(SimConfig()) for _ in range(3)]
    assert [p.name for p in claimed] == [
        "20261202-120000",
        "20261202-120000-1",
        "20261202-120000-2",
    ]
    assert all((p / "run.json").is_file() for p in claimed)


def test_an_empty_out_is_used(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert claim_run_dir(SimConfig(out=str(out))) == out
    assert (out / "run.json").is_file()


@pytest.mark.parametrize("marker", ["metrics.json", "config.toml", "captures"])
def test_an_out_holding_a_run_is_refused(tmp_path: Path, marker: str) -> None:
    (tmp_path / marker).mkdir() if marker == "captures" else (tmp_path / marker).write_text("")
    assert holds_run(tmp_path)
    with pytest.raises(FedspeechError, match="holds a run; use --overwrite to replace it"):
        claim_run_dir(SimConfig(out=str(tmp_path)))
    assert not (tmp_path / "run.json").exists()


def test_overwrite_removes_the_old_run_and_nothing_else(tmp_path: Path) -> None:
    _old_run(tmp_path)
    claim_run_dir(SimConfig(out=str(tmp_path), overwrite=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.md", "run.json"]
    assert json.loads((tmp_path / "run.json").read_text())["versions"]["fedspeech"]


def test_overwrite_is_not_recorded_in_config_toml() -> None:
    """A config.toml fed back with --config must not replace a run unasked."""
    assert "overwrite" not in SimConfig(overwrite=True).to_toml()


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("/dev/null/x", "cannot create run folder /dev/null/x: /dev/null is not a folder"),
        # /proc takes no new folders, not even from root: the other kind of failure.
        pytest.param(
            "/proc/fedspeech-run",
            "cannot create run folder /proc/fedspeech-run",
            marks=pytest.mark.skipif(sys.platform != "linux", reason="Linux's /proc"),
        ),
    ],
)
def test_an_unwritable_out_names_the_folder(out: str, message: str) -> None:
    with pytest.raises(FedspeechError, match=re.escape(message)):
        claim_run_dir(SimConfig(out=out))


def test_run_json_records_command_versions_commit_time_and_host(tmp_path: Path) -> None:
    claim_run_dir(SimConfig(out=str(tmp_path)))
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["argv"] == sys.argv
    assert info["versions"]["fedspeech"] == __version__
    assert set(info["versions"]) == {"fedspeech", "python", "torch", "numpy", "flwr", "ray"}
    assert info["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", info["git_commit"])
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", info["started"])
    assert info["hostname"]


def test_source_commit_without_git(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_git(*args: Any, **kwargs: Any) -> None:
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert source_commit() is None


def test_a_failed_preparation_removes_the_folder_it_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(cfg: SimConfig, run_dir: Path | None = None) -> None:
        assert run_dir is not None and (run_dir / "run.json").is_file()
        raise DataError("no clips")

    monkeypatch.setattr(KWS, "prepare", fail)  # KWS is the registered instance
    new, kept = tmp_path / "new", tmp_path / "kept"
    kept.mkdir()
    for out in (new, kept):
        with pytest.raises(DataError):
            prepare_run(SimConfig(out=str(out)))
    assert not new.exists()
    assert kept.is_dir()  # it was there before: left alone


def test_a_read_only_out_names_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root writes into read-only folders, so the refusals are simulated here."""

    def denied(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(prep, "atomic_write_json", denied)  # an existing, locked folder
    with pytest.raises(FedspeechError, match=f"cannot write to run folder {tmp_path}: Perm"):
        claim_run_dir(SimConfig(out=str(tmp_path)))
    monkeypatch.setattr(Path, "mkdir", denied)  # a new folder inside a locked one
    with pytest.raises(FedspeechError, match="cannot create run folder .*new: Permission denied"):
        claim_run_dir(SimConfig(out=str(tmp_path / "new")))
