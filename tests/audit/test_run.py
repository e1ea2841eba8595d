"""``fedspeech audit``: the attack on a tiny simulated run, its files, resume and bad input.

One Flower simulation (12 speakers, 3 clients, 1 round, FedSGD with batch size 1, two
captured clients) is shared by the module; the audits run few stage-1 steps with a large
step size so that the module stays within a few minutes on a busy two-core machine.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from attacks.features import initial_features
from attacks.scoring import SPEAKER_MODELS, stoi
from attacks.waveform import features_to_wave
from fedspeech.audit import LEAKAGE_COLUMNS, SUMMARY_METRICS, AuditSettings, audit_run
from fedspeech.capture import load_capture, load_truth, save_capture
from fedspeech.cli import main as cli_main

pytestmark = pytest.mark.slow

SIMULATE = [
    "--synth-speakers", "12", "--synth-takes", "1", "--clients", "3", "--fraction", "1",
    "--rounds", "1", "--share", "gradient", "--batch-size", "1", "--capture-clients", "2",
]  # fmt: skip

# Few, large steps: enough to recover these 32 x 32 Mel inputs well in seconds (about 15 s
# for both captures on one busy core), far from the study's 8000 x 0.01.
FAST: dict[str, Any] = {
    "iterations": 200,
    "restarts": 1,
    "lr": 0.1,
    "threads": 1,
    "speaker": False,
    "max_samples": 2,
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_cache: Path) -> Path:
    out = tmp_path_factory.mktemp("audit") / "run"
    env = {**os.environ, "FEDSPEECH_CACHE": str(tiny_cache)}
    proc = subprocess.run(
        [sys.executable, "-m", "fedspeech", "simulate", *SIMULATE, "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def cache_env(tiny_cache: Path) -> Iterator[None]:
    # The scorer reloads the built-in corpus from the cache the run was built with.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDSPEECH_CACHE", str(tiny_cache))
        yield


@pytest.fixture(scope="module")
def audited(run_dir: Path, cache_env: None) -> tuple[dict[str, Any], float]:
    t0 = time.perf_counter()
    summary = audit_run(run_dir, AuditSettings(**FAST), progress=False)
    return summary, time.perf_counter() - t0


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_end_to_end_beats_random_features(run_dir: Path, audited: tuple[dict, float]) -> None:
    summary, seconds = audited
    out = run_dir / "audit"
    rows = read_rows(out / "leakage.csv")
    assert len(rows) == 2
    assert list(rows[0]) == list(LEAKAGE_COLUMNS)

    on_disk = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    for part in ("from_gradients", "from_features"):
        assert on_disk[part], part
        for metric, stats in on_disk[part].items():
            assert metric in SUMMARY_METRICS
            assert set(stats) == {"mean", "std", "n"}
    grad, feat = on_disk["from_gradients"], on_disk["from_features"]
    assert {"f_mse", "w_mse", "stoi", "label_accuracy", "content_rate"} <= set(grad)
    assert "speaker_reid_rate" not in grad  # --no-speaker
    assert "f_mse" not in feat and "label_accuracy" not in feat
    assert grad["label_accuracy"] == {"mean": 1.0, "std": 0.0, "n": 2}
    assert grad["stoi"]["n"] == 2 and feat["stoi"]["n"] == 2

    for row in rows:
        stem = f"{row['capture']}_{row['index']}"
        for kind in ("original", "reconstruction", "from_features"):
            info = sf.info(str(out / "wav" / f"{stem}_{kind}.wav"))
            assert (info.samplerate, info.subtype, info.channels) == (16_000, "PCM_16", 1)
        assert (out / "spectrograms" / f"{stem}.png").stat().st_size > 0
    assert (out / "summary.png").is_file()
    assert not (out / "leakage_by_round.png").exists()  # one round only
    assert (out / "content_classifier.safetensors").is_file()

    # Baseline: random features of the same shape through the same stage 2, scored against
    # the same originals and true features.
    features = np.load(run_dir / "data" / "features.npy", allow_pickle=False)
    gen = torch.Generator().manual_seed(1234)
    base_fmse, base_stoi, rec_fmse, rec_stoi = [], [], [], []
    for row in rows:
        truth = load_truth(run_dir / "truth" / f"{row['capture']}.json")
        (pos,) = truth["batches"][0]["positions"]
        assert truth["batches"][0]["clip_ids"] == [row["clip_id"]]
        true = features[pos]
        noise = torch.randn(true.shape, generator=gen).numpy()
        original, _ = sf.read(out / "wav" / f"{row['capture']}_{row['index']}_original.wav")
        base_fmse.append(float(np.mean((noise - true) ** 2)))
        base_stoi.append(stoi(original, features_to_wave(noise, "mel")))
        rec_fmse.append(float(row["f_mse"]))
        rec_stoi.append(float(row["stoi"]))
    print(
        f"audit {seconds:.1f} s (stage 1 {summary['stage1']['seconds']:.1f} s); F-MSE "
        f"{rec_fmse} vs random {base_fmse}; STOI {rec_stoi} vs random {base_stoi}"
    )
    for rec, base in zip(rec_fmse, base_fmse, strict=True):
        assert rec < 0.25 * base
    assert np.mean(rec_stoi) > np.mean(base_stoi) + 0.15


def test_the_random_guess_is_the_stage1_start_scored_the_same_way(
    run_dir: Path, audited: tuple[dict, float]
) -> None:
    out = run_dir / "audit"
    rows = read_rows(out / "leakage.csv")
    features = np.load(run_dir / "data" / "features.npy", allow_pickle=False)
    settings = AuditSettings(**FAST)
    for row in rows:
        truth = load_truth(run_dir / "truth" / f"{row['capture']}.json")
        (pos,) = truth["batches"][0]["positions"]
        true = features[pos]
        # Batch 1: the capture's start is restart 0's draw of shape (1, F, T).
        start = initial_features((1, *true.shape), settings.seed, 0).numpy()[0]
        expected = float(np.mean((start - true) ** 2))
        assert float(row["guess_f_mse"]) == pytest.approx(expected, rel=1e-3)  # CSV: 4 digits
        assert float(row["guess_f_mse"]) > 4 * float(row["f_mse"])
        assert 0.0 <= float(row["guess_stoi"]) < float(row["stoi"])
    guess = json.loads((out / "summary.json").read_text(encoding="utf-8"))["random_guess"]
    assert guess["n"] == len(rows) == 2
    assert guess["stoi"] == pytest.approx(np.mean([float(r["guess_stoi"]) for r in rows]), rel=1e-3)


def test_resume_reuses_finished_captures(
    run_dir: Path, audited: tuple[dict, float], tmp_path: Path
) -> None:
    first, _ = audited
    assert (first["stage1"]["reconstructed"], first["stage1"]["reused"]) == (2, 0)
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)  # copy2 keeps the modification times
    out = copy / "audit"
    before_csv = (out / "leakage.csv").read_text(encoding="utf-8")
    (out / "leakage.csv").unlink()
    (out / "summary.json").unlink()
    stamps = {p: p.stat().st_mtime_ns for p in (out / "reconstructions").iterdir()}
    stamps |= {p: p.stat().st_mtime_ns for p in (out / "samples").iterdir()}

    t0 = time.perf_counter()
    again = audit_run(copy, AuditSettings(**FAST), progress=False)
    seconds = time.perf_counter() - t0
    assert again["stage1"]["reused"] == 2 and again["stage1"]["reconstructed"] == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert (out / "leakage.csv").read_text(encoding="utf-8") == before_csv
    assert again["from_gradients"] == first["from_gradients"]
    assert seconds < first["stage1"]["seconds"]

    # --max-samples 1 keeps the first capture only (the summary covers what was selected).
    one = audit_run(copy, AuditSettings(**{**FAST, "max_samples": 1}), progress=False)
    assert one["samples"] == 1 and len(read_rows(out / "leakage.csv")) == 1


def stop_after_first(real: Any, seen: list[Any] | None = None) -> Any:
    """``real`` (stage 1's reconstruct) raising KeyboardInterrupt once it handed over its first
    result; the targets it was given are appended to ``seen``."""

    def interrupted(targets: Any, labels: Any, settings: Any, *, on_result: Any, **kw: Any) -> Any:
        if seen is not None:
            seen.extend(targets)

        def first_then_stop(i: int, rec: Any) -> None:
            on_result(i, rec)
            raise KeyboardInterrupt

        return real(targets, labels, settings, on_result=first_then_stop, **kw)

    return interrupted


def test_interrupted_chunk_keeps_the_captures_it_finished(
    run_dir: Path, audited: tuple[dict, float], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedspeech.audit import execution

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "audit")
    real = execution.reconstruct
    # Both captures are one chunk; stop as soon as the first is handed over.
    monkeypatch.setattr(execution, "reconstruct", stop_after_first(real))
    with pytest.raises(KeyboardInterrupt):
        audit_run(copy, AuditSettings(**FAST), progress=False)
    assert len(list((copy / "audit" / "reconstructions").iterdir())) == 1
    monkeypatch.setattr(execution, "reconstruct", real)
    again = audit_run(copy, AuditSettings(**FAST), progress=False)
    assert again["stage1"]["rescored"] == 1 and again["stage1"]["reconstructed"] == 1


def test_interrupted_audit_of_multi_step_updates_resumes(
    tiny_cache: Path, cache_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Updates of 2 local steps, replayed (unrolled): stop after the first capture, resume."""
    from fedspeech.audit import execution

    run = tmp_path / "updates"
    update = [*SIMULATE, "--share", "update", "--local-steps", "2", "--out", str(run), "--quiet"]
    env = {**os.environ, "FEDSPEECH_CACHE": str(tiny_cache)}
    cmd = [sys.executable, "-m", "fedspeech", "simulate", *update]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cap = load_capture(next((run / "captures").glob("*.safetensors")))
    assert cap.training["batch_order"] == [[0], [1]]  # one clip a step, as the client ran
    settings = AuditSettings(**{**FAST, "iterations": 60, "max_samples": 4, "content": False})
    real = execution.reconstruct
    seen: list[Any] = []
    monkeypatch.setattr(execution, "reconstruct", stop_after_first(real, seen))
    with pytest.raises(KeyboardInterrupt):
        audit_run(run, settings, progress=False)
    assert all(t.local_training is not None and t.batch_size == 2 for t in seen)
    assert len(list((run / "audit" / "reconstructions").iterdir())) == 1
    monkeypatch.setattr(execution, "reconstruct", real)
    again = audit_run(run, settings, progress=False)
    assert again["stage1"]["rescored"] == 1 and again["stage1"]["reconstructed"] == 1
    assert again["clips"]["in_updates"] == again["clips"]["reconstructed"] == 4
    rows = read_rows(run / "audit" / "leakage.csv")
    assert {r["update_clips"] for r in rows} == {"2"}


class SpectralEncoder:
    """Stand-in speaker encoder: the normalised mean log spectrum (no model download)."""

    def embed(self, wave16k: np.ndarray) -> np.ndarray:
        x = np.asarray(wave16k, dtype=np.float64)
        frames = np.lib.stride_tricks.sliding_window_view(x, 512)[::256] * np.hanning(512)
        spec = np.log(np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-8).mean(axis=0)
        return (spec - spec.mean()).astype(np.float32)


if "test-spectral" not in SPEAKER_MODELS:
    SPEAKER_MODELS.register("test-spectral")(SpectralEncoder)


def test_new_scoring_options_rescore_without_stage1(
    run_dir: Path, audited: tuple[dict, float], tmp_path: Path
) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    # A capture the first audit has not seen, filed as round 2 (same content).
    for folder, ext in (("captures", "safetensors"), ("truth", "json")):
        shutil.copy(copy / folder / f"r001_c0001.{ext}", copy / folder / f"r002_c0001.{ext}")
    cached = copy / "audit" / "content_classifier.safetensors"
    stamp = cached.stat().st_mtime_ns
    settings = AuditSettings(
        **{**FAST, "max_samples": None, "speaker": True, "speaker_model": "test-spectral"}
    )
    summary = audit_run(copy, settings, progress=False)
    assert summary["stage1"]["rescored"] == 2 and summary["stage1"]["reconstructed"] == 1
    assert summary["samples"] == 3 and summary["rounds"] == [1, 2]
    assert (copy / "audit" / "leakage_by_round.png").is_file()
    assert summary["from_gradients"]["speaker_reid_rate"]["n"] == 3
    assert summary["from_features"]["speaker_reid_rate"]["n"] == 3
    assert 0.0 <= summary["speaker_eer"] <= 1.0 and summary["speaker_threshold"] is not None
    assert cached.stat().st_mtime_ns == stamp  # the content classifier was reused
    rows = read_rows(copy / "audit" / "leakage.csv")
    assert all(r["speaker_cosine"] and r["ff_speaker_reidentified"] in "01" for r in rows)


def test_round_by_round_audits_build_the_truth_side_once(
    run_dir: Path, audited: tuple[dict, float], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What fedspeech simulate --audit does: one audit per round, one scorer cache per run.
    from fedspeech.audit import run as audit_module

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    for folder, ext in (("captures", "safetensors"), ("truth", "json")):
        shutil.copy(copy / folder / f"r001_c0001.{ext}", copy / folder / f"r002_c0001.{ext}")
    shutil.rmtree(copy / "audit" / "samples")  # round 1 is re-scored from its stage 1
    built: list[object] = []
    original = audit_module.build_scorer

    def counting(*args: Any, **kwargs: Any) -> Any:
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(audit_module, "build_scorer", counting)
    scorers: dict[str, Any] = {}
    settings = {**FAST, "max_samples": None}
    first = audit_run(copy, AuditSettings(**settings, rounds=[1]), progress=False, scorers=scorers)
    second = audit_run(copy, AuditSettings(**settings, rounds=[2]), progress=False, scorers=scorers)
    assert (first["samples"], second["samples"]) == (2, 1)
    assert second["stage1"]["reconstructed"] == 1
    assert len(built) == 1 and list(scorers.values()) == built
    assert second["from_gradients"]["stoi"]["n"] == 1


def one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("fedspeech: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


def bad_run(tmp_path: Path, name: str, data: bytes | None = None) -> Path:
    run = tmp_path / name
    (run / "captures").mkdir(parents=True)
    if data is not None:
        (run / "captures" / "r001_c0001.safetensors").write_bytes(data)
    return run


def test_bad_input_through_the_cli(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = run_dir / "captures" / "r001_c0001.safetensors"
    good = capture.read_bytes()
    cases: list[tuple[Path, tuple[str, ...]]] = [
        (tmp_path / "nowhere", ("does not exist",)),
        (bad_run(tmp_path, "empty"), ("has no captures",)),
        (bad_run(tmp_path, "garbage", b"RIFF....WAVEfmt not a capture"), ("not a readable",)),
    ]
    misfit = load_capture(capture)
    misfit.model_kwargs["input_shape"] = [16, 16]
    save_capture(misfit, bad_run(tmp_path, "misfit") / "captures" / "r001_c0001.safetensors")
    cases.append((tmp_path / "misfit", ("does not fit model", "r001_c0001")))
    for run, needles in cases:
        code = cli_main(["audit", str(run), "--quiet", "--no-speaker", "--no-content"])
        one_line_error(code, capsys.readouterr().err, *needles)
    code = cli_main(["audit", str(run_dir), "--iterations", "0"])
    one_line_error(code, capsys.readouterr().err, "--iterations")
    code = cli_main(["audit", str(run_dir), "--extra-restarts", "-1"])
    one_line_error(code, capsys.readouterr().err, "--extra-restarts")

    # The real process: exit status and stderr of a truncated capture.
    run = bad_run(tmp_path, "truncated", good[: len(good) // 2])
    proc = subprocess.run(
        [sys.executable, "-m", "fedspeech", "audit", str(run), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    one_line_error(proc.returncode, proc.stderr, "r001_c0001.safetensors", "not a readable")


def test_attacks_never_import_flwr() -> None:
    code = (
        "import sys\n"
        "import attacks.features, attacks.labels, attacks.scoring, attacks.target, "
        "attacks.waveform\n"
        # The audit, its truth side included, and what it imports lazily.
        "import fedspeech.audit, scipy.optimize\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'flwr')\n"
        "sys.exit(f'imported {bad}' if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_stage1_as_ray_tasks(run_dir: Path, audited: tuple[dict, float], tmp_path: Path) -> None:
    copy = tmp_path / "run"
    # Without truth/ the audit is the attack alone (no corpus, no scoring): quicker.
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("audit", "truth"))
    args = ["--iterations", "200", "--restarts", "1", "--lr", "0.1", "--threads", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "fedspeech", "audit", str(copy), *args, "--max-samples", "1"]
        + ["--ray-address", "local", "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "audited 1 captures, 1 samples" in proc.stdout and "not scored" in proc.stdout
    # fedspeech audit ends with the run's report, which says the leakage is not scored.
    page = (copy / "report" / "index.html").read_text()
    assert f"report: {copy / 'report' / 'index.html'}" in proc.stdout
    assert "reconstructions are not scored" in page and page.count('<li class="card"') == 1
    # One target alone in a Ray task follows the trajectory it had batched in-process, up
    # to rounding (which 200 large Adam steps amplify to about 1e-2 on values up to 10).
    name = "reconstructions/r001_c0001.safetensors"
    alone = load_file(str(copy / "audit" / name))["features"]
    batched = load_file(str(run_dir / "audit" / name))["features"]
    assert float(torch.mean((alone - batched) ** 2)) < 1e-4
