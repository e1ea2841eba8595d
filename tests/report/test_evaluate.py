"""``fedspeech evaluate``: scores, EER, DET and min t-DCF (sdd); accuracy and confusion (kws)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedspeech.cli import main
from fedspeech.config import SimConfig
from fedspeech.metrics import eer, min_tdcf
from fedspeech.models import build_model
from fedspeech.models.weights import save_model_file
from fedspeech.tasks.sdd import load_sdd_corpus
from fedspeech.training.sdd import score_clips
from tests.helpers import TINY_KWS, simulate


def test_a_detector_is_scored_as_asvspoof_score_files_are(
    tmp_path: Path, tiny_spoof_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    model = build_model("aasist-xs", num_classes=2, num_samples=2400)
    kwargs = {"num_classes": 2, "num_samples": 2400}
    weights = tmp_path / "w.safetensors"
    save_model_file(
        weights, model.state_dict(), {"model": "aasist-xs", "task": "sdd", "model_kwargs": kwargs}
    )
    asv = tmp_path / "asv.txt"
    rng = np.random.default_rng(0)
    asv_scores = {"target": rng.normal(3, 1, 50), "nontarget": rng.normal(-3, 1, 50)}
    asv_scores["spoof"] = rng.normal(1, 1, 50)
    asv.write_text(
        "".join(f"s{i} {k} {v:.6f}\n" for k, vs in asv_scores.items() for i, v in enumerate(vs))
    )
    out = tmp_path / "eval"
    args = ["evaluate", "--init-weights", str(weights), "--data-root", str(tiny_spoof_root)]
    assert main([*args, "--out", str(out), "--asv-scores", str(asv), "--quiet"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "evaluation.json").read_text())
    # task, model and clip length came from the file's metadata.
    assert (result["task"], result["model"]) == ("sdd", "aasist-xs")
    lines = [ln.split() for ln in (out / "scores.txt").read_text().splitlines()]
    assert len(lines) == result["n_bonafide"] + result["n_spoof"] > 0
    assert {ln[2] for ln in lines} == {"bonafide", "spoof"}
    # The scores are the model's own, clip by clip.
    cfg = SimConfig.from_mapping(
        {"task": "sdd", "data_root": str(tiny_spoof_root), "clip_samples": 2400}
    )
    corpus = load_sdd_corpus(cfg)
    idx = corpus.indices("test")
    expected = score_clips(model, corpus.waveforms[idx])
    assert [ln[0] for ln in lines] == [corpus.clip_ids[i] for i in idx]
    np.testing.assert_allclose([float(ln[3]) for ln in lines], expected, atol=2e-6)
    scores = np.array([float(ln[3]) for ln in lines])
    bona = scores[[ln[2] == "bonafide" for ln in lines]]
    spoof = scores[[ln[2] == "spoof" for ln in lines]]
    assert result["eer"] == pytest.approx(eer(bona, spoof).eer, abs=1e-6)
    for attack, entry in result["per_attack"].items():
        mine = scores[[ln[1] == attack for ln in lines]]
        assert entry["n"] == len(mine)
        assert entry["eer"] == pytest.approx(eer(bona, mine).eer, abs=1e-6)
    tdcf = min_tdcf(bona, spoof, *(asv_scores[k] for k in ("target", "nontarget", "spoof")))
    assert result["min_tdcf"] == pytest.approx(tdcf[0], abs=1e-6)
    assert (out / "det.png").stat().st_size > 5000
    assert f"EER {100 * result['eer']:.2f} %" in printed and "min t-DCF" in printed
    # --max-clips: a fixed subset.
    small = tmp_path / "small"
    assert main([*args, "--out", str(small), "--max-clips", "5", "--quiet"]) == 0
    assert len((small / "scores.txt").read_text().splitlines()) == 5


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("s1 target 1.0\ns2 visitor 2.0\n", "line 2: expected 'source key score'"),
        ("s1 target 1.0\ns2 nontarget nan\ns3 spoof 0\n", "line 2: 'nan' is not a score"),
        ("s1 target 1.0\ns3 spoof 0\n", "no nontarget trials"),
    ],
)
def test_a_bad_asv_score_file_is_one_line(
    tmp_path: Path, text: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model = build_model("aasist-xs", num_classes=2, num_samples=2400)
    weights = tmp_path / "w.safetensors"
    save_model_file(weights, model.state_dict(), {"model": "aasist-xs", "task": "sdd"})
    (tmp_path / "asv.txt").write_text(text)
    args = ["evaluate", "--init-weights", str(weights), "--out", str(tmp_path / "e")]
    assert main([*args, "--asv-scores", str(tmp_path / "asv.txt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "e").exists()


@pytest.mark.slow
def test_a_keyword_run_scores_its_own_test_accuracy(tmp_path: Path, tiny_cache: Path) -> None:
    env = {"FEDSPEECH_CACHE": str(tiny_cache)}
    run = tmp_path / "run"
    simulate(run, *TINY_KWS, "--clients", "3", "--fraction", "1", "--rounds", "1", env=env)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDSPEECH_CACHE", str(tiny_cache))
        assert main(["evaluate", "--init-weights", str(run), "--out", str(tmp_path / "e")]) == 0
    result = json.loads((tmp_path / "e" / "evaluation.json").read_text())
    final = json.loads((run / "metrics.json").read_text())["final"]
    # The run's own settings (dataset, front-end, speakers) were taken from model.safetensors.
    assert result["accuracy"] == pytest.approx(final["accuracy"], abs=1e-9)
    confusion = np.array(result["confusion"])
    assert confusion.sum() == result["n"]
    assert np.trace(confusion) / result["n"] == pytest.approx(result["accuracy"])
    assert (tmp_path / "e" / "confusion.png").is_file()
    assert len((tmp_path / "e" / "predictions.txt").read_text().splitlines()) == result["n"]
