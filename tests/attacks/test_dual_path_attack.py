"""Stage 1 on dual-path keyword updates: the clean and the (expected) augmented path."""

from __future__ import annotations

import dataclasses
from functools import partial

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from attacks.features import DISTANCES, Stage1Settings, reconstruct, reconstruct_plain
from attacks.labels import recover_labels
from attacks.target import AttackTarget, specaugment_keep, target_from_capture
from fedspeech.audit.settings import AuditSettings
from fedspeech.augment.specaugment import FrequencyMask
from fedspeech.capture import Capture, CaptureFormatError
from fedspeech.errors import ConfigError
from fedspeech.models import build_model
from fedspeech.training.local import compute_gradient
from tests import helpers

SHAPE = (8, 8)
KWARGS = {"num_classes": 10, "input_shape": list(SHAPE)}


speech_like = partial(helpers.speech_like, shape=SHAPE)
pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("kws-cnn", **KWARGS)


def mean_gradient(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, keep: torch.Tensor
) -> dict[str, torch.Tensor]:
    """What a dual-path step with alignment ``none`` follows: the mean of both gradients."""
    clean = compute_gradient(model, x, y)
    aug = compute_gradient(model, x * keep, y)
    return {n: 0.5 * (clean[n] + aug[n]) for n in clean}


def dual_path_capture(
    model: torch.nn.Module, grads: dict[str, torch.Tensor], augment: str, lr: float = 0.1
) -> Capture:
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    shared = {k: v.clone() for k, v in weights.items()}
    for name, g in grads.items():
        shared[name] = weights[name] - lr * g
    training = {
        "task": "kws",
        "lr": lr,
        "local_steps": 1,
        "batch_size": 1,
        "augment": augment,
        "alignment": "pcgrad",
    }
    return Capture(
        kind="update",
        server_round=1,
        client_id=3,
        num_examples=1,
        global_weights=weights,
        shared=shared,
        model="kws-cnn",
        frontend="mel",
        model_kwargs=dict(KWARGS),
        training=training,
    )


def test_specaugment_keep_is_how_often_the_masks_keep_a_bin() -> None:
    aug = FrequencyMask(3, num_masks=2)
    masked = aug.batch(torch.ones(20000, SHAPE[0], 1), np.random.default_rng(0))
    expected = specaugment_keep(aug.spec, SHAPE[0])
    assert expected is not None and expected.shape == (SHAPE[0], 1)
    torch.testing.assert_close(masked.mean(0), expected, atol=0.015, rtol=0)
    # Edge bins are covered by fewer starts than middle ones.
    assert float(expected[0, 0]) > float(expected[SHAPE[0] // 2, 0])


@pytest.mark.parametrize("spec", ["specaugment:", "specaugment:x", "specaugment:3:0"])
def test_an_unreadable_specaugment_spec_is_named(spec: str) -> None:
    with pytest.raises(CaptureFormatError, match="unreadable SpecAugment spec"):
        specaugment_keep(spec, 8)


def test_the_target_of_a_dual_path_update(model: torch.nn.Module) -> None:
    x, y = speech_like(1, 5), torch.tensor([6])
    keep = specaugment_keep("specaugment:3", SHAPE[0])
    assert keep is not None
    cap = dual_path_capture(model, mean_gradient(model, x, y, keep), "specaugment:3")
    target = target_from_capture(cap)
    assert target.second_path is not None and torch.equal(target.second_path, keep)
    assert "expected masked features" in target.caveat and "conflict" in target.caveat
    clean = target_from_capture(cap, dual_path="clean")
    assert clean.second_path is None and "as the clean gradient" in clean.caveat
    # A waveform augmentation cannot be applied to features: matched as the clean gradient.
    cap.training["augment"] = "noise:10"
    wave = target_from_capture(cap)
    assert wave.second_path is None and "waveform augmentation" in wave.caveat
    with pytest.raises(ValueError, match="dual_path must be one of expected, clean"):
        target_from_capture(cap, dual_path="mean")


def _matching(target: AttackTarget, u: torch.Tensor, y: torch.Tensor) -> float:
    """The l2 matching loss of the model stage 1 uses for ``target``, at ``u``."""
    model = target.model
    params = [dict(model.named_parameters())[n] for n in target.grads]
    loss = F.cross_entropy(model(u), y)
    if target.second_path is not None:
        loss = 0.5 * (loss + F.cross_entropy(model(u * target.second_path), y))
    grads = torch.autograd.grad(loss, params)
    return float(DISTANCES.get("l2").direct(grads, list(target.grads.values())))


def test_the_two_path_model_fits_a_dual_path_update_where_the_clean_one_does_not(
    model: torch.nn.Module,
) -> None:
    # A client whose mask happened to equal its expectation: the two-path model is exact.
    x, y = speech_like(1, 7), torch.tensor([2])
    keep = specaugment_keep("specaugment:4", SHAPE[0])
    assert keep is not None
    cap = dual_path_capture(model, mean_gradient(model, x, y, keep), "specaugment:4")
    target = target_from_capture(cap)
    clean = target_from_capture(cap, dual_path="clean")
    scale = sum(float(g.square().sum()) for g in target.grads.values())
    assert _matching(target, x, y) < 1e-8 * scale
    assert _matching(clean, x, y) > 1e-4 * scale
    labels = recover_labels(target)
    assert labels.tolist() == [2]
    opts = Stage1Settings.preset("study", iterations=1000, restarts=1, patience=10**6)
    # The batched loop runs the same two-path objective as the plain loop.
    plain = reconstruct_plain(target, labels, dataclasses.replace(opts, iterations=40))
    fast = reconstruct([target], [labels], dataclasses.replace(opts, iterations=40))[0]
    assert float((plain.features - fast.features).abs().max()) < 0.05
    # And it recovers the clip better than matching the update as a clean gradient.
    two = reconstruct([target], [labels], opts)[0]
    one = reconstruct([clean], [labels], opts)[0]
    err_two = float((two.features - x).square().mean())
    err_one = float((one.features - x).square().mean())
    assert err_two < 0.2 * err_one, (err_two, err_one)


def test_the_audit_setting_is_checked_and_keys_its_cache() -> None:
    with pytest.raises(ConfigError, match="--dual-path must be one of expected, clean"):
        AuditSettings(dual_path="mean")
    keys = {m: AuditSettings(dual_path=m).stage1_key()["dual_path"] for m in ("expected", "clean")}
    assert keys == {"expected": "expected", "clean": "clean"}
