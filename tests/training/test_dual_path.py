"""Gradient aligners and dual-path (clean + augmented) training, on tiny models."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedspeech.errors import ConfigError
from fedspeech.training.aligners import ALIGNERS, build_aligner
from fedspeech.training.dual_path import (
    Paths,
    build_optimizer,
    dual_path_step,
    train_dual_path,
)

NAMES = ["none", "pcgrad", "gradvac", "cagrad", "upgrad"]


def _conflicting(p: int = 50, seed: int = 0) -> torch.Tensor:
    """Two random ``(P,)`` gradients with a clearly negative cosine, of unequal norms."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(p, generator=gen)
    b = -0.7 * a / a.norm() + 0.3 * torch.randn(p, generator=gen) / p**0.5
    jac = torch.stack([a, 3.0 * b])
    assert float(jac[0] @ jac[1]) < 0
    return jac


def _mlp(seed: int = 0, d_in: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 12), nn.Tanh(), nn.Linear(12, 2))


def _shift(x: torch.Tensor) -> torch.Tensor:
    """A deterministic 'augmentation' the tests can replay."""
    return 0.5 * x.flip(1) + 0.2


def test_registry_names_and_errors() -> None:
    assert ALIGNERS.names() == sorted(NAMES)
    with pytest.raises(ConfigError, match="unknown alignment 'mgda'; known: cagrad"):
        build_aligner("mgda")
    with pytest.raises(ConfigError, match="cagrad"):
        build_aligner("cagrad", beta=0.3)


@pytest.mark.parametrize("name", NAMES)
def test_each_aligner_gives_a_finite_direction(name: str) -> None:
    jac = _conflicting()
    out = build_aligner(name)(jac)
    assert out.shape == (jac.shape[1],)
    assert torch.isfinite(out).all()
    assert float(out.norm()) > 0


@pytest.mark.parametrize("name", ["pcgrad", "upgrad"])
def test_projection_methods_remove_the_conflict(name: str) -> None:
    for seed in range(3):
        jac = _conflicting(seed=seed)
        out = build_aligner(name)(jac)
        # PCGrad and UPGrad promise a direction in the dual cone: ⟨d, g_i⟩ ≥ 0 for both.
        assert (jac @ out >= -1e-5 * jac.norm() * out.norm()).all(), (jac @ out).tolist()
        # The plain mean does conflict here, so the check above is not vacuous.
        assert float((jac @ jac.mean(0)).min()) < 0


@pytest.mark.parametrize("name", ["none", "pcgrad", "gradvac", "upgrad"])
def test_aligned_gradients_give_the_mean(name: str) -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(40, generator=gen)
    jac = torch.stack([a, a + 0.1 * torch.randn(40, generator=gen)])
    assert float(jac[0] @ jac[1]) > 0
    out = build_aligner(name)(jac)
    # Mean scale for every aligner: with no conflict there is nothing to correct.
    torch.testing.assert_close(out, jac.mean(0))


def test_step_records_the_cosine_and_updates() -> None:
    model = _mlp()
    x = torch.randn(10, 16)
    y = torch.randint(0, 2, (10,))
    ref = copy.deepcopy(model)
    params = list(ref.parameters())
    g_c = torch.autograd.grad(F.cross_entropy(ref(x), y), params)
    g_a = torch.autograd.grad(F.cross_entropy(ref(_shift(x)), y), params)
    fc = torch.cat([g.reshape(-1) for g in g_c])
    fa = torch.cat([g.reshape(-1) for g in g_a])
    expected = float(fc @ fa / (fc.norm() * fa.norm()))

    lr = 0.1
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    stats = dual_path_step(model, opt, x, y, _shift, build_aligner("none"))
    assert stats.cosine == pytest.approx(expected, abs=1e-5)
    assert stats.conflict == (expected < 0)
    with torch.no_grad():
        assert stats.loss_clean == pytest.approx(float(F.cross_entropy(ref(x), y)), rel=1e-6)
    # ``none`` is ordinary SGD on (L_clean + L_aug) / 2.
    for p, b, gc, ga in zip(model.parameters(), before, g_c, g_a, strict=True):
        torch.testing.assert_close(p.detach(), b - lr * (gc + ga) / 2)


