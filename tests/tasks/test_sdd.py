"""Speech-deepfake-detection task: configuration, the local training step, a tiny simulation."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from fedspeech.augment import build_augmentation
from fedspeech.capture import load_capture, load_truth
from fedspeech.config import SimConfig, read_toml, settings_of, task_defaults, task_only_keys
from fedspeech.data.corpus import SAMPLE_RATE
from fedspeech.data.spoof import SpoofCorpus
from fedspeech.errors import ConfigError, DataError
from fedspeech.models import build_model
from fedspeech.tasks import check_config
from fedspeech.tasks.sdd import eval_subsets, select_roga_domains
from fedspeech.training.aligners import build_aligner
from fedspeech.training.dual_path import build_optimizer, dual_path_step, trainable_parameters
from fedspeech.training.roga import RoGA, RoGAStats
from fedspeech.training.sdd import (
    SddResult,
    augment_fn,
    path_cosine,
    score_clips,
    sdd_scores,
    train_sdd,
)
from tests.helpers import REPO, assert_one_line_error, leftover_processes, run_cli

# --- configuration -----------------------------------------------------------------------------


def test_kws_takes_the_declared_defaults() -> None:
    cfg = SimConfig()
    assert cfg.task == "kws"
    for info in settings_of(SimConfig):
        assert getattr(cfg, info.name) == info.default, info.name
    assert task_defaults("kws") == {}  # kws is the task the declarations are written for


def test_sdd_takes_its_task_defaults_unless_set() -> None:
    cfg = SimConfig.from_mapping({"task": "sdd"})
    for key, value in task_defaults("sdd").items():
        assert getattr(cfg, key) == value, key
    cfg = SimConfig.from_mapping({"task": "sdd", "model": "aasist-l", "rounds": 3})
    assert (cfg.model, cfg.rounds) == ("aasist-l", 3)
    # A flag given before the task changes keeps its value (TOML file, then flags).
    cfg = SimConfig.from_mapping({"lr": 0.5}).updated({"task": "sdd"})
    assert cfg.lr == 0.5 and cfg.model == task_defaults("sdd")["model"]


@pytest.mark.parametrize("key", task_only_keys("kws"))
def test_kws_only_key_rejected_for_sdd(key: str) -> None:
    valid = {"synth_speakers": 10, "synth_takes": 1, "clip_norm": 1.0}
    value: object = valid.get(key, "mel")
    flag = "no-dropout" if key == "dropout" else key.replace("_", "-")
    with pytest.raises(ConfigError, match=f"--{flag} cannot be used"):
        SimConfig.from_mapping({"task": "sdd", key: value})


@pytest.mark.parametrize("key", task_only_keys("sdd"))
def test_sdd_only_key_rejected_for_kws(key: str) -> None:
    value: dict[str, object] = {
        "clip_samples": 8000,
        "test_clips": 10,
        "roga_rho": 0.1,
        "roga_alpha": 0.1,
        "dropout": False,
    }
    flag = "no-dropout" if key == "dropout" else key.replace("_", "-")
    with pytest.raises(ConfigError, match=f"--{flag} cannot be used"):
        SimConfig.from_mapping({key: value.get(key, "x")})


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"alignment": "mgda"}, "unknown alignment 'mgda'; known: cagrad, gradvac, none"),
        ({"augment": "rawboost:9"}, "bad augmentation spec 'rawboost:9'"),
        ({"augment": "mixup"}, "unknown augmentation 'mixup'"),
        ({"augment": "specaugment:8"}, "raw waveforms"),
        ({"optimizer": "lion"}, "unknown optimizer 'lion'; known: adam, sgd"),
        ({"share": "gradient"}, "--share update"),
        ({"strategy": "fedprox"}, "fedprox is not available"),
        ({"clip_samples": 0}, "--clip-samples must be positive"),
        ({"test_clips": -1}, "--test-clips must not be negative"),
        ({"roga_rho": -0.1}, "must not be negative"),
        (
            {"roga_domains": "corpus"},
            "unknown --roga-domains 'corpus'; known: attack, path, speaker",
        ),
    ],
)
def test_bad_sdd_values(values: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        check_config(SimConfig.from_mapping({"task": "sdd", **values}))
    assert needle in str(err.value)


def test_sdd_toml_round_trips_and_kws_toml_has_no_sdd_keys(tmp_path: Path) -> None:
    cfg = SimConfig.from_mapping({"task": "sdd", "alignment": "roga", "clients": 5})
    assert cfg.roga_domains == "attack"  # the "attack type"
    cfg = cfg.updated({"roga-domains": "speaker"})
    path = tmp_path / "config.toml"
    path.write_text(cfg.to_toml())
    back = SimConfig.from_mapping(read_toml(path))
    assert back == cfg and (back.alignment, back.roga_domains) == ("roga", "speaker")
    kws_keys = set(SimConfig().to_dict())
    assert not kws_keys & {k.replace("_", "-") for k in task_only_keys("sdd")}


def test_cli_bad_alignment_is_one_line() -> None:
    proc = run_cli("simulate", "--task", "sdd", "--alignment", "mgda")
    assert_one_line_error(proc, "unknown alignment 'mgda'", "pcgrad", "roga")


def test_cli_bad_roga_domains_is_one_line() -> None:
    proc = run_cli("simulate", "--task", "sdd", "--alignment", "roga", "--roga-domains", "corpus")
    assert_one_line_error(proc, "unknown --roga-domains 'corpus'; known: attack, path, speaker")


def test_cli_kws_flag_with_sdd_is_one_line() -> None:
    proc = run_cli("simulate", "--task", "sdd", "--frontend", "mfcc")
    assert_one_line_error(proc, "--frontend cannot be used with --task sdd")


def test_cli_no_dropout_with_kws_names_the_flag() -> None:
    proc = run_cli("simulate", "--no-dropout")
    assert_one_line_error(proc, "--no-dropout cannot be used with --task kws")


def test_audit_of_an_sdd_folder_without_captures_is_one_line(tmp_path: Path) -> None:
    cfg = SimConfig.from_mapping({"task": "sdd"})
    (tmp_path / "config.toml").write_text(cfg.to_toml())
    proc = run_cli("audit", str(tmp_path))
    assert_one_line_error(proc, "has no captures")


# --- training step, no Flower ------------------------------------------------------------------

CLIP = 2400  # just above aasist-xs's shortest input (2251 samples)


def _toy_data(n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(CLIP) / SAMPLE_RATE
    waves = 0.05 * rng.standard_normal((n, CLIP))
    labels = np.arange(n) % 2
    # Bona fide clips carry a tone; spoofs do not.
    waves[labels == 1] += 0.3 * np.sin(2 * np.pi * 440 * t)
    return waves.astype(np.float32), labels.astype(np.int64)


@pytest.mark.parametrize("alignment", ["none", "pcgrad", "roga"])
def test_train_sdd_updates_and_is_reproducible(alignment: str) -> None:
    torch.set_num_threads(1)
    waves, labels = _toy_data()
    batches = [np.arange(0, 6), np.arange(6, 12)]
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("aasist-xs", num_samples=CLIP)
        before = [p.detach().clone() for p in model.parameters()]
        res = train_sdd(
            model,
            waves,
            labels,
            batches,
            augment="rawboost:3",
            alignment=alignment,
            lr=1e-3,
            seed=(0, 1, 2),
            roga_rho=0.1,
            roga_alpha=2e-4,
            optimizer="adam",
        )
        assert res.steps == 2 and res.num_examples == 12
        assert math.isfinite(res.loss) and -1.0 <= res.mean_cosine <= 1.0
        assert res.conflict_rate in (0.0, 0.5, 1.0)
        assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
        states.append(model.state_dict())
    for name, value in states[0].items():
        torch.testing.assert_close(states[1][name], value)


def _fresh_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("aasist-xs", num_samples=CLIP)


def _roga_by_hand(
    model: nn.Module,
    waves: np.ndarray,
    labels: np.ndarray,
    batches: list[np.ndarray],
    attack: np.ndarray | None,
) -> tuple[list[RoGAStats], list[float]]:
    """RoGA steps on ``[x; rawboost:3(x)]`` and the clean-vs-augmented cosine of each.

    ``attack=None``: the step ``train_sdd`` took before ``--roga-domains`` existed (domain 0
    clean, 1 augmented; the cosine is RoGA's own). Else the domains are ``[d; d]`` and the
    cosine is :func:`path_cosine` before the step. Seeds torch as :func:`_train` does (the
    model's dropout draws from it).
    """
    torch.manual_seed(1)
    run_aug = augment_fn(build_augmentation("rawboost:3"), np.random.default_rng((0, 1, 2)))
    roga = RoGA(model, build_optimizer("adam", trainable_parameters(model), lr=1e-3), 0.1, 2e-4)
    model.train()
    stats, cosines = [], []
    for batch in batches:
        x, y = torch.from_numpy(waves[batch]), torch.from_numpy(labels[batch])
        with torch.no_grad():
            x_aug = run_aug(x)
        xx, yy = torch.cat([x, x_aug]), torch.cat([y, y])
        if attack is None:
            paths = torch.cat([torch.zeros_like(y), torch.ones_like(y)])
            stats.append(roga.step(xx, yy, paths))
            cosines.append(stats[-1].cosine)
        else:
            cosines.append(path_cosine(model, x, x_aug, y))
            d = torch.from_numpy(attack[batch])
            stats.append(roga.step(xx, yy, torch.cat([d, d])))
    return stats, cosines


def _train(model: nn.Module, waves: np.ndarray, labels: np.ndarray, **kw: Any) -> SddResult:
    """``train_sdd`` with RoGA on the two batches of the toy data, torch seeded."""
    torch.manual_seed(1)
    batches = [np.arange(0, 6), np.arange(6, 12)]
    return train_sdd(
        model, waves, labels, batches, augment="rawboost:3", alignment="roga", lr=1e-3,
        optimizer="adam", seed=(0, 1, 2), roga_rho=0.1, roga_alpha=2e-4, **kw,
    )  # fmt: skip


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), name


def test_roga_path_domains_are_the_clean_and_augmented_halves() -> None:
    torch.set_num_threads(1)
    waves, labels = _toy_data()
    batches = [np.arange(0, 6), np.arange(6, 12)]
    model, ref = _fresh_model(), _fresh_model()
    res = _train(model, waves, labels, roga_domains=None)
    # The step train_sdd took before --roga-domains existed: domain 0 clean, 1 augmented.
    stats, cosines = _roga_by_hand(ref, waves, labels, batches, None)
    _assert_same_weights(model, ref)
    assert all(s.num_domains == 2 for s in stats)
    assert res.mean_cosine == np.mean(cosines)
    assert res.conflict_rate == np.mean([s.conflict for s in stats])


def test_roga_attack_domains_keep_each_clip_and_its_augmented_copy_together() -> None:
    torch.set_num_threads(1)
    waves, labels = _toy_data()
    batches = [np.arange(0, 6), np.arange(6, 12)]
    # Bona fide clips (label 1) are attack 0; the spoofs alternate between attacks 3 and 7.
    attack = np.where(labels == 1, 0, np.where(np.arange(12) % 4 == 0, 3, 7)).astype(np.int64)
    model, ref, by_path = _fresh_model(), _fresh_model(), _fresh_model()
    res = _train(model, waves, labels, roga_domains=attack)
    stats, cosines = _roga_by_hand(ref, waves, labels, batches, attack)
    _assert_same_weights(model, ref)
    assert [s.num_domains for s in stats] == [3, 3]
    # The conflict statistic is still the clean-vs-augmented cosine, not the attacks'.
    assert res.mean_cosine == np.mean(cosines)
    assert res.mean_cosine != np.mean([s.cosine for s in stats])
    _train(by_path, waves, labels)
    assert any(
        not torch.equal(a, b) for a, b in zip(model.parameters(), by_path.parameters(), strict=True)
    )


def test_path_cosine_is_the_dual_path_cosine_and_changes_nothing() -> None:
    torch.set_num_threads(1)
    waves, labels = _toy_data()
    x, y = torch.from_numpy(waves[:6]), torch.from_numpy(labels[:6])
    x_aug = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    model, ref = _fresh_model(), _fresh_model()
    model.train()
    ref.train()
    torch.manual_seed(3)
    cosine = path_cosine(model, x, x_aug, y)
    _assert_same_weights(model, ref)  # parameters and batch-norm buffers
    torch.manual_seed(3)
    opt = torch.optim.SGD(ref.parameters(), lr=0.0)
    step = dual_path_step(ref, opt, x, y, lambda _x: x_aug, build_aligner("none"))
    assert cosine == pytest.approx(step.cosine, abs=1e-6)


def test_train_sdd_refuses_domains_of_another_length() -> None:
    waves, labels = _toy_data()
    with pytest.raises(ValueError, match="roga_domains"):
        train_sdd(
            _fresh_model(), waves, labels, [np.arange(6)], augment="rawboost:3",
            alignment="roga", lr=1e-3, optimizer="adam", roga_rho=0.1, roga_alpha=2e-4,
            roga_domains=np.zeros(5, dtype=np.int64),
        )  # fmt: skip


def test_select_roga_domains_reads_the_run_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "domains_attack.npy", np.array([0, 2, 1], dtype=np.int64))
    feats = str(data / "features.npy")
    assert select_roga_domains("path", feats) is None
    selected = select_roga_domains("attack", feats)
    assert selected is not None and selected.tolist() == [0, 2, 1]
    with pytest.raises(DataError, match="domains_speaker.npy does not exist"):
        select_roga_domains("speaker", feats)
    with pytest.raises(ConfigError, match="unknown --roga-domains 'corpus'; known: attack"):
        select_roga_domains("corpus", feats)


def _tiny_run(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A prepared run's data files for one client: 8 clips, attack ids 0 (bona fide), 1, 2."""
    waves, labels = _toy_data(8)
    data = tmp_path / "data"
    data.mkdir()
    attack = np.array([1, 0, 2, 0, 1, 0, 2, 0], dtype=np.int64)
    np.save(data / "features.npy", waves)
    np.save(data / "labels.npy", labels)
    np.save(data / "domains_attack.npy", attack)
    np.save(data / "domains_speaker.npy", np.zeros(8, dtype=np.int64))
    (data / "partition.json").write_text(json.dumps({"clients": [list(range(8))]}))
    return data, attack


def _client_message(
    data: Path, weights: dict[str, torch.Tensor], server_round: int = 1, **config: Any
) -> Any:
    """A train message for client 0 of :func:`_tiny_run`'s data (RoGA on attacks)."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, Metadata, RecordDict

    settings: dict[str, Any] = {
        "features-path": str(data / "features.npy"),
        "labels-path": str(data / "labels.npy"),
        "partition-path": str(data / "partition.json"),
        "model": "aasist-xs",
        "model-kwargs": json.dumps({"num_classes": 2, "num_samples": CLIP}),
        "share": "update",
        "lr": 1e-3,
        "batch-size": 4,
        "local-epochs": 1,
        "local-steps": 1,
        "seed": 0,
        "server-round": server_round,
        "task": "sdd",
        "augment": "rawboost:3",
        "alignment": "roga",
        "optimizer": "adam",
        "roga-rho": 0.1,
        "roga-alpha": 2e-4,
        "roga-domains": "attack",
        **config,
    }
    content = RecordDict(
        {"arrays": ArrayRecord(weights), "config": ConfigRecord(settings)}  # type: ignore[arg-type]
    )
    # Explicit metadata: a message made outside a Flower run has no run identity to take.
    meta = Metadata(0, "m", 0, 1, "", "", created_at=time.time(), ttl=600, message_type="train")
    return Message(content=content, metadata=meta)  # type: ignore[call-overload]


def _client_context() -> Any:
    from flwr.app import Context, RecordDict

    return Context(0, 0, {"partition-id": 0}, RecordDict(), {})


@pytest.mark.parametrize("kind", ["attack", "path"])
def test_client_passes_the_configured_roga_domains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    import fedspeech.tasks.sdd as sdd_mod
    from fedspeech.federation.client_app import train

    data, attack = _tiny_run(tmp_path)
    seen: list[np.ndarray | None] = []
    real = sdd_mod.train_sdd

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(kwargs["roga_domains"])  # type: ignore[arg-type]
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sdd_mod, "train_sdd", spy)
    settings: dict[str, Any] = {"roga-domains": kind}
    msg = _client_message(data, _fresh_model().state_dict(), **settings)
    reply = train(msg, _client_context())
    assert 0.0 <= float(reply.content.metric_records["metrics"]["conflict-rate"]) <= 1.0  # type: ignore[arg-type]
    (domains,) = seen
    if kind == "path":
        assert domains is None
    else:
        assert domains is not None and domains.tolist() == attack.tolist()


def test_a_reused_client_model_replies_as_a_fresh_one(tmp_path: Path) -> None:
    """The client process keeps its model between calls: a reply must not depend on what
    the process ran before (weights, gradients, optimiser or random state)."""
    from fedspeech.federation.client_app import reusable_model, train

    data, _ = _tiny_run(tmp_path)
    start = _fresh_model().state_dict()
    other = {k: v + 0.01 for k, v in start.items()}

    def reply(msg: Any) -> dict[str, torch.Tensor]:
        out = train(msg, _client_context())
        return out.content.array_records["arrays"].to_torch_state_dict()  # type: ignore[no-any-return]

    reusable_model.cache_clear()
    fresh = reply(_client_message(data, start, server_round=2))
    assert reusable_model.cache_info().currsize == 1
    reply(_client_message(data, other, server_round=1, alignment="pcgrad"))  # other work first
    again = reply(_client_message(data, start, server_round=2))
    assert reusable_model.cache_info().hits >= 2  # the same model object served every call
    assert fresh.keys() == again.keys()
    for name in fresh:
        assert torch.equal(fresh[name], again[name]), name
    assert any(not torch.equal(fresh[n], start[n]) for n in start)  # it did train


def test_sdd_scores_hand_cases() -> None:
    scores = np.array([2.0, 1.0, -1.0, 0.5, 3.0])
    labels = np.array([1, 1, 0, 0, 1])
    out = sdd_scores(scores, labels, {"sep": np.array([0, 1, 2, 3]), "bona": np.array([0, 4])})
    assert out["sep"] == 0.0  # every bona fide scores above every spoof
    assert math.isnan(out["bona"])  # no spoof: undefined
    flipped = sdd_scores(-scores, labels, {"sep": np.array([0, 1, 2, 3])})
    assert flipped["sep"] == 1.0


def test_score_clips_is_logit_difference() -> None:
    waves, _ = _toy_data(3)
    model = _fresh_model().eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(waves))
    # Scores are differences of float32 logits near 0 (batches of 2 vs 3 round differently):
    # compare them to a few float32 ulps of the logits, not relative to the small difference.
    np.testing.assert_allclose(
        score_clips(model, waves, batch_size=2),
        (logits[:, 1] - logits[:, 0]).numpy(),
        rtol=1e-5,
        atol=1e-6,
    )


def test_eval_subsets_split_seen_and_unseen() -> None:
    attacks = ["bonafide", "gl", "lpc", "bonafide", "gl", "lpc", "gl"]
    split = ["test"] * 6 + ["train"]
    corpus = SpoofCorpus(
        waveforms=np.zeros((7, 4), dtype=np.float32),
        labels=np.array([1 if a == "bonafide" else 0 for a in attacks]),
        attacks=attacks,
        speakers=["s"] * 7,
        clip_ids=[str(i) for i in range(7)],
        split=split,
    )
    scored, subsets = eval_subsets(corpus, "test", 0)
    assert scored.tolist() == [0, 1, 2, 3, 4, 5]
    assert scored[subsets["eer"]].tolist() == [0, 1, 3, 4]
    assert scored[subsets["eer_unseen"]].tolist() == [0, 2, 3, 5]
    few, sub = eval_subsets(corpus, "test", 3)
    assert len(few) == 3 and set(few[sub["eer"]]) | set(few[sub["eer_unseen"]]) == set(few)


# --- a tiny federated run ----------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_sdd_simulation(tmp_path: Path, tiny_spoof_root: Path) -> None:
    run = tmp_path / "run"
    marker = f"FEDSPEECH_TEST_RUN={uuid.uuid4().hex}"
    key, value = marker.split("=")
    args = [
        *("--task", "sdd", "--dataset", "builtin", "--data-root", str(tiny_spoof_root)),
        *("--clients", "2", "--fraction", "1", "--rounds", "2", "--local-steps", "1"),
        *("--batch-size", "4", "--clip-samples", "2400", "--test-clips", "0"),
        *("--alignment", "pcgrad", "--augment", "rawboost:2", "--capture-clients", "1"),
        *("--audit", "--audit-iterations", "10", "--audit-threads", "1"),
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "fedspeech", "simulate", *args, "--out", str(run)],
        capture_output=True,
        text=True,
        env={**os.environ, key: value},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not leftover_processes(marker), "simulate left processes behind"

    metrics = json.loads((run / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    for r in metrics["rounds"]:
        for k in ("eer", "eer_unseen", "conflict_rate"):
            assert 0.0 <= r[k] <= 1.0, (k, r[k])
        assert len(r["clients"]) == 2
        mean = np.mean([c["conflict_rate"] for c in r["clients"]])
        assert r["conflict_rate"] == pytest.approx(mean)
        # --audit: the round's captured update was attacked in the waveform domain.
        assert {"w_mse", "stoi", "label_accuracy"} <= set(r["leakage"])
    assert set(metrics["final"]) >= {"eer", "eer_unseen"}
    assert metrics["final"]["eer"] == metrics["rounds"][-1]["eer"]
    assert (run / "eer.png").stat().st_size > 1000
    assert 'task = "sdd"' in (run / "config.toml").read_text()
    # The report simulate --audit ends with: EER per round, the waveform-domain samples.
    page = (run / "report" / "index.html").read_text()
    assert "EER unseen" in page and page.count('<li class="card"') >= 2
    assert "no DET curve" in page and "Traceback" not in proc.stderr

    caps = sorted((run / "captures").glob("*.safetensors"))
    assert len(caps) == 2
    cap = load_capture(caps[-1])
    assert cap.kind == "update" and cap.frontend == "waveform"
    assert cap.training["alignment"] == "pcgrad"
    model = build_model(cap.model, **cap.model_kwargs)
    model.load_state_dict(cap.shared)
    truth = load_truth(run / "truth" / f"{caps[-1].stem}.json")
    (batch,) = truth["batches"]
    assert len(batch["attacks"]) == len(batch["labels"]) == 4


@pytest.mark.slow
def test_tiny_sdd_simulation_roga_by_attack(tmp_path: Path, tiny_spoof_root: Path) -> None:
    run = tmp_path / "run"
    args = [
        *("--task", "sdd", "--dataset", "builtin", "--data-root", str(tiny_spoof_root)),
        *("--clients", "2", "--fraction", "1", "--rounds", "1", "--local-steps", "2"),
        *("--batch-size", "4", "--clip-samples", "2400", "--test-clips", "0"),
        *("--alignment", "roga", "--roga-domains", "attack", "--capture-clients", "0"),
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "fedspeech", "simulate", *args, "--out", str(run), "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'roga-domains = "attack"' in (run / "config.toml").read_text()
    (rnd,) = json.loads((run / "metrics.json").read_text())["rounds"]
    assert 0.0 <= rnd["conflict_rate"] <= 1.0 and 0.0 <= rnd["eer"] <= 1.0
    # The clients' domains: one id per attack name of index.json, bona fide its own.
    index = json.loads((run / "data" / "index.json").read_text())
    ids = np.load(run / "data" / "domains_attack.npy", allow_pickle=False)
    names = sorted(set(index["attacks"]))
    assert ids.tolist() == [names.index(a) for a in index["attacks"]]
    assert "bonafide" in names and len(names) > 2
    speakers = np.load(run / "data" / "domains_speaker.npy", allow_pickle=False)
    assert speakers.shape == ids.shape and speakers.max() + 1 == len(set(index["speakers"]))


def test_dpda_table_means_and_stds(tmp_path: Path) -> None:
    import importlib.util

    path = REPO / "experiments" / "dpda.py"
    spec = importlib.util.spec_from_file_location("dpda", path)
    assert spec is not None and spec.loader is not None
    dpda = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dpda)
    base, alignments, seeds = dpda.read_grid(path.with_suffix(".toml"))
    assert base["task"] == "sdd" and len(seeds) == 3 and "roga" in alignments
    for seed, (e, u) in enumerate([(0.1, 0.2), (0.3, 0.4)]):
        rounds = [{"round": 1, "eer": e, "eer_unseen": u, "conflict_rate": 0.25, "seconds": 10.0}]
        final = {"eer": e, "eer_unseen": u}
        run = tmp_path / f"pcgrad-s{seed}"
        run.mkdir()
        (run / "metrics.json").write_text(json.dumps({"rounds": rounds, "final": final}))
    assert dpda.finished(tmp_path / "pcgrad-s0", 1) and not dpda.finished(tmp_path / "x", 1)
    text = dpda.table(dpda.summarise(tmp_path, ["pcgrad", "none"], [0, 1, 2]))
    assert "| pcgrad | 2 | 20.0 ± 14.1 | 30.0 ± 14.1 | 0.250 | 10 |" in text
    assert "| none | 0 | n/a | n/a | n/a | n/a |" in text
