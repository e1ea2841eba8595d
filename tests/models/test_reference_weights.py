"""The published AASIST / AASIST-L checkpoints: key map, the authors' outputs, bad files."""

from __future__ import annotations

import builtins
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedspeech.errors import ConfigError, DataError, FedspeechError
from fedspeech.models import build_model, load_reference_weights
from fedspeech.models.aasist import AASIST
from fedspeech.models.reference import map_reference_key

#: The published checkpoints, in the repository's sibling folder ../shared (as tests/helpers.py
#: finds ../shared/data).
REFERENCE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "models" / "aasist"

needs_weights = pytest.mark.skipif(
    not (REFERENCE_DIR / "reference_outputs.json").is_file(),
    reason=f"published AASIST checkpoints not found at {REFERENCE_DIR}",
)

#: Our model name → (checkpoint file, key in reference_outputs.json, parameter count).
PUBLISHED = {
    "aasist-l": ("AASIST-L.pth", "AASIST-L", 85_306),
    "aasist": ("AASIST.pth", "AASIST", 297_866),
}


def _recipe_inputs() -> torch.Tensor:
    """The four rows of reference_outputs.json's recipe: ``(4, 64600)`` float32."""
    t = np.arange(64600) / 16000
    noise = np.random.RandomState(0).standard_normal((2, 64600)) * 0.1
    sine = 0.5 * np.sin(2 * np.pi * 440 * t)
    chirp = 0.3 * np.sin(2 * np.pi * (100 * t + (4000 - 100) / (2 * t[-1]) * t**2))
    rows = [noise[0].astype(np.float32), noise[1].astype(np.float32)]
    rows += [sine.astype(np.float32), chirp.astype(np.float32)]
    return torch.from_numpy(np.stack(rows))


def _published(name: str) -> AASIST:
    model = build_model(name, num_classes=2, num_samples=64600)
    assert isinstance(model, AASIST)
    load_reference_weights(model, REFERENCE_DIR / PUBLISHED[name][0], name)
    return model


@pytest.fixture(scope="module")
def outputs() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per model: our logits ``(4, 2)`` and last hidden layer ``(4, 160)``, one batch each."""
    x = _recipe_inputs()
    found = {}
    for name in PUBLISHED:
        model = _published(name).eval()
        with torch.no_grad():
            hidden = model.embed(x)
            found[name] = (model.out_layer(hidden), hidden)
    return found


def _reference(model_key: str) -> dict[str, Any]:
    data = json.loads((REFERENCE_DIR / "reference_outputs.json").read_text())
    return data["models"][model_key]  # type: ignore[no-any-return]


def test_key_map_rules() -> None:
    assert map_reference_key("pos_S") == "pos_spectral"
    assert map_reference_key("encoder.0.0.conv_downsample.bias") == "encoder.0.shortcut.bias"
    assert map_reference_key("encoder.4.0.bn1.num_batches_tracked") == (
        "encoder.4.pre.0.num_batches_tracked"
    )
    assert map_reference_key("HtrgGAT_layer_ST12.att_weightM") == "hs_gal12.att_weight_master"
    assert map_reference_key("HtrgGAT_layer_ST22.proj_without_attM.weight") == (
        "hs_gal22.proj_without_att_master.weight"
    )
    assert map_reference_key("pool_hT2.proj.weight") == "pool_ht2.proj.weight"
    assert map_reference_key("GAT_layer_T.bn.running_mean") == "gat_temporal.bn.running_mean"
    for unknown in ("foo", "conv_time.band_pass", "encoder.1.conv1.weight", "encoder.x.0.a"):
        assert map_reference_key(unknown) is None


@needs_weights
@pytest.mark.parametrize("name", list(PUBLISHED))
def test_every_key_and_shape_match(name: str) -> None:
    filename, _, count = PUBLISHED[name]
    weights = torch.load(REFERENCE_DIR / filename, map_location="cpu", weights_only=True)
    model = build_model(name, num_classes=2, num_samples=64600)
    own = model.state_dict()
    mapped = {map_reference_key(k): v for k, v in weights.items()}
    assert None not in mapped and len(mapped) == len(weights) and set(mapped) == set(own)
    assert all(v.shape == own[str(k)].shape for k, v in mapped.items())
    assert sum(p.numel() for p in model.parameters()) == count

    load_reference_weights(model, REFERENCE_DIR / filename, name)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[map_reference_key(k) or ""], v) for k, v in weights.items())


@needs_weights
@pytest.mark.parametrize("name", list(PUBLISHED))
def test_logits_and_hidden_match_the_authors(
    name: str, outputs: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> None:
    ref = _reference(PUBLISHED[name][1])
    logits, hidden = outputs[name]
    assert hidden.shape == (4, ref["last_hidden_dim"])
    torch.testing.assert_close(logits, torch.tensor(ref["logits"]), rtol=0, atol=1e-4)
    torch.testing.assert_close(
        hidden[:, :8], torch.tensor(ref["last_hidden_first8"]), rtol=0, atol=1e-4
    )


def test_unread_layers_get_a_zero_gradient() -> None:
    # The residual blocks' ``pre`` layers change no output (as published), but autograd over
    # every parameter (compute_gradient, torch.func) must still give them a gradient.
    torch.manual_seed(0)
    # aasist-xs keeps its pre-activation blocks (as measured); the wiring is a setting.
    model = build_model("aasist-xs", num_classes=2, num_samples=4000, pre_activation=False)
    model.train()
    x, y = torch.randn(2, 4000) * 0.1, torch.tensor([0, 1])
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(params.values()))
    by_name = dict(zip(params, grads, strict=True))
    pre = [n for n in by_name if ".pre." in n]
    assert pre and all(torch.equal(by_name[n], torch.zeros_like(by_name[n])) for n in pre)

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        out = torch.func.functional_call(model, p, (x,))
        return F.cross_entropy(out, y)

    model.eval()  # no dropout: the two passes see the same network
    func_grads = torch.func.grad(loss)({k: v.detach() for k, v in params.items()})
    assert set(func_grads) == set(params)


def _assert_one_line(err: FedspeechError, *needles: str) -> None:
    text = str(err)
    assert "\n" not in text and "Traceback" not in text, text
    for needle in needles:
        assert needle in text, text


def test_truncated_checkpoint_is_a_data_error(tmp_path: Path) -> None:
    model = build_model("aasist-l", num_classes=2, num_samples=64600)
    whole = tmp_path / "whole.pth"
    torch.save(model.state_dict(), whole)
    cut = tmp_path / "AASIST-L.pth"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(DataError) as err:
        load_reference_weights(model, cut, "aasist-l")
    _assert_one_line(err.value, "AASIST-L.pth", "not a readable PyTorch checkpoint")

    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(DataError) as err:
        load_reference_weights(model, empty, "aasist-l")
    _assert_one_line(err.value, "empty.pth")


class _MakesMarker:
    """Unpickled unsafely, this calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return builtins.open, (str(self.marker), "w")


