"""The unrolled model of a multi-step update: exact replay, the order it follows, and a win.

The replay (:func:`attacks.local_training.replay_update`) must give back the client's update
at the client's own clips for every optimiser a client runs, built from the capture as the
audit builds it (:func:`attacks.target.target_from_capture`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from attacks.features import Stage1Settings, reconstruct
from attacks.features.objective import DISTANCES
from attacks.features.step_order import best_order
from attacks.local_training import LocalTraining, replay_update, sequential_batches
from attacks.target import target_from_capture
from fedspeech.capture import Capture, CaptureFormatError
from fedspeech.errors import ConfigError
from fedspeech.models import build_model
from fedspeech.training import batch_slots, local_batches, train_local
from fedspeech.training.dual_path import build_optimizer
from tests.helpers import speech_like

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SHAPE = (32, 32)


def _capture(
    global_weights: dict[str, torch.Tensor],
    shared: dict[str, torch.Tensor],
    examples: int,
    shape: tuple[int, int] = SHAPE,
    **training: Any,
) -> Capture:
    """An update capture of the keyword CNN with the client's ``training`` settings."""
    return Capture(
        kind="update",
        server_round=1,
        client_id=0,
        num_examples=examples,
        global_weights=global_weights,
        shared=shared,
        model="kws-cnn",
        frontend="mel",
        model_kwargs={"num_classes": 10, "input_shape": list(shape)},
        training={"lr": 0.05, "momentum": 0.0, "batch_size": 2, "local_epochs": 1, **training},
    )


def _relative_miss(cap: Capture, x: np.ndarray, y: np.ndarray) -> float:
    """``||replay(true clips) - update||^2 / ||update||^2``, the update in gradient units."""
    t = target_from_capture(cap)
    assert t.local_training is not None
    params = {n: t.params[n] for n in t.grads}
    buffers = dict(t.model.named_buffers())
    got = replay_update(
        t.model, params, buffers, torch.from_numpy(x), torch.from_numpy(y), t.local_training
    )
    miss = sum(float((got[n] - t.grads[n]).double().square().sum()) for n in t.grads)
    return miss / sum(float(t.grads[n].double().square().sum()) for n in t.grads)


@pytest.fixture
def client() -> tuple[dict[str, torch.Tensor], np.ndarray, np.ndarray]:
    torch.manual_seed(0)
    model = build_model("kws-cnn")
    x = speech_like(6, 1, SHAPE).numpy().astype(np.float32)
    return model.state_dict(), x, np.array([1, 2, 3, 1, 0, 5])


@pytest.mark.parametrize(
    "settings",
    [
        {"momentum": 0.0},
        {"momentum": 0.9, "clip_norm": 0.5},
        {"momentum": 0.5, "proximal_mu": 0.3},
    ],
    ids=["sgd", "momentum-clipped", "momentum-fedprox"],
)
def test_replay_gives_back_an_sgd_clients_update(
    client: tuple[dict[str, torch.Tensor], np.ndarray, np.ndarray], settings: dict[str, float]
) -> None:
    state, x, y = client
    model = build_model("kws-cnn")
    model.load_state_dict(state)
    # Two epochs of the client's own seeded shuffle, recorded as the server records it.
    batches = local_batches(
        np.arange(6), seed=3, server_round=1, client_id=0, batch_size=2, epochs=2
    )
    train_local(model, x, y, batches, lr=0.05, **settings)
    order = batch_slots(batches)
    cap = _capture(
        state, model.state_dict(), 12, SHAPE, local_epochs=2, batch_order=order, **settings
    )
    # Slots by first visit: the candidates are the clips in that order.
    first_seen = list(dict.fromkeys(int(p) for b in batches for p in b))
    assert _relative_miss(cap, x[first_seen], y[first_seen]) < 1e-6


