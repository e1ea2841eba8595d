"""``fedspeech report``: pages of hand-built run folders (no simulation) and bad input.

Each folder holds only what the case needs: a run that was never audited, an audit that
was interrupted, a speech-deepfake run, an audited run with WAVs and scores.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from fedspeech.audit import LEAKAGE_COLUMNS
from fedspeech.report.html import write_report
from tests.helpers import assert_one_line_error, run_cli

SR = 16_000


def _run(tmp_path: Path, task: str = "kws", **metrics: object) -> Path:
    run = tmp_path / "run"
    run.mkdir(parents=True)
    (run / "config.toml").write_text(
        f'[simulate]\ntask = "{task}"\nmodel = "kws-cnn"\nclients = 3\nrounds = 2\n'
    )
    rounds: list[dict[str, Any]] = [
        {"round": n, "accuracy": 0.3 * n, "loss": 2.0 / n, "seconds": 1.0, "clients": [{}] * 3}
        for n in (1, 2)
    ]
    if task == "sdd":
        for entry in rounds:
            entry.update(eer=0.4 / entry["round"], eer_unseen=0.45 / entry["round"])
    doc = {"initial": {"accuracy": 0.1, "loss": 2.3}, "rounds": rounds, **metrics}
    (run / "metrics.json").write_text(json.dumps(doc))
    (run / "captures").mkdir()
    for r in (1, 2):
        (run / "captures" / f"r00{r}_c0000.safetensors").write_bytes(b"")
    return run


def _audit(run: Path, stoi: list[float]) -> list[dict[str, str]]:
    """An audit's files for len(stoi) samples: leakage.csv, WAVs, spectrograms, summary."""
    audit = run / "audit"
    for sub in ("wav", "spectrograms", "samples"):
        (audit / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i, value in enumerate(stoi):
        capture = f"r00{1 + i % 2}_c000{i}"
        row = {c: "" for c in LEAKAGE_COLUMNS}
        row.update(
            capture=capture, round=str(1 + i % 2), client=str(i), index="0", label="1",
            label_recovered="1", stoi=str(value), pesq_nb="1.5", pesq_wb="1.2",
            f_mse="1e-4", speaker_reidentified="1", content_predicted="1",
        )  # fmt: skip
        rows.append(row)
        for kind in ("original", "from_features", "reconstruction"):
            sf.write(audit / "wav" / f"{capture}_0_{kind}.wav", 0.1 * rng.standard_normal(SR), SR)
        # A real (tiny) PNG: the page shows the file the audit wrote.
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        plt.imsave(audit / "spectrograms" / f"{capture}_0.png", rng.random((8, 24)))
        (audit / "samples" / f"{capture}.json").write_text("{}")
    with open(audit / "leakage.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LEAKAGE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    stats = {"mean": float(np.mean(stoi)), "std": float(np.std(stoi)), "n": len(stoi)}
    summary = {"scored": True, "from_gradients": {"stoi": stats}, "from_features": {"stoi": stats}}
    (audit / "summary.json").write_text(json.dumps(summary))
    return rows


def test_a_run_never_audited_says_so(tmp_path: Path) -> None:
    run = _run(tmp_path)
    page = write_report(run).read_text()
    assert "not audited: 2 captures are waiting" in page
    assert f"fedspeech audit {run}" in page
    assert "no run.json" in page
    assert 'id="rounds"' in page and (run / "report" / "utility.png").is_file()
    assert "<audio" not in page and "No audited sample." in page


def test_an_interrupted_audit_and_run_say_what_finishes_them(tmp_path: Path) -> None:
    run = _run(tmp_path, interrupted=True)
    (run / "audit" / "samples").mkdir(parents=True)
    (run / "audit" / "samples" / "r001_c0000.json").write_text("{}")
    page = write_report(run).read_text()
    assert "the audit did not finish (1 of 2 captures attacked" in page
    assert "interrupted after 2 round(s)" in page and f"--resume {run}" in page


def test_an_sdd_run_charts_its_eer(tmp_path: Path) -> None:
    run = _run(tmp_path, task="sdd")
    page = write_report(run).read_text()
    assert "EER unseen" in page and "0.225" in page  # round 2's unseen EER
    assert "EER of the global model" in page  # the chart's alt text
    assert "no DET curve" in page
    # With fedspeech evaluate's results in RUN/evaluation: the EER and the DET curve.
    (run / "evaluation").mkdir()
    result = {"task": "sdd", "dataset": "builtin", "split": "test", "eer": 0.125}
    result |= {"n_bonafide": 8, "n_spoof": 24}
    (run / "evaluation" / "evaluation.json").write_text(json.dumps(result))
    import matplotlib.pyplot as plt

    plt.imsave(run / "evaluation" / "det.png", np.zeros((8, 8)))
    page = write_report(run).read_text()
    assert "no DET curve" not in page and "EER 12.50 % on 8 bona fide and 24 spoofed" in page
    assert 'src="../evaluation/det.png"' in page and "Detection error trade-off" in page


def test_audited_samples_become_sortable_cards_with_their_files(tmp_path: Path) -> None:
    run = _run(tmp_path)
    rows = _audit(run, [0.5, 0.9, 0.7])
    page = write_report(run).read_text()
    cards = re.findall(r'<li class="card" id="sample-([^"]+)"[^>]*data-stoi="([^"]+)"', page)
    assert [c for c, _ in cards] == [f"{r['capture']}_0" for r in rows]  # audit order
    assert [float(v) for _, v in cards] == [0.5, 0.9, 0.7]
    sources = re.findall(r'<audio controls preload="metadata" src="([^"]+)"', page)
    assert len(sources) == 9
    for src in sources + re.findall(r'<img src="([^"]+)"', page):
        assert (run / "report" / src).resolve().is_file(), src  # relative to the page
    assert re.search(r"<th scope=\"row\">STOI</th><td class=\"num\">0.70 ± 0.16 \(n=3\)", page)
    assert (run / "report" / "leakage.png").is_file()  # two audited rounds
    for tag in re.findall(r"<img [^>]*>", page):
        assert re.search(r'alt="[^"]+"', tag), tag


def test_embed_puts_every_file_inside_the_page(tmp_path: Path) -> None:
    run = _run(tmp_path)
    _audit(run, [0.5, 0.9])
    page = write_report(run, embed=True).read_text()
    assert page.count('src="data:audio/') == 6
    assert 'src="data:image/png;base64,' in page
    assert "../audit/" not in page and 'src="utility.png"' not in page


def test_the_command_and_its_bad_input(tmp_path: Path) -> None:
    run = _run(tmp_path)
    proc = run_cli("report", str(run))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(run / "report" / "index.html")
    assert_one_line_error(run_cli("report", str(tmp_path / "nothing")), "is not a folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_cli("report", str(empty)), "has no config.toml")
    (run / "metrics.json").write_text("{not json")
    assert_one_line_error(run_cli("report", str(run)), "metrics.json is not readable JSON")
    blocked = _run(tmp_path / "blocked")
    (blocked / "report").write_text("a file where the report folder goes")
    assert_one_line_error(run_cli("report", str(blocked)), "cannot write", "report")


@pytest.mark.parametrize("name", ["config.toml"])
def test_unreadable_config_is_one_line(tmp_path: Path, name: str) -> None:
    run = _run(tmp_path)
    (run / name).write_text("[simulate\n")
    assert_one_line_error(run_cli("report", str(run)), "is not readable TOML")
