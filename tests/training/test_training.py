from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from fedspeech.models import build_model
from fedspeech.training import (
    apply_gradient,
    compute_gradient,
    evaluate,
    local_batches,
    train_local,
)


def test_local_batches_are_a_seeded_pure_function() -> None:
    idx = np.arange(100, 150)
    a = local_batches(idx, seed=1, server_round=3, client_id=4, batch_size=8, epochs=2)
    b = local_batches(idx, seed=1, server_round=3, client_id=4, batch_size=8, epochs=2)
    c = local_batches(idx, seed=1, server_round=4, client_id=4, batch_size=8, epochs=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    # Two epochs: every clip exactly twice.
    counts = np.bincount(np.concatenate(a), minlength=150)[100:]
    assert (counts == 2).all()
    assert len(a) == 2 * 7  # ceil(50 / 8) per epoch


def test_local_batches_exact_steps() -> None:
    idx = np.arange(10)
    batches = local_batches(idx, seed=0, server_round=1, client_id=0, batch_size=4, steps=7)
    assert len(batches) == 7
    assert all(len(b) <= 4 for b in batches)


def test_compute_gradient_matches_autograd() -> None:
    torch.manual_seed(0)
    model = build_model("kws-cnn")
    x, y = torch.randn(3, 32, 32), torch.tensor([1, 4, 9])
    grads = compute_gradient(model, x, y)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None
        torch.testing.assert_close(grads[name], p.grad)


def test_one_local_step_equals_apply_gradient() -> None:
    torch.manual_seed(0)
    model = build_model("kws-cnn")
    feats = np.random.default_rng(0).standard_normal((20, 32, 32)).astype(np.float32)
    labels = np.arange(20) % 10
    start = {k: v.clone() for k, v in model.state_dict().items()}
    batch = np.array([2, 5, 7])
    grads = compute_gradient(model, torch.from_numpy(feats[batch]), torch.from_numpy(labels[batch]))
    train_local(model, feats, labels, [batch], lr=0.1)
    expected = apply_gradient(start, grads, 0.1)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, expected[k])


def test_clip_norm_bounds_a_step_and_leaves_small_gradients_alone() -> None:
    torch.manual_seed(0)
    feats = 50.0 * np.random.default_rng(0).standard_normal((4, 32, 32)).astype(np.float32)
    labels = np.arange(4)
    batch = np.arange(4)
    model = build_model("kws-cnn")
    start = {k: v.clone() for k, v in model.state_dict().items()}
    grads = compute_gradient(model, torch.from_numpy(feats), torch.from_numpy(labels))
    norm = float(torch.cat([g.flatten() for g in grads.values()]).norm())
    assert norm > 1.0  # loud inputs: a large gradient

    def step(clip: float) -> dict[str, torch.Tensor]:
        model.load_state_dict(start)
        train_local(model, feats, labels, [batch], lr=0.1, clip_norm=clip)
        return {k: v - start[k] for k, v in model.state_dict().items()}

    clipped = step(1.0)
    moved = float(torch.cat([d.flatten() for d in clipped.values()]).norm())
    assert abs(moved - 0.1 * 1.0) < 1e-4  # lr × the bound, in the gradient's direction
    expected = apply_gradient(start, {k: g / norm for k, g in grads.items()}, 0.1)
    for k, v in start.items():
        torch.testing.assert_close(v + clipped[k], expected[k])
    unclipped = step(0.0)
    for k, d in step(10 * norm).items():  # a bound above the norm changes nothing
        torch.testing.assert_close(d, unclipped[k])


def test_training_reduces_loss() -> None:
    torch.manual_seed(0)
    model = build_model("kws-cnn")
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 4
    templates = rng.standard_normal((4, 32, 32))
    feats = (templates[labels] + 0.3 * rng.standard_normal((40, 32, 32))).astype(np.float32)
    before, _ = evaluate(model, feats, labels)
    batches = local_batches(
        np.arange(40), seed=0, server_round=1, client_id=0, batch_size=8, epochs=3
    )
    train_local(model, feats, labels, batches, lr=0.02)
    after, acc = evaluate(model, feats, labels)
    assert after < before
    assert acc > 0.9


@pytest.mark.parametrize(
    ("clips", "batch", "epochs", "steps"),
    [(450, 16, 2, 0), (7, 3, 1, 0), (7, 3, 1, 5), (0, 4, 2, 0)],
)
def test_the_step_count_is_that_of_the_batches(
    clips: int, batch: int, epochs: int, steps: int
) -> None:
    from fedspeech.training import local_step_count

    got = local_batches(
        np.arange(clips),
        seed=0,
        server_round=1,
        client_id=0,
        batch_size=batch,
        epochs=epochs,
        steps=steps,
    )
    assert local_step_count(clips, batch, epochs, steps) == len(got)
