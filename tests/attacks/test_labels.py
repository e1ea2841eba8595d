"""Label recovery from the last layer: iDLG for one sample, bias counting for batches."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from attacks.labels import LABEL_METHODS, count_labels, last_linear, recover_labels
from attacks.target import AttackTarget
from fedspeech.errors import ConfigError, FedspeechError
from fedspeech.models import build_model
from fedspeech.training.local import compute_gradient
from tests import helpers

SHAPE = (16, 16)


speech_like = partial(helpers.speech_like, shape=SHAPE)
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def make_target(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackTarget:
    return AttackTarget(
        model=model,
        params={n: p.detach() for n, p in model.named_parameters()},
        grads=compute_gradient(model, x, y),
        kind="gradient",
        batch_size=int(y.numel()),
        input_shape=(x.shape[-2], x.shape[-1]),
    )


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("kws-cnn", input_shape=SHAPE)


def test_registry_names_and_unknown() -> None:
    assert LABEL_METHODS.names() == ["count", "idlg"]
    with pytest.raises(ConfigError, match="unknown label method 'nope'; known: count, idlg"):
        LABEL_METHODS.get("nope")


def test_last_linear_is_the_classifier(model: torch.nn.Module) -> None:
    params = dict(model.named_parameters())
    assert last_linear(params) == ("classifier.3.weight", "classifier.3.bias")


@pytest.mark.parametrize("label", [0, 3, 7, 9])
def test_idlg_recovers_single_label(model: torch.nn.Module, label: int) -> None:
    target = make_target(model, speech_like(1, label), torch.tensor([label]))
    assert recover_labels(target).tolist() == [label]
    assert recover_labels(target, "idlg").dtype == torch.long


def test_idlg_without_bias_uses_weight_rows(model: torch.nn.Module) -> None:
    target = make_target(model, speech_like(1, 11), torch.tensor([6]))
    # Drop every bias: the last 2-D weight alone must still give the label (ReLU inputs >= 0).
    target.grads = {n: g for n, g in target.grads.items() if g.dim() != 1}
    assert recover_labels(target, "idlg").tolist() == [6]


def test_idlg_refuses_batches(model: torch.nn.Module) -> None:
    target = make_target(model, speech_like(2, 1), torch.tensor([1, 2]))
    with pytest.raises(FedspeechError, match="one-sample gradient"):
        recover_labels(target, "idlg")


@pytest.mark.parametrize("batch", [4, 8])
def test_count_recovers_label_multiset(model: torch.nn.Module, batch: int) -> None:
    gen = torch.Generator().manual_seed(batch)
    hits, trials = 0, 10
    for trial in range(trials):
        # Repeats allowed: the multiset, not just the set, must come back.
        y = torch.randint(0, 10, (batch,), generator=gen)
        target = make_target(model, speech_like(batch, 100 + trial), y)
        got = recover_labels(target)  # auto -> count
        assert got.shape == (batch,) and got.dtype == torch.long
        hits += int(torch.equal(got, torch.sort(y).values))
    assert hits >= 8, f"count recovered {hits}/{trials} multisets"


def test_count_dummy_estimate_runs(model: torch.nn.Module) -> None:
    y = torch.tensor([1, 1, 4, 8])
    target = make_target(model, speech_like(4, 5), y)
    assert count_labels(target, estimate="dummy").tolist() == [1, 1, 4, 8]
    with pytest.raises(ConfigError, match="known: proxy, dummy"):
        count_labels(target, estimate="magic")
