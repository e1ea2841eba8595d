"""DP-SGD local training through Opacus' ghost clipping."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fedspeech.models import build_model
from fedspeech.training.dp_sgd import train_dp_dual_path, train_dp_sgd


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(6, 20, 30)).astype(np.float32), np.array([0, 1, 2, 3, 4, 5])


def test_one_step_without_noise_is_the_mean_of_clipped_per_sample_gradients() -> None:
    torch.manual_seed(0)
    model = build_model("kws-cnn", num_classes=10, input_shape=[20, 30])
    x, y = _data()
    clip, lr = 0.5, 0.1
    # By hand: each sample's gradient, scaled to norm <= C, averaged.
    expected = [torch.zeros_like(p) for p in model.parameters()]
    norms = []
    for i in range(4):
        model.zero_grad()
        F.cross_entropy(
            model(torch.from_numpy(x[i : i + 1])), torch.tensor(y[i : i + 1])
        ).backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        norm = float(torch.stack([g.square().sum() for g in grads]).sum().sqrt())
        norms.append(norm)
        scale = min(1.0, clip / (norm + 1e-6))
        expected = [e + g * scale / 4 for e, g in zip(expected, grads, strict=True)]
    assert min(norms) > clip  # every sample is clipped
    before = [p.detach().clone() for p in model.parameters()]
    train_dp_sgd(model, x, y, [np.arange(4)], lr=lr, clip=clip, noise=0.0)
    for w0, w1, e in zip(before, model.parameters(), expected, strict=True):
        torch.testing.assert_close((w0 - w1.detach()) / lr, e, rtol=2e-3, atol=1e-6)


def test_the_model_comes_back_plain_and_reusable() -> None:
    torch.manual_seed(0)
    model = build_model("kws-cnn", num_classes=10, input_shape=[20, 30])
    start = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _data()
    batches = [np.arange(3), np.arange(3, 6)]
    results = []
    for _ in range(2):  # the same model made private twice, as a client process does
        model.load_state_dict(start)
        torch.manual_seed(1)
        train_dp_sgd(model, x, y, batches, lr=0.1, clip=1.0, noise=1.0)
        results.append({k: v.clone() for k, v in model.state_dict().items()})
        assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
        assert all(not vars(p) and p.grad is None for p in model.parameters())
    fresh = build_model("kws-cnn", num_classes=10, input_shape=[20, 30])
    fresh.load_state_dict(start)
    torch.manual_seed(1)
    train_dp_sgd(fresh, x, y, batches, lr=0.1, clip=1.0, noise=1.0)
    for k, v in fresh.state_dict().items():
        assert torch.equal(results[0][k], results[1][k]) and torch.equal(results[0][k], v), k
    assert not torch.equal(results[0]["classifier.3.bias"], start["classifier.3.bias"])


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_a_private_dual_path_step_is_the_mean_of_each_clips_clipped_pair() -> None:
    """DP-SGD for the detectors: a clip and its augmented copy are clipped as one example."""
    torch.manual_seed(0)
    model = build_model("aasist-xs", num_classes=2, num_samples=4000, dropout=False)
    rng = np.random.default_rng(0)
    x = (0.1 * rng.normal(size=(4, 4000))).astype(np.float32)
    y = np.array([0, 1, 1, 0])

    def augment(t: torch.Tensor) -> torch.Tensor:
        return 0.5 * t + 0.01

    clip, lr = 0.05, 100.0  # a large step: float32 weights resolve it
    params = [p for p in model.parameters() if p.requires_grad]
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    # By hand: BatchNorm on its running statistics (eval mode; no dropout in this model),
    # each clip's clean and augmented gradients averaged (alignment "none"), clipped to C.
    model.eval()
    expected = torch.zeros(sum(p.numel() for p in params))
    norms = []
    for i in range(4):
        xi = torch.from_numpy(x[i : i + 1])
        yi = torch.from_numpy(y[i : i + 1])
        pair = []
        for inp in (xi, augment(xi)):
            grads = torch.autograd.grad(F.cross_entropy(model(inp), yi), params)
            pair.append(torch.cat([g.reshape(-1) for g in grads]))
        d = (pair[0] + pair[1]) / 2
        norms.append(float(d.norm()))
        expected += d * min(1.0, clip / (float(d.norm()) + 1e-6)) / 4
    assert min(norms) > clip  # every clip is clipped
    before = _flat(model)
    res = train_dp_dual_path(
        model, x, y, [np.arange(4)], augment=augment, alignment="none", lr=lr,
        optimizer="sgd", clip=clip, noise=0.0,
    )  # fmt: skip
    # Float32 weights: the update is read back to about 1e-7 of the weights' size.
    atol = 1e-6 * float(before.abs().max()) / lr
    torch.testing.assert_close((before - _flat(model)) / lr, expected, rtol=1e-3, atol=atol)
    assert float(expected.abs().max()) > 100 * atol
    assert (res.steps, res.num_examples) == (1, 4)
    # The running statistics are not touched by private training; the modes are restored.
    for k, v in stats.items():
        assert torch.equal(model.state_dict()[k], v), k
    assert not model.training
    assert all(p.grad is None and not vars(p) for p in model.parameters())


def test_a_private_dual_path_step_adds_noise_of_z_times_c_over_b() -> None:
    torch.manual_seed(0)
    model = build_model("aasist-xs", num_classes=2, num_samples=4000, dropout=False)
    x = np.zeros((2, 4000), dtype=np.float32)
    y = np.array([0, 1])
    start = _flat(model)
    lr, clip, noise = 1.0, 0.01, 100.0  # the clipped gradients (norm <= 0.01) are lost in it
    train_dp_dual_path(
        model, x, y, [np.arange(2)], augment=lambda t: t, alignment="pcgrad", lr=lr,
        optimizer="sgd", clip=clip, noise=noise,
    )  # fmt: skip
    step = (start - _flat(model)) / lr
    std = float(step.std())
    assert abs(std / (noise * clip / 2) - 1) < 0.05  # 24,922 draws
