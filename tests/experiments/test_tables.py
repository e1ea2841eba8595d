"""experiments/tables.py: the README's leakage tables from audited run folders."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from fedspeech.audit import LEAKAGE_COLUMNS
from tests.helpers import REPO as ROOT


def load_tables() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tables", ROOT / "experiments" / "tables.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fake_run(
    tmp: Path,
    rows: list[dict[str, object]],
    frontend: str = "mel",
    settings: dict[str, object] | None = None,
) -> Path:
    run = tmp / frontend
    (run / "audit").mkdir(parents=True)
    (run / "config.toml").write_text(
        f'[simulate]\nfrontend = "{frontend}"\nbatch-size = 1\n', encoding="utf-8"
    )
    (run / "metrics.json").write_text(
        json.dumps({"initial": {"accuracy": 0.1}, "rounds": [{"round": 1, "accuracy": 0.5}]})
    )
    (run / "audit" / "summary.json").write_text(
        json.dumps(
            {
                "speaker_eer": 0.25,
                "settings": settings or {"tv_weight": 0.001, "restarts": 2, "iterations": 8000},
            }
        )
    )
    with open(run / "audit" / "leakage.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, LEAKAGE_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({"label": 3, "label_correct": 1, **r})
    return run


def test_table2_ratio_uses_samples_both_sides_scored(tmp_path: Path) -> None:
    tables = load_tables()
    run = fake_run(
        tmp_path,
        [
            {"round": 1, "pesq_nb": 2.0, "ff_pesq_nb": 2.5, "stoi": 0.8, "ff_stoi": 0.8},
            {"round": 1, "pesq_nb": 1.0, "ff_pesq_nb": "", "stoi": 0.6, "ff_stoi": 0.9},
            {"round": 2, "pesq_nb": "nan", "ff_pesq_nb": 3.0, "stoi": 0.7, "ff_stoi": 0.7},
        ],
    )
    text = tables.table2([run])
    row = text.splitlines()[2].split("|")
    # PESQ ratio only over the first sample (the others lack one side): 2.0 / 2.5.
    assert row[8].strip() == "0.800"
    assert row[7].strip() == "1.50 ± 0.50 (n=2)"
    # Audits from before --tv-reduction existed summed the total variation.
    assert row[2].strip() == "0.001 (sum)"
    # STOI over all three: 2.1 / 2.4.
    assert row[13].strip() == f"{2.1 / 2.4:.3f}"
    sweep = tables.sweep([run]).splitlines()
    assert [line.split("|")[5].strip() for line in sweep[2:]] == ["1", "2"]
    assert sweep[2].split("|")[6].strip() == "0.100"  # accuracy before round 1: initial
    assert sweep[3].split("|")[6].strip() == "0.500"
    assert sweep[2].split("|")[3].strip() == "gradient"
    assert sweep[2].split("|")[2].strip() == "2 × 8000"


def test_table2_names_the_tv_reduction(tmp_path: Path) -> None:
    tables = load_tables()
    settings = {"tv_weight": 0.001, "tv_reduction": "mean", "restarts": 2, "iterations": 8000}
    run = fake_run(tmp_path, [{"round": 1, "pesq_nb": 2.0, "ff_pesq_nb": 2.5}], settings=settings)
    assert tables.table2([run]).splitlines()[2].split("|")[2].strip() == "0.001 (mean)"


def test_missing_audit_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tables = load_tables()
    with pytest.raises(SystemExit) as info:
        tables.main(["table2", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not an audited run" in err


def test_waveform_table_has_a_random_guess_beside_the_attack(tmp_path: Path) -> None:
    import numpy as np
    import soundfile as sf

    tables = load_tables()
    rows = [
        {"capture": "r001_c0000", "index": i, "round": 1, "f_mse": 1e-3, "stoi": 0.9}
        for i in range(2)
    ]
    run = fake_run(tmp_path, rows)
    text = (run / "config.toml").read_text() + 'model = "aasist-xs"\ndropout = false\n'
    (run / "config.toml").write_text(text)
    t = np.arange(8000) / 16000
    (run / "audit" / "wav").mkdir()
    for i in range(2):
        tone = 0.3 * np.sin(2 * np.pi * 200 * (i + 1) * t)
        sf.write(run / "audit" / "wav" / f"r001_c0000_{i}_original.wav", tone, 16000)
    line = tables.waveform([run]).splitlines()[2].split("|")
    assert [c.strip() for c in line[1:6]] == ["aasist-xs", "off", "2", "2 × 8000", "1.00"]
    assert line[6].strip() == "1.0e-03 ± 0.0e+00"
    # Noise of standard deviation 0.1 against tones of power 0.045: F-MSE about 0.055.
    guess = float(line[9].split("±")[0])
    assert 0.045 < guess < 0.065


def test_alignment_table_is_one_row_per_method_over_its_seeds(tmp_path: Path) -> None:
    tables = load_tables()
    for method, seed, acc in (("plain", 0, 0.8), ("pcgrad", 0, 0.9), ("pcgrad", 1, 0.7)):
        folder = tmp_path / f"{method}-s{seed}"
        folder.mkdir()
        row = {"accuracy": acc, "conflict_rate": 0.01, "label_accuracy": 1.0}
        row |= {"pesq_nb": 1.5, "stoi": 0.5}
        (folder / "row.json").write_text(json.dumps(row))
    lines = tables.alignment([tmp_path]).splitlines()
    assert [ln.split("|")[1].strip() for ln in lines[2:]] == ["plain", "pcgrad"]
    cells = [c.strip() for c in lines[3].split("|")[1:-1]]
    assert cells[1:4] == ["2", "0.800 ± 0.100", "0.0100 ± 0.0000"]


def test_unrolled_table_puts_the_three_models_of_a_run_side_by_side(tmp_path: Path) -> None:
    tables = load_tables()
    stoi = {"u4": [0.8, 0.5], "u4-avg": [0.3, 0.2], "u4-avgcos": [0.6, 0.2], "u4-grad": [0.9, 0.7]}
    for name, values in stoi.items():
        # fake_run names the folder after its front-end argument.
        run = fake_run(tmp_path, [{"round": 1, "stoi": v} for v in values], frontend=name)
        summary = json.loads((run / "audit" / "summary.json").read_text(encoding="utf-8"))
        summary.update(captures=2, stage1={"seconds": 30.0})
        (run / "audit" / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    (tmp_path / "u4" / "config.toml").write_text(
        '[simulate]\nfrontend = "mel"\nbatch-size = 1\nshare = "update"\nlocal-steps = 4\n',
        encoding="utf-8",
    )
    lines = tables.unrolled([tmp_path / "u4"]).splitlines()[2:]
    cells = [[c.strip() for c in line.split("|")] for line in lines]
    assert [c[3].split(" (")[0] for c in cells] == [
        "unrolled", "averaged", "averaged", "gradient of the same clips"
    ]  # fmt: skip
    assert [c[9] for c in cells] == ["1/2", "0/2", "1/2", "2/2"]  # STOI >= 0.6
    assert cells[0][1] == "update, 4 steps" and cells[0][10] == "15"  # 30 s over 2 captures