@pytest.mark.parametrize("paths", ["separate", "joint"])
def test_aligned_step_changes_every_parameter(paths: Paths) -> None:
    model = _mlp()
    x = torch.randn(8, 16)
    y = torch.randint(0, 2, (8,))
    before = [p.detach().clone() for p in model.parameters()]
    opt = build_optimizer("sgd", list(model.parameters()), lr=0.1, momentum=0.9)
    stats = dual_path_step(model, opt, x, y, _shift, build_aligner("pcgrad"), paths=paths)
    assert -1.0 <= stats.cosine <= 1.0
    for p, b in zip(model.parameters(), before, strict=True):
        assert not torch.equal(p.detach(), b)


def test_joint_and_separate_agree_without_batch_norm() -> None:
    x = torch.randn(6, 16)
    y = torch.randint(0, 2, (6,))
    cos = []
    modes: tuple[Paths, ...] = ("separate", "joint")
    for paths in modes:
        model = _mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        step = dual_path_step(model, opt, x, y, _shift, build_aligner("none"), paths=paths)
        cos.append(step.cosine)
    assert cos[0] == pytest.approx(cos[1], abs=1e-5)


def _toy(n: int = 96, t: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes of 'waveforms' that differ in the sign of a low-frequency component."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n).astype(np.int64)
    phase = np.sin(np.linspace(0, 2 * np.pi, t, dtype=np.float32))
    waves = rng.normal(0, 0.5, (n, t)).astype(np.float32)
    waves += (2 * labels[:, None] - 1).astype(np.float32) * phase
    return waves, labels


def _noise(x: torch.Tensor) -> torch.Tensor:
    return x + 0.3 * torch.randn_like(x)


@pytest.mark.parametrize("alignment", ["none", "pcgrad", "upgrad"])
def test_train_dual_path_learns_a_toy_task(alignment: str) -> None:
    waves, labels = _toy()
    model = _mlp(d_in=waves.shape[1])
    x, y = torch.from_numpy(waves), torch.from_numpy(labels)
    with torch.no_grad():
        start = float(F.cross_entropy(model(x), y))
    rng = np.random.default_rng(0)
    batches = [np.sort(rng.choice(len(labels), 16, replace=False)) for _ in range(30)]
    torch.manual_seed(0)
    result = train_dual_path(
        model,
        waves,
        labels,
        batches,
        augment=_noise,
        alignment=alignment,
        lr=0.01,
        optimizer="adam",
    )
    with torch.no_grad():
        end = float(F.cross_entropy(model(x), y))
    assert end < 0.5 * start
    assert result.steps == 30 and result.num_examples == 30 * 16
    assert 0.0 <= result.conflict_rate <= 1.0
    assert len(result.cosines) == 30
    assert result.conflict_rate == pytest.approx(np.mean([c < 0 for c in result.cosines]))
    assert -1.0 <= result.mean_cosine <= 1.0
    assert result.loss == pytest.approx((result.loss_clean + result.loss_aug) / 2)


def test_train_dual_path_with_batch_norm_and_gradvac() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Unflatten(1, (1, -1)),
        nn.Conv1d(1, 4, 5, stride=2),
        nn.BatchNorm1d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    waves, labels = _toy(n=32)
    batches = [np.arange(0, 8), np.arange(8, 16), np.arange(16, 24)]
    result = train_dual_path(
        model, waves, labels, batches, augment=_noise, alignment=build_aligner("gradvac"), lr=1e-3,
        optimizer="sgd", momentum=0.9, weight_decay=1e-4,
    )  # fmt: skip
    assert result.steps == 3 and np.isfinite(result.loss)
    assert 0.0 <= result.conflict_rate <= 1.0


def test_unknown_optimizer_and_paths() -> None:
    model = _mlp()
    waves, labels = _toy(n=8, t=16)
    with pytest.raises(ConfigError, match="unknown optimizer 'rmsprop'"):
        train_dual_path(
            model, waves, labels, [np.arange(4)], augment=_noise, alignment="none", lr=0.1,
            optimizer="rmsprop",
        )  # fmt: skip
    with pytest.raises(ConfigError, match="paths"):
        dual_path_step(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            torch.from_numpy(waves[:4]),
            torch.from_numpy(labels[:4]),
            _noise,
            build_aligner("none"),
            paths="both",  # type: ignore[arg-type]
        )