def test_replay_gives_back_an_adam_clients_update(
    client: tuple[dict[str, torch.Tensor], np.ndarray, np.ndarray],
) -> None:
    state, x, y = client
    model = build_model("kws-cnn")
    model.load_state_dict(state)
    opt = build_optimizer("adam", list(model.parameters()), lr=0.01, weight_decay=1e-3)
    for b in ([0, 1], [2, 3], [4, 5]):
        opt.zero_grad()
        F.cross_entropy(model(torch.from_numpy(x[b])), torch.from_numpy(y[b])).backward()
        opt.step()
    cap = _capture(state, model.state_dict(), 6, lr=0.01, optimizer="adam", weight_decay=1e-3)
    assert _relative_miss(cap, x, y) < 1e-6
    # The averaged model's error here is not small: Adam's steps are not scaled gradients.
    averaged = target_from_capture(cap, update_model="averaged")
    assert averaged.local_training is None and "adam" in averaged.caveat


def test_the_order_is_replayed_and_without_it_assumed(
    client: tuple[dict[str, torch.Tensor], np.ndarray, np.ndarray],
) -> None:
    state, x, y = client
    model = build_model("kws-cnn")
    model.load_state_dict(state)
    batches = local_batches(
        np.arange(6), seed=0, server_round=2, client_id=1, batch_size=2, epochs=2
    )
    train_local(model, x, y, batches, lr=0.05)
    order = batch_slots(batches)
    assert order[3:] != sequential_batches(6, 2)  # the second epoch regroups the clips
    recorded = target_from_capture(
        _capture(state, model.state_dict(), 12, local_epochs=2, batch_order=order)
    )
    assumed = target_from_capture(_capture(state, model.state_dict(), 12, local_epochs=2))
    assert recorded.local_training is not None and assumed.local_training is not None
    assert recorded.local_training.batches == tuple(tuple(b) for b in order)
    assert recorded.local_training.order_known and not assumed.local_training.order_known
    assert assumed.local_training.batches == sequential_batches(6, 2, epochs=2)
    assert "not recorded" in assumed.caveat and "not recorded" not in recorded.caveat
    assert recorded.batch_size == assumed.batch_size == 6


@pytest.mark.parametrize(
    ("order", "message"),
    [
        ([[0, 1], [2]], "records 2 batches in batch_order but 3 local steps"),
        ([[0, 1], [4], [2]], "unreadable batch_order"),
        ([[0, 1], [], [2]], "unreadable batch_order"),
        ("0,1", "unreadable batch_order"),
        ([[0, 1.5], [2], [3]], "unreadable batch_order"),
    ],
)
def test_a_bad_recorded_order_is_named(order: Any, message: str) -> None:
    state = build_model("kws-cnn").state_dict()
    cap = _capture(state, state, 6, local_steps=3, batch_order=order)
    with pytest.raises(CaptureFormatError, match=message):
        target_from_capture(cap)


def test_one_sgd_step_and_the_detectors_trainer_stay_averaged() -> None:
    state = build_model("kws-cnn").state_dict()
    one = target_from_capture(_capture(state, state, 2, local_steps=1))
    assert one.local_training is None and one.caveat == ""
    sdd = target_from_capture(_capture(state, state, 4, local_steps=2, task="sdd"))
    assert sdd.local_training is None and "not replayed" in sdd.caveat
    secagg = _capture(state, state, 8, local_steps=2, secagg_clients=[0, 1])
    assert target_from_capture(secagg).local_training is None
    with pytest.raises(ValueError, match="update_model must be one of unrolled, averaged"):
        target_from_capture(_capture(state, state, 4, local_steps=2), update_model="exact")


def test_sequential_order_matches_the_clients_cut() -> None:
    cut = local_batches(np.arange(7), seed=0, server_round=1, client_id=0, batch_size=3)
    assert [len(b) for b in cut] == [len(b) for b in sequential_batches(7, 3)]
    plan = LocalTraining(batches=sequential_batches(7, 3, epochs=2), lr=0.1, scale=0.6)
    assert (plan.clips, plan.steps) == (7, 6)


