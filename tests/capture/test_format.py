from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedspeech.capture import Capture, CaptureFormatError, load_capture, save_capture


def make_capture() -> Capture:
    g = {"a.weight": torch.randn(3, 4), "a.bias": torch.randn(3)}
    s = {k: torch.randn_like(v) for k, v in g.items()}
    return Capture(
        kind="gradient",
        server_round=2,
        client_id=5,
        num_examples=1,
        global_weights=g,
        shared=s,
        model="kws-cnn",
        frontend="mel",
        model_kwargs={"num_classes": 3},
        training={"lr": 0.1},
    )


def test_round_trip(tmp_path: Path) -> None:
    cap = make_capture()
    path = save_capture(cap, tmp_path / "c.safetensors")
    back = load_capture(path)
    assert (back.kind, back.server_round, back.client_id, back.num_examples) == (
        "gradient",
        2,
        5,
        1,
    )
    assert list(back.global_weights) == list(cap.global_weights)
    for k in cap.shared:
        torch.testing.assert_close(back.shared[k], cap.shared[k])
        torch.testing.assert_close(back.global_weights[k], cap.global_weights[k])
    assert back.model_kwargs == {"num_classes": 3} and back.training == {"lr": 0.1}
    assert not list(tmp_path.glob("*.tmp")), "temporary file left behind"


def test_truncated_file(tmp_path: Path) -> None:
    path = save_capture(make_capture(), tmp_path / "c.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CaptureFormatError, match="not a readable safetensors"):
        load_capture(path)


def test_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    torch.save({"x": torch.zeros(2)}, path)  # a pickle archive
    with pytest.raises(CaptureFormatError):
        load_capture(path)


def test_safetensors_without_metadata(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "c.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(CaptureFormatError, match="no fedspeech capture metadata"):
        load_capture(path)


def test_oversized_metadata_is_refused(tmp_path: Path) -> None:
    cap = make_capture()
    cap.training = {"note": "x" * (2**20 + 1)}
    path = save_capture(cap, tmp_path / "c.safetensors")
    with pytest.raises(CaptureFormatError, match="bytes of metadata, more than"):
        load_capture(path)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_classes": 10**9},  # the attack would allocate a 10⁹-row output layer
        {"num_samples": 16_000 * 3600},
        {"num_classes": 10, "input_shape": [32, 100_000]},
        {"num_classes": -1},
        {"num_classes": float("nan")},
        {"num_classes": {"nested": 1}},
        {"activation": "x" * 1000},
    ],
)
def test_unbounded_model_settings_are_refused(tmp_path: Path, kwargs: dict[str, object]) -> None:
    cap = make_capture()
    cap.model_kwargs = kwargs
    path = save_capture(cap, tmp_path / "c.safetensors")
    with pytest.raises(CaptureFormatError, match="model setting"):
        load_capture(path)


def test_bounded_model_settings_load(tmp_path: Path) -> None:
    cap = make_capture()
    cap.model_kwargs = {"num_classes": 10, "input_shape": [32, 32], "activation": "relu"}
    cap.model_kwargs.update({"num_samples": 64_000, "dropout": False})
    back = load_capture(save_capture(cap, tmp_path / "c.safetensors"))
    assert back.model_kwargs == cap.model_kwargs
