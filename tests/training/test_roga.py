"""RoGA (per-domain SAM ascent plus gradient alignment), on tiny models."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedspeech.errors import ConfigError
from fedspeech.training.roga import Mode, RoGA, RoGAStats, train_roga


def _mlp(seed: int = 0, d_in: int = 6) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 16), nn.Tanh(), nn.Linear(16, 3))


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(24, 6, generator=gen)
    y = torch.randint(0, 3, (24,), generator=gen)
    domains = torch.randint(0, 3, (24,), generator=gen)
    return x, y, domains


def _update(model: nn.Module, **kw: object) -> tuple[torch.Tensor, RoGAStats]:
    """The parameter change of one RoGA step with SGD(lr=1), i.e. minus the direction."""
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    stats = RoGA(model, opt, **kw).step(*_batch())  # type: ignore[arg-type]
    after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return before - after, stats


def test_step_changes_parameters_and_reports() -> None:
    model = _mlp()
    delta, stats = _update(model, rho=0.1, alpha=2e-4)
    assert float(delta.abs().min()) >= 0 and float(delta.norm()) > 0
    assert stats.num_domains == 3
    assert -1.0 <= stats.cosine <= 1.0
    assert stats.conflict == (stats.cosine < 0)
    # The ascent raises each domain's loss.
    assert stats.loss_perturbed > stats.loss


def test_rho_and_alpha_zero_is_plain_training() -> None:
    model = _mlp()
    x, y, _ = _batch()
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    plain = torch.cat([g.reshape(-1) for g in grads])
    delta, stats = _update(model, rho=0.0, alpha=0.0)
    torch.testing.assert_close(delta, plain, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        assert stats.loss == pytest.approx(float(F.cross_entropy(model(x), y)), rel=1e-6)


def test_finite_difference_alignment_matches_double_backward() -> None:
    model = _mlp()
    sam, _ = _update(model, rho=0.05, alpha=0.0)
    exact, _ = _update(model, rho=0.05, alpha=0.05, mode="exact")
    fd, _ = _update(model, rho=0.05, alpha=0.05, mode="fd")
    shift, _ = _update(model, rho=0.05, alpha=0.05, mode="shift")
    a_exact, a_fd, a_shift = exact - sam, fd - sam, shift - sam
    assert float(a_exact.norm()) > 1e-3  # the alignment term does move the step
    cos = float(a_exact @ a_fd / (a_exact.norm() * a_fd.norm()))
    assert cos > 0.99
    assert float(a_fd.norm() / a_exact.norm()) == pytest.approx(1.0, abs=0.1)
    # The Taylor shift carries one of the two Hessian-vector products: about half.
    assert float(a_shift.norm() / a_exact.norm()) == pytest.approx(0.5, abs=0.1)


def test_single_domain_has_no_cosine() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y, _ = _batch()
    stats = RoGA(model, opt, 0.1, 2e-4).step(x, y, torch.zeros(24, dtype=torch.int64))
    assert stats.num_domains == 1 and math.isnan(stats.cosine) and not stats.conflict


def _attack_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[x; x + noise]`` of 12 clips whose attack ids are 0, 2 and 5, as ``train_sdd`` makes.

    Returns inputs ``(24, 6)``, labels and domains ``[d; d]``, both ``(24,)``.
    """
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(12, 6, generator=gen)
    y = torch.randint(0, 3, (12,), generator=gen)
    d = torch.tensor([0, 2, 5, 0, 0, 2, 5, 5, 0, 2, 0, 0])
    x_aug = x + 0.3 * torch.randn(12, 6, generator=gen)
    return torch.cat([x, x_aug]), torch.cat([y, y]), torch.cat([d, d])


def _flat_grad_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    return torch.cat([g.reshape(-1) for g in grads])


