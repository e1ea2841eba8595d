"""DP-SGD local training through Opacus' ghost clipping."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fedspeech.models import build_model
from fedspeech.training.dp_sgd import train_dp_sgd


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
