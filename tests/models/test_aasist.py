"""AASIST / AASIST-L: published parameter counts, shapes on short and full clips, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedspeech.errors import ConfigError
from fedspeech.models import MODELS, build_model
from fedspeech.models.aasist import AASIST, AASISTL, GraphPool, HSGraphAttentionLayer


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize(("name", "expected"), [("aasist", 297_866), ("aasist-l", 85_306)])
def test_parameter_counts_match_the_paper(name: str, expected: int) -> None:
    assert name in MODELS
    assert _count(build_model(name)) == expected


def test_sinc_filters_are_fixed_and_not_saved() -> None:
    model = AASIST()
    assert model.sinc.filters.shape == (70, 1, 129)
    assert "sinc.filters" not in model.state_dict()
    assert not any(name.startswith("sinc") for name, _ in model.named_parameters())


# AASIST-L at 64600 is left out: its cost is dominated by the same first blocks as AASIST's.
@pytest.mark.parametrize(
    ("cls", "num_samples"), [(AASIST, 16000), (AASIST, 64600), (AASISTL, 16000)]
)
def test_forward_shape(cls: type[AASIST], num_samples: int) -> None:
    model = cls(num_samples=num_samples).eval()
    with torch.no_grad():
        out = model(torch.randn(2, num_samples) * 0.1)
    assert out.shape == (2, 2)
    assert torch.isfinite(out).all()


def test_backward_reaches_every_parameter() -> None:
    # compute_gradient() asks autograd for every parameter, so none may be unused.
    # A short clip keeps this fast; the graph part still sees 23 spectral nodes.
    model = AASIST(num_samples=6000).train()
    x = torch.randn(2, 6000) * 0.1
    loss = F.cross_entropy(model(x), torch.tensor([0, 1]))
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) > 0 for g in grads) > 0.9 * len(grads)


def test_shortest_input_and_too_short_input() -> None:
    model = AASISTL(num_samples=16000).eval()
    assert model.min_samples == 128 + 3**7
    with torch.no_grad():
        assert model(torch.randn(1, model.min_samples)).shape == (1, 2)
    with pytest.raises(ValueError, match="at least"):
        model(torch.randn(1, model.min_samples - 1))
    with pytest.raises(ConfigError):
        AASIST(num_samples=1000)


def test_config_overrides() -> None:
    model = build_model("aasist", num_classes=3, gat_dims=(16, 8), num_samples=16000)
    assert isinstance(model, AASIST)
    assert model.out_layer.out_features == 3
    assert model.out_layer.in_features == 5 * 8
    with pytest.raises(ConfigError, match="unknown AASIST setting"):
        AASIST(gat_dim=(1, 2))


def test_graph_pool_keeps_top_fraction() -> None:
    pool = GraphPool(0.5, 4, dropout=0.0)
    h = torch.randn(3, 7, 4)
    assert pool(h).shape == (3, 3, 4)
    assert GraphPool(0.01, 4)(h).shape == (3, 1, 4)


def test_hs_gal_shapes_and_edge_type_attention() -> None:
    layer = HSGraphAttentionLayer(6, 5, temperature=2.0).eval()
    t, s, m = layer(torch.randn(2, 3, 6), torch.randn(2, 4, 6), torch.randn(2, 1, 6))
    assert (t.shape, s.shape, m.shape) == ((2, 3, 5), (2, 4, 5), (2, 1, 5))
    t2, s2, m2 = layer(torch.randn(2, 3, 6), torch.randn(2, 4, 6))  # master = node mean
    assert m2.shape == (2, 1, 5)
