"""The audit of raw-waveform (``--task sdd``) models: stage 1 in the waveform domain.

No Flower here: a client's local step is ``train_sdd`` itself, and the run folder is written
the way ``fedspeech simulate`` writes it (data/, captures/, truth/, config.toml).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.nn import functional as F

from attacks.features import l2_distance
from attacks.target import attack_mode, target_from_capture
from fedspeech.audit import AuditSettings, audit_run
from fedspeech.capture import Capture, capture_name, save_capture, save_truth
from fedspeech.config import SimConfig
from fedspeech.models import build_model
from fedspeech.training.sdd import train_sdd

CLIP = 2400  # just above aasist-xs's shortest input (2251 samples)
SR = 16_000
LR = 0.01


def voiced_clips(n: int, seed: int = 0) -> np.ndarray:
    """``(n, CLIP)`` harmonic tones with a little noise, peak about 0.5."""
    rng = np.random.default_rng(seed)
    t = np.arange(CLIP) / SR
    out = []
    for _ in range(n):
        f0 = rng.uniform(100, 220)
        x = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6.3)) / k for k in range(1, 8))
        out.append(0.25 * np.asarray(x) + 0.005 * rng.standard_normal(CLIP))
    return np.stack(out).astype(np.float32)


def client_capture(
    waves: np.ndarray, labels: np.ndarray, dropout: bool, client: int = 0
) -> tuple[Capture, torch.nn.Module]:
    """One client's local SGD step on the whole (tiny) batch, as the sdd client takes it."""
    kwargs = {"num_classes": 2, "num_samples": CLIP, **({} if dropout else {"dropout": False})}
    torch.manual_seed(0)
    model = build_model("aasist-xs", **kwargs)
    global_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trained = copy.deepcopy(model)
    torch.manual_seed(client)
    train_sdd(
        trained,
        waves,
        labels,
        [np.arange(len(labels))],
        augment="none",
        alignment="none",
        lr=LR,
        optimizer="sgd",
    )
    cap = Capture(
        kind="update",
        server_round=1,
        client_id=client,
        num_examples=len(labels),
        global_weights=global_weights,
        shared={k: v.detach().clone() for k, v in trained.state_dict().items()},
        model="aasist-xs",
        frontend="waveform",
        model_kwargs=kwargs,
        training={"lr": LR, "momentum": 0.0, "batch_size": len(labels), "local_steps": 1},
    )
    return cap, model


