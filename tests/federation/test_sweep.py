"""``fedspeech sweep``: variants run once, resumed where they stopped, gathered in a frontier."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest

from fedspeech.cli import main
from fedspeech.federation.sweep import FRONTIER_COLUMNS, load_sweep
from tests.helpers import write_tiny_sweep


def _files(folder: Path) -> None:
    write_tiny_sweep(folder, ("prune", "prune-ratio = 0.9"))


def test_a_sweep_file_is_checked_whole(tmp_path: Path) -> None:
    _files(tmp_path)
    sweep = load_sweep(tmp_path / "sweep.toml")
    assert [v.name for v in sweep.variants] == ["none", "prune"]
    assert sweep.variants[1].defense == ("pruning", "0.9")
    assert sweep.variants[1].leakage.share == "gradient"  # the base's settings, then the variant's
    assert sweep.audit == {
        "iterations": 20,
        "restarts": 1,
        "speaker": False,
        "content": False,
        "threads": 1,
    }


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_without_redoing_a_variant(
    tmp_path: Path,
    tiny_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FEDSPEECH_CACHE", str(tiny_cache))
    _files(tmp_path)
    out = tmp_path / "out"
    assert main(["sweep", str(tmp_path / "sweep.toml"), "--out", str(out)]) == 0
    rows = list(csv.DictReader(io.StringIO((out / "frontier.csv").read_text())))
    assert [r["variant"] for r in rows] == ["none", "prune"]
    assert list(rows[0]) == list(FRONTIER_COLUMNS)
    assert rows[1]["defense"] == "pruning" and float(rows[0]["n"]) == 2
    assert 0 <= float(rows[0]["stoi"]) <= 1 and float(rows[0]["random_stoi"]) >= 0
    assert (out / "frontier.png").stat().st_size > 1000
    assert "| none |" in (out / "frontier.md").read_text()
    # Its report: the frontier, and per variant its two run reports and audio examples.
    assert main(["report", str(out)]) == 0
    page = (out / "report" / "index.html").read_text()
    assert 'id="variant-none"' in page and 'id="variant-prune"' in page
    refs = re.findall(r'(?:href|src)="([^"#]+)"', page)
    assert sum(r.endswith(".wav") for r in refs) == 8  # 2 examples x 2 clips x 2 variants
    assert sum(r.endswith("report/index.html") for r in refs) == 4
    assert all((out / "report" / r).resolve().is_file() for r in refs)
    # As if interrupted during the second variant: its row was never written.
    (out / "prune" / "row.json").unlink()
    kept = {p: p.stat().st_mtime_ns for p in (out / "none").rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["sweep", str(tmp_path / "sweep.toml"), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "[1/2] none: done before" in err
    assert "[2/2] prune: utility run, leakage run, audit" in err
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # nothing of it was redone
    assert (out / "prune" / "row.json").is_file()
    # --reaudit: both variants audited again, their runs kept, their rows rewritten.
    runs = [p for v in ("none", "prune") for p in (out / v / "utility").rglob("*") if p.is_file()]
    runs += [p for v in ("none", "prune") for p in (out / v / "leakage" / "captures").rglob("*")]
    before = {p: p.stat().st_mtime_ns for p in runs}
    row_before = (out / "none" / "row.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["sweep", str(tmp_path / "sweep.toml"), "--out", str(out), "--reaudit"]) == 0
    err = capsys.readouterr().err
    assert "[1/2] none: audit again" in err and "[2/2] prune: audit again" in err
    assert {p: p.stat().st_mtime_ns for p in runs} == before
    assert (out / "none" / "row.json").stat().st_mtime_ns > row_before
    again = list(csv.DictReader(io.StringIO((out / "frontier.csv").read_text())))
    assert [r["stoi"] for r in again] == [r["stoi"] for r in rows]  # same settings, same scores
