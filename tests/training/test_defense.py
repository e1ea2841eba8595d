"""Each defense changes what the client sends exactly as specified."""

from __future__ import annotations

import pytest
import torch

from fedspeech.training.defense import (
    Defense,
    clip_update,
    defend_reply,
    prune_update,
    quantize_update,
)


def _weights(seed: int = 0, n: int = 200_000) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(n, generator=gen),
        "fc.bias": torch.randn(10, generator=gen),
        "bn.num_batches_tracked": torch.tensor(3, dtype=torch.int64),
    }


def _update(glob: dict[str, torch.Tensor], reply: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat(
        [(reply[k] - glob[k]).reshape(-1) for k in glob if glob[k].is_floating_point()]
    )


def _reply(glob: dict[str, torch.Tensor], scale: float = 0.01) -> dict[str, torch.Tensor]:
    step = _weights(seed=1, n=glob["conv.weight"].numel())
    return {
        k: glob[k] + scale * step[k] if glob[k].is_floating_point() else glob[k] + 5 for k in glob
    }


def test_clipped_update_has_norm_at_most_c() -> None:
    glob = _weights()
    reply = _reply(glob)
    assert float(_update(glob, reply).norm()) > 2.0  # the clip is active
    sent = defend_reply(glob, reply, "update", 0.1, Defense(dp="central", clip=2.0), (0, 1, 0))
    assert float(_update(glob, sent).double().norm()) <= 2.0 * (1 + 1e-5)
    # The direction is kept: clipping only scales.
    cos = torch.nn.functional.cosine_similarity(_update(glob, sent), _update(glob, reply), dim=0)
    assert float(cos) > 0.9999


def test_local_noise_has_standard_deviation_z_times_c() -> None:
    glob = _weights()
    reply = {k: v.clone() for k, v in glob.items()}  # a zero update: what is sent is noise
    d = Defense(dp="local", clip=0.5, noise=0.2)
    sent = defend_reply(glob, reply, "update", 0.1, d, (0, 1, 0))
    noise = _update(glob, sent)
    assert float(noise.std()) == pytest.approx(0.2 * 0.5, rel=0.1)
    # Seeded by (seed, round, client): the same again, another client differs.
    again = defend_reply(glob, reply, "update", 0.1, d, (0, 1, 0))
    other = defend_reply(glob, reply, "update", 0.1, d, (0, 1, 1))
    assert torch.equal(sent["conv.weight"], again["conv.weight"])
    assert not torch.equal(sent["conv.weight"], other["conv.weight"])


def test_pruning_zeroes_exactly_the_fraction_p() -> None:
    glob = _weights()
    reply = _reply(glob)
    n = _update(glob, reply).numel()
    for p in (0.2, 0.5, 0.9, 0.99):
        sent = defend_reply(glob, reply, "update", 0.1, Defense(prune_ratio=p), (0, 1, 0))
        zeros = int((_update(glob, sent) == 0).sum())
        assert zeros == round(p * n), p
        # The kept entries are the largest.
        kept = _update(glob, reply)[_update(glob, sent) != 0].abs().min()
        dropped = _update(glob, reply)[_update(glob, sent) == 0].abs().max()
        assert float(kept) >= float(dropped) - 1e-6


def test_quantised_tensors_have_at_most_2_to_the_b_values() -> None:
    glob = _weights()
    reply = _reply(glob)
    grad = {k: v for k, v in reply.items() if v.is_floating_point()}
    for bits in (1, 2, 4, 8):
        # A gradient reply is the quantised update over -lr: one value per level.
        sent = defend_reply(glob, grad, "gradient", 0.1, Defense(quantize_bits=bits), (0, 1, 0))
        for k in grad:
            assert len(torch.unique(sent[k])) <= 2**bits
        if bits <= 4:  # 200,000 normal entries use every level
            assert len(torch.unique(sent["conv.weight"])) == 2**bits
        direct = quantize_update({"a": _update(glob, reply)}, bits)["a"]
        assert len(torch.unique(direct)) <= 2**bits


def test_no_noise_and_a_large_clip_send_the_reply_unchanged() -> None:
    glob = _weights()
    reply = _reply(glob)
    for mode in ("central", "local"):
        d = Defense(dp=mode, clip=1e9, noise=0.0)
        sent = defend_reply(glob, reply, "update", 0.1, d, (0, 1, 0))
        assert all(torch.equal(sent[k], reply[k]) for k in reply), mode


def test_integer_buffers_pass_through() -> None:
    glob = _weights()
    reply = _reply(glob)
    d = Defense(dp="local", clip=0.1, noise=1.0, prune_ratio=0.5, quantize_bits=4)
    sent = defend_reply(glob, reply, "update", 0.1, d, (0, 1, 0))
    assert sent["bn.num_batches_tracked"].dtype == torch.int64
    assert int(sent["bn.num_batches_tracked"]) == int(reply["bn.num_batches_tracked"])
    assert all(sent[k].dtype == reply[k].dtype and sent[k].shape == reply[k].shape for k in reply)


def test_a_gradient_is_defended_as_the_update_it_stands_for() -> None:
    glob = {k: v for k, v in _weights().items() if v.is_floating_point()}
    grad = {
        k: 50 * v for k, v in _weights(seed=2, n=glob["conv.weight"].numel()).items() if k in glob
    }
    lr = 0.1
    sent = defend_reply(
        glob, grad, "gradient", lr, Defense(dp="local", clip=1.0, noise=0.0), (0, 1, 0)
    )
    step = torch.cat([(lr * sent[k]).reshape(-1) for k in grad])
    assert float(step.norm()) == pytest.approx(1.0, rel=1e-5)


def test_clip_update_reports_the_norm_before() -> None:
    out, norm = clip_update({"a": torch.tensor([6.0, 8.0])}, 5.0)
    assert norm == pytest.approx(10.0)
    assert out["a"].tolist() == pytest.approx([3.0, 4.0])
    assert prune_update({"a": torch.tensor([1.0, 2.0])}, 0.0)["a"].tolist() == [1.0, 2.0]


def test_defense_round_trips_through_capture_metadata() -> None:
    d = Defense(dp="local", clip=1.0, noise=0.5, prune_ratio=0.2, quantize_bits=4, secagg=True)
    assert Defense.from_meta(d.as_meta()) == d
    assert not Defense.from_meta(None).active
    assert d.active