@pytest.mark.parametrize("mode", ["fd", "exact"])
def test_one_ascent_per_attack_domain(mode: Mode) -> None:
    model = _mlp()
    x, y, domains = _attack_batch()
    calls: list[int] = []
    model.register_forward_hook(lambda _m, inp, _out: calls.append(len(inp[0])))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    ref = copy.deepcopy(model)
    before = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    stats = RoGA(model, opt, rho=0.05, alpha=0.05, mode=mode).step(x, y, domains)
    delta = before - torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    # Three attacks present: one pass at θ and one at the ascent point for each, over the
    # domain's clean and augmented clips together (2 × 6, 2 × 3, 2 × 3 examples).
    assert stats.num_domains == 3
    assert sorted(calls) == [6, 6, 6, 6, 12, 12]
    # The step itself, computed directly: Σ_i (n_i/B) [g_i⁺ − λ_i (g_i⁺ − g_i)] in fd mode,
    # the exact alignment gradient being within a few per cent of it (see above).
    expected = torch.zeros_like(before)
    for k in (0, 2, 5):
        sel = domains == k
        g = _flat_grad_of(ref, x[sel], y[sel])
        shifted = copy.deepcopy(ref)
        with torch.no_grad():
            offset = 0
            for p in shifted.parameters():
                n = p.numel()
                p.add_(0.05 * g[offset : offset + n].view(p.shape) / g.norm())
                offset += n
        g_plus = _flat_grad_of(shifted, x[sel], y[sel])
        lam = 2 * 0.05 * float(g.norm()) / 0.05
        expected += float(sel.float().mean()) * (g_plus - lam * (g_plus - g))
    if mode == "fd":
        torch.testing.assert_close(delta, expected, atol=1e-6, rtol=1e-4)
    else:
        assert float((delta - expected).norm() / expected.norm()) < 0.05


def _bn_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_batch_norm_running_stats_ignore_the_ascent_and_singletons_merge() -> None:
    x, y, _ = _batch()
    domains = torch.tensor([0] * 12 + [1] * 11 + [2])  # domain 2 has a single example
    stats = []
    for rho in (0.0, 0.5):
        model = _bn_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        stats.append(RoGA(model, opt, rho=rho, alpha=0.0).step(x, y, domains))
        bn = model[1]
        assert isinstance(bn, nn.BatchNorm1d)
        if rho == 0.0:
            running = (bn.running_mean.clone(), bn.running_var.clone())  # type: ignore[union-attr]
        else:
            torch.testing.assert_close(bn.running_mean, running[0])
            torch.testing.assert_close(bn.running_var, running[1])
    assert stats[1].num_domains == 2


def _toy(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three domains whose class signal sits in different input coordinates."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n).astype(np.int64)
    domains = rng.integers(0, 3, n).astype(np.int64)
    x = rng.normal(0, 0.5, (n, 12)).astype(np.float32)
    x[:, 0] += 2 * labels - 1
    x[np.arange(n), 1 + domains] += 1.5 * (2 * labels - 1)
    return x, labels, domains


@pytest.mark.parametrize("mode", ["fd", "shift"])
def test_train_roga_reduces_the_loss(mode: str) -> None:
    x, labels, domains = _toy()
    model = _mlp(d_in=12)
    xt, yt = torch.from_numpy(x), torch.from_numpy(labels)
    with torch.no_grad():
        start = float(F.cross_entropy(model(xt), yt))
    rng = np.random.default_rng(0)
    batches = [np.sort(rng.choice(len(labels), 24, replace=False)) for _ in range(30)]
    result = train_roga(
        model, x, labels, domains, batches, lr=0.01, rho=0.1, alpha=2e-4,
        mode=mode,  # type: ignore[arg-type]
        augment=lambda t: t + 0.05 * torch.randn_like(t),
        optimizer="adam",
    )  # fmt: skip
    with torch.no_grad():
        end = float(F.cross_entropy(model(xt), yt))
    assert end < 0.5 * start
    assert result.steps == 30 and result.num_examples == 30 * 24
    assert 0.0 <= result.conflict_rate <= 1.0
    assert len(result.cosines) == 30
    assert result.loss_perturbed > 0


def test_bad_settings() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="mode"):
        RoGA(model, opt, 0.1, 2e-4, mode="hessian")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="rho"):
        RoGA(model, opt, rho=-1.0, alpha=2e-4)