@pytest.mark.slow
def test_two_steps_recovered_better_unrolled_than_averaged() -> None:
    """2 clips, one SGD step each (the client's update), attacked both ways, same budget."""
    shape = (16, 16)
    torch.manual_seed(0)
    model = build_model("kws-cnn", input_shape=shape)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = speech_like(2, 0, shape).numpy().astype(np.float32)
    y = np.array([1, 4])
    train_local(model, x, y, [np.array([0]), np.array([1])], lr=0.1)
    cap = _capture(state, model.state_dict(), 2, shape, lr=0.1, batch_size=1, local_steps=2)
    # One distance for both, so that only the model of the update differs.
    settings = Stage1Settings(iterations=1500, restarts=1, lr_start=0.1, distance="l2")
    f_mse = {}
    for update_model in ("unrolled", "averaged"):
        target = target_from_capture(cap, update_model=update_model)
        rec = reconstruct([target], [torch.from_numpy(y)], settings)[0]
        # Each recovered clip against its best-matching true clip (the audit pairs them).
        d = (rec.features[:, None] - torch.from_numpy(x)[None]).square().mean((2, 3))
        f_mse[update_model] = float(d.min(1).values.mean())
    assert f_mse["unrolled"] < 0.5 * f_mse["averaged"], f_mse


def test_the_step_order_of_the_labels_is_found_by_replaying(
    client: tuple[dict[str, torch.Tensor], np.ndarray, np.ndarray],
) -> None:
    """Given the true (clip, label) pairs in label order, the replay puts them in step order."""
    state, x, _ = client
    y = np.array([7, 2, 5, 0])  # the client's steps: one clip each, in this order
    model = build_model("kws-cnn")
    model.load_state_dict(state)
    train_local(model, x[:4], y, [np.array([k]) for k in range(4)], lr=0.1)
    target = target_from_capture(
        _capture(state, model.state_dict(), 4, lr=0.1, batch_size=1, local_steps=4)
    )
    by_label = np.argsort(y)  # what label recovery gives: ascending labels
    clips, labels = torch.from_numpy(x[:4][by_label]), torch.from_numpy(y[by_label])
    order = best_order(target, clips, labels, "cosine")
    assert labels[order].tolist() == y.tolist()


def test_the_replayed_attack_can_start_at_the_averaged_clips(
    client: tuple[dict[str, torch.Tensor], np.ndarray, np.ndarray],
) -> None:
    """``unrolled_start="averaged"``: the first restart starts where the ordering pass ended."""
    state, x, _ = client
    y = np.array([7, 2, 5, 0])
    model = build_model("kws-cnn")
    model.load_state_dict(state)
    train_local(model, x[:4], y, [np.array([k]) for k in range(4)], lr=0.1)
    target = target_from_capture(
        _capture(state, model.state_dict(), 4, lr=0.1, batch_size=1, local_steps=4)
    )
    labels = torch.from_numpy(np.sort(y))  # as label recovery gives them
    settings = Stage1Settings(iterations=60, restarts=1, lr_start=0.1, unrolled_start="averaged")
    # The ordering pass, made again: the averaged model's clips, by cosine, in step order.
    averaged = dataclasses.replace(target, local_training=None)
    avg = reconstruct([averaged], [labels], dataclasses.replace(settings, distance="cosine"))[0]
    order = best_order(target, avg.features, avg.labels, "cosine")
    assert target.local_training is not None
    names = list(target.grads)
    got = replay_update(
        target.model,
        {n: target.params[n] for n in names},
        dict(target.model.named_buffers()),
        avg.features[order],
        avg.labels[order],
        target.local_training,
    )
    at_start = float(
        DISTANCES.get("cosine").direct([got[n] for n in names], [target.grads[n] for n in names])
    )

    warm = reconstruct([target], [labels], settings)
    cold = reconstruct([target], [labels], dataclasses.replace(settings, unrolled_start="random"))
    # The warm restart keeps its best iterate, so it ends no worse than where it started;
    # 60 steps from a random draw end further off on this case.
    assert warm[0].matching_loss <= at_start * (1 + 1e-6), (warm[0].matching_loss, at_start)
    assert warm[0].matching_loss < cold[0].matching_loss, (
        warm[0].matching_loss,
        cold[0].matching_loss,
    )


def test_an_unknown_start_is_named() -> None:
    with pytest.raises(ConfigError, match="--unrolled-start"):
        Stage1Settings(unrolled_start="zeros")