def matching_loss_at(cap: Capture, waves: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Gradient distance of the attacker's network at the true clips, and ``||g_shared||^2``."""
    target = target_from_capture(cap)
    names = list(target.grads)
    params = dict(target.model.named_parameters())
    loss = F.cross_entropy(target.model(torch.from_numpy(waves)), torch.from_numpy(labels))
    grads = torch.autograd.grad(loss, [params[n] for n in names])
    ref = [target.grads[n] for n in names]
    return float(l2_distance(grads, ref)), float(sum(r.square().sum() for r in ref))


def test_attacker_reproduces_a_dropout_free_client_exactly() -> None:
    waves, labels = voiced_clips(2), np.array([1, 0])
    cap, _ = client_capture(waves, labels, dropout=False)
    target = target_from_capture(cap)
    assert target.waveform and target.input_shape == (CLIP,) and target.batch_size == 2
    assert target.caveat == ""  # one plain SGD step: the estimate is the gradient itself
    d, norm = matching_loss_at(cap, waves, labels)
    assert d < 1e-8 * norm, (d, norm)


def test_client_dropout_hides_the_network_from_the_attacker() -> None:
    # The masks the client drew are not in what it shares: even at the true clips the
    # attacker's (dropout-free) network gives a clearly different gradient.
    waves, labels = voiced_clips(2), np.array([1, 0])
    cap, _ = client_capture(waves, labels, dropout=True)
    d, norm = matching_loss_at(cap, waves, labels)
    assert d > 1e-2 * norm, (d, norm)


@pytest.mark.parametrize(
    ("training", "needle"),
    [({"optimizer": "adam"}, "adam optimizer"), ({"local_steps": 3}, "several local steps")],
)
def test_inexact_update_estimates_say_why(training: dict[str, object], needle: str) -> None:
    waves, labels = voiced_clips(2), np.array([1, 0])
    cap, _ = client_capture(waves, labels, dropout=False)
    cap.training.update(training)
    assert needle in target_from_capture(cap, update_model="averaged").caveat
    # Unrolled (the default), the steps are replayed instead, and the note says that.
    assert "replayed" in target_from_capture(cap).caveat


def test_attack_mode_uses_batch_statistics_and_no_dropout() -> None:
    model = build_model("aasist-xs", num_classes=2, num_samples=CLIP)
    x = torch.from_numpy(voiced_clips(2))
    reference = copy.deepcopy(model).train()
    for mod in reference.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    attack_mode(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.testing.assert_close(model(x), reference(x))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def write_waveform_run(run: Path, waves: np.ndarray, labels: np.ndarray) -> None:
    """A two-capture sdd run folder, laid out as ``fedspeech simulate`` writes it."""
    cfg = SimConfig.from_mapping(
        {"task": "sdd", "clip_samples": CLIP, "dropout": False, "clients": 2, "batch_size": 2}
    )
    run.mkdir(parents=True)
    (run / "config.toml").write_text(cfg.to_toml())
    data = run / "data"
    data.mkdir()
    np.save(data / "features.npy", waves)
    np.save(data / "labels.npy", labels)
    clip_ids = [f"clip{i}" for i in range(len(labels))]
    speakers = [f"spk{i // 2}" for i in range(len(labels))]
    (data / "index.json").write_text(json.dumps({"clip_ids": clip_ids, "speakers": speakers}))
    for client in range(2):
        pos = [2 * client, 2 * client + 1]
        cap, _ = client_capture(waves[pos], labels[pos], dropout=False, client=client)
        name = capture_name(1, client)
        save_capture(cap, run / "captures" / f"{name}.safetensors")
        batch = {
            "positions": pos,
            "clip_ids": [clip_ids[i] for i in pos],
            "labels": [int(labels[i]) for i in pos],
            "speakers": [speakers[i] for i in pos],
        }
        save_truth(
            run / "truth" / f"{name}.json",
            {"round": 1, "client_id": client, "kind": "update", "batches": [batch]},
        )


@pytest.mark.slow
def test_audit_of_a_waveform_run(tmp_path: Path) -> None:
    waves, labels = voiced_clips(4, seed=1), np.array([1, 0, 1, 1])
    run = tmp_path / "run"
    write_waveform_run(run, waves, labels)
    settings = AuditSettings(iterations=60, restarts=1, threads=1)
    summary = audit_run(run, settings, progress=False)

    out = run / "audit"
    grad = summary["from_gradients"]
    assert summary["samples"] == 4 and summary["scored"]
    assert {"f_mse", "w_mse", "stoi", "label_accuracy"} <= set(grad)
    # No stage 2, so no "from features" ceiling; no speaker or keyword judges on these runs.
    assert summary["from_features"] == {}
    assert "speaker_reid_rate" not in grad and "content_rate" not in grad
    rows = [json.loads(p.read_text())["rows"] for p in sorted((out / "samples").glob("*.json"))]
    for row in (r for capture_rows in rows for r in capture_rows):
        stem = f"{row['capture']}_{row['index']}"
        rec, sr = sf.read(out / "wav" / f"{stem}_reconstruction.wav")
        assert sr == SR and rec.shape == (CLIP,)
        assert (out / "wav" / f"{stem}_original.wav").is_file()
        assert not (out / "wav" / f"{stem}_from_features.wav").exists()
        assert (out / "spectrograms" / f"{stem}.png").stat().st_size > 0

    # Stage 1 moved the waveform towards a matching gradient: the matching loss it kept is
    # below the loss at its own (seeded) start.
    from attacks.features import initial_features
    from fedspeech.capture import load_capture

    for capture_rows in rows:
        name = capture_rows[0]["capture"]
        target = target_from_capture(load_capture(run / "captures" / f"{name}.safetensors"))
        start = initial_features((2, CLIP), settings.seed, 0, "cpu", target.init_std)
        y = torch.tensor([int(r["label_recovered"]) for r in capture_rows])
        names = list(target.grads)
        params = dict(target.model.named_parameters())
        grads = torch.autograd.grad(
            F.cross_entropy(target.model(start), y), [params[n] for n in names]
        )
        at_start = float(l2_distance(grads, [target.grads[n] for n in names]))
        assert capture_rows[0]["matching_loss"] < 0.5 * at_start
