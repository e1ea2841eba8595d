"""End-to-end Flower simulations on a tiny built-in corpus (Ray, a few seconds each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from fedspeech.capture import load_capture, load_truth
from fedspeech.data.corpus import KeywordCorpus
from fedspeech.data.loaders import load_dataset
from fedspeech.data.synth import synthesize_corpus
from fedspeech.frontends import build_frontend
from fedspeech.models import build_model
from fedspeech.tasks.prepare import peak_normalize
from fedspeech.training import compute_gradient, train_local
from tests.helpers import leftover_processes

pytestmark = pytest.mark.slow

TINY = ["--synth-speakers", "12", "--synth-takes", "1", "--clients", "3", "--fraction", "1"]


# Two rounds of FedSGD, one clip per shared gradient: the study's threat model.
FEDSGD_2_ROUNDS = ("--share", "gradient", "--batch-size", "1", "--rounds", "2")


def simulate(tmp: Path, cache: Path, *args: str) -> Path:
    run_dir = tmp / "run"
    # Every process the run starts (Ray's too) inherits this marker, so leftovers are
    # found without counting other people's Ray processes on the machine.
    marker = f"FEDSPEECH_TEST_RUN={uuid.uuid4().hex}"
    key, value = marker.split("=")
    env = {**os.environ, "FEDSPEECH_CACHE": str(cache), key: value}
    proc = subprocess.run(
        [sys.executable, "-m", "fedspeech", "simulate", *TINY, "--out", str(run_dir), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not leftover_processes(marker), "simulate left processes behind"
    return run_dir


def original_features(cache: Path, clip_ids: list[str]) -> torch.Tensor:
    """Features recomputed from the audio files, independently of the run folder."""
    os.environ["FEDSPEECH_CACHE"] = str(cache)
    root = synthesize_corpus(n_speakers=12, takes=1, progress=False)
    corpus: KeywordCorpus = load_dataset("synth", root)
    pos = [corpus.clip_ids.index(c) for c in clip_ids]
    waves = peak_normalize(corpus.waveforms[pos])
    with torch.no_grad():
        return build_frontend("mel")(torch.from_numpy(waves))


def test_gradient_capture_matches_recomputed_gradient(tmp_path: Path, tiny_cache: Path) -> None:
    run = simulate(tmp_path, tiny_cache, *FEDSGD_2_ROUNDS, "--capture-clients", "all")
    caps = sorted((run / "captures").glob("*.safetensors"))
    assert len(caps) == 2 * 3
    for path in caps[:3]:
        cap = load_capture(path)
        truth = load_truth(run / "truth" / f"{path.stem}.json")
        assert cap.kind == "gradient" and cap.num_examples == 1
        (batch,) = truth["batches"]
        model = build_model(cap.model, **cap.model_kwargs)
        model.load_state_dict(cap.global_weights)
        x = original_features(tiny_cache, batch["clip_ids"])
        y = torch.tensor(batch["labels"])
        grads = compute_gradient(model, x, y)
        for name, g in grads.items():
            torch.testing.assert_close(cap.shared[name], g, rtol=1e-4, atol=1e-6)

    metrics = json.loads((run / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert set(metrics["final"]) == {"accuracy", "loss"}
    assert all(len(r["clients"]) == 3 for r in metrics["rounds"])
    assert (run / "accuracy.png").stat().st_size > 1000
    assert 'share = "gradient"' in (run / "config.toml").read_text()


def test_update_capture_matches_replayed_training(tmp_path: Path, tiny_cache: Path) -> None:
    run = simulate(
        tmp_path, tiny_cache, "--rounds", "2", "--local-epochs", "1", "--capture-clients", "1"
    )
    caps = sorted((run / "captures").glob("*.safetensors"))
    assert len(caps) == 2  # one client per round
    cap = load_capture(caps[-1])
    truth = load_truth(run / "truth" / f"{caps[-1].stem}.json")
    feats = np.load(run / "data" / "features.npy")
    labels = np.load(run / "data" / "labels.npy")
    model = build_model(cap.model, **cap.model_kwargs)
    model.load_state_dict(cap.global_weights)
    batches = [np.asarray(b["positions"]) for b in truth["batches"]]
    train_local(
        model,
        feats,
        labels,
        batches,
        lr=cap.training["lr"],
        momentum=cap.training["momentum"],
        clip_norm=cap.training["clip_norm"],
    )
    for name, w in model.state_dict().items():
        torch.testing.assert_close(cap.shared[name], w, rtol=1e-4, atol=1e-6)
    assert cap.num_examples == sum(len(b) for b in batches)


def test_audit_after_each_round(tmp_path: Path, tiny_cache: Path) -> None:
    run = simulate(
        tmp_path,
        tiny_cache,
        *FEDSGD_2_ROUNDS,
        *("--capture-clients", "1"),
        *("--audit", "--audit-iterations", "40", "--audit-threads", "1"),
    )
    metrics = json.loads((run / "metrics.json").read_text())
    for entry in metrics["rounds"]:
        leak = entry["leakage"]
        assert leak["label_accuracy"] == 1.0  # iDLG is exact at batch 1
        # STOI is a mean correlation: a 40-step reconstruction can score just below 0.
        assert -1.0 <= leak["stoi"] <= 1.0 and np.isfinite(leak["f_mse"])
    summary = json.loads((run / "audit" / "summary.json").read_text())
    assert summary["samples"] == 2  # both rounds' captures, summarised together
    rounds = {int(p.stem[1:4]) for p in (run / "audit" / "samples").glob("*.json")}
    assert rounds == {1, 2}
    # simulate --audit ends with the run's report: one card per audited sample.
    page = (run / "report" / "index.html").read_text()
    assert page.count('<li class="card"') == 2 and "Leakage" in page