@pytest.mark.parametrize("container", ["torch.save", "pickle"])
def test_checkpoint_with_code_is_refused_unrun(tmp_path: Path, container: str) -> None:
    marker = tmp_path / "MARKER"
    payload = {"pos_S": torch.zeros(1, 23, 24), "master1": _MakesMarker(marker)}
    path = tmp_path / "AASIST-L.pth"
    if container == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    assert b"open" in path.read_bytes()  # the call is in the file
    model = build_model("aasist-l", num_classes=2, num_samples=64600)
    with pytest.raises(DataError) as err:
        load_reference_weights(model, path, "aasist-l")
    _assert_one_line(err.value, "AASIST-L.pth", "other than tensors")
    assert not marker.exists()


def test_not_a_mapping_of_tensors(tmp_path: Path) -> None:
    model = build_model("aasist-l", num_classes=2, num_samples=64600)
    as_list = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], as_list)
    with pytest.raises(DataError) as err:
        load_reference_weights(model, as_list, "aasist-l")
    _assert_one_line(err.value, "list.pth", "not a state_dict")

    unexpected = tmp_path / "renamed.pth"
    torch.save({"foo": torch.zeros(1)}, unexpected)
    with pytest.raises(ConfigError) as cfg_err:
        load_reference_weights(model, unexpected, "aasist-l")
    _assert_one_line(cfg_err.value, "renamed.pth", "unexpected key 'foo'", "missing keys")

    with pytest.raises(ConfigError) as cfg_err:
        load_reference_weights(build_model("aasist-xs"), unexpected, "aasist-xs")
    _assert_one_line(cfg_err.value, "aasist-xs")


@needs_weights
def test_checkpoint_of_the_other_model_is_refused() -> None:
    model = build_model("aasist-l", num_classes=2, num_samples=64600)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError) as err:
        load_reference_weights(model, REFERENCE_DIR / "AASIST.pth", "aasist-l")
    _assert_one_line(err.value, "AASIST.pth", "shapes differ", "'pos_S'", "aasist-l")
    # Nothing was loaded.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_aasist_xs_keeps_its_pre_activation_blocks() -> None:
    # The published models' blocks leave ``pre`` unread; aasist-xs, never published, runs it
    # (the model its measured results came from): its BN running statistics move in training.
    torch.manual_seed(0)

    def pre_mean(net: torch.nn.Module) -> torch.Tensor:
        return net.state_dict()["encoder.1.pre.0.running_mean"].clone()

    model = build_model("aasist-xs", num_classes=2, num_samples=4000).train()
    before = pre_mean(model)
    model(torch.randn(2, 4000))
    assert not torch.equal(pre_mean(model), before)
    published = build_model("aasist-l", num_classes=2, num_samples=16000).train()
    before = pre_mean(published)
    published(torch.randn(2, 16000))
    assert torch.equal(pre_mean(published), before)
