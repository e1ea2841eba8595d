"""What a client does to its update before sending it: clipping, noise, pruning, quantisation.

Every defense acts on the *weight update* a reply stands for, ``u = w_reply - w_global``; a
shared gradient ``g`` stands for the update ``u = -lr * g`` of the step it would take, so
one clip bound ``C`` and one noise scale mean the same thing whatever the client shares.
Integer tensors (BatchNorm's step counters) are sent as they are: they count steps, not
speech.

The order is that of a private, compressed upload: clip to ``C`` (``--dp central``,
``local``), add Gaussian noise of standard deviation ``Z * C`` (``local``; ``central``
leaves the noise to the server), zero the fraction ``P`` of entries of smallest magnitude,
quantise each tensor to ``2**B`` levels. Clipping is Flower's ``FlatClip`` (McMahan et al.,
"Learning differentially private recurrent language models", ICLR 2018): one scale for
the whole update. Flower's client mods (``fixedclipping_mod``, ``LocalDpMod``) do the first
two steps on weights only; they are not used because (1) they treat every reply as weights,
so a shared gradient would be clipped as ``g - w``; (2) they scale integer buffers in
place, which numpy refuses for AASIST's ``num_batches_tracked``; (3) they draw noise from
numpy's global generator, unseeded in a Ray worker, so a run would not repeat. Here the
noise comes from a generator seeded by ``(seed, round, client)``.

Examples
--------
>>> import torch
>>> d = Defense(dp="local", clip=1.0, noise=0.0)
>>> g = {"w": torch.zeros(4)}
>>> sent = defend_reply(g, {"w": torch.full((4,), 3.0)}, "update", 0.1, d, seed=(0, 1, 0))
>>> round(float(sent["w"].norm()), 6)
1.0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Defense",
    "add_noise",
    "clip_update",
    "defend_reply",
    "prune_update",
    "quantize_update",
]


@dataclass(frozen=True)
class Defense:
    """The defense settings of a run (``fedspeech simulate --dp ... --prune-ratio ...``).

    Attributes
    ----------
    dp : str
        ``"none"``, ``"central"``, ``"local"`` or ``"sgd"``.
    clip : float or None
        ``C``: the L2 bound of an update (central, local) or of one sample's gradient (sgd).
    noise : float
        ``Z``: the noise multiplier (standard deviation ``Z * C``).
    prune_ratio : float
        ``P``: the fraction of update entries zeroed.
    quantize_bits : int or None
        ``B``: bits per entry of the sent update; None sends float32.
    secagg : bool
        The server learns only the round's aggregate.
    delta : float
        ``delta`` of the reported ``epsilon``.
    """

    dp: str = "none"
    clip: float | None = None
    noise: float = 0.0
    prune_ratio: float = 0.0
    quantize_bits: int | None = None
    secagg: bool = False
    delta: float = 1e-5

    @property
    def active(self) -> bool:
        """Whether the client or the server changes anything."""
        return self != Defense(delta=self.delta)

    @property
    def client_clips(self) -> bool:
        """Whether the client clips its whole update (central and local DP)."""
        return self.dp in ("central", "local")

    def describe(self) -> str:
        """One line for reports, e.g. ``local DP (C=1, Z=0.5), pruned 90 %``.

        Examples
        --------
        >>> Defense().describe()
        'none'
        >>> Defense(dp="central", clip=2.0, noise=1.0, secagg=True).describe()
        'central DP (C=2, Z=1), secure aggregation'
        """
        parts = []
        if self.dp != "none":
            parts.append(f"{self.dp} DP (C={self.clip:g}, Z={self.noise:g})")
        if self.prune_ratio > 0:
            parts.append(f"pruned {100 * self.prune_ratio:g} %")
        if self.quantize_bits is not None:
            parts.append(f"quantised to {self.quantize_bits} bits")
        if self.secagg:
            parts.append("secure aggregation")
        return ", ".join(parts) or "none"

    def as_meta(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (capture metadata, ``metrics.json``)."""
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any] | None) -> Defense:
        """Inverse of :meth:`as_meta`; ``None`` or ``{}`` is no defense."""
        if not meta:
            return cls()
        known = {k: meta[k] for k in cls.__dataclass_fields__ if k in meta}
        return cls(**known)


def _floats(tensors: Mapping[str, Tensor]) -> list[str]:
    return [k for k, v in tensors.items() if v.is_floating_point()]


def clip_update(update: Mapping[str, Tensor], clip: float) -> tuple[dict[str, Tensor], float]:
    """Scale ``update`` so that its global L2 norm is at most ``clip``.

    Returns
    -------
    clipped : dict
        The scaled tensors (a copy).
    norm : float
        The norm before clipping.

    Examples
    --------
    >>> import torch
    >>> out, norm = clip_update({"a": torch.tensor([3.0, 4.0])}, 1.0)
    >>> norm, out["a"].tolist()
    (5.0, [0.6000000238418579, 0.800000011920929])
    """
    norm = float(sum(float(v.double().square().sum()) for v in update.values()) ** 0.5)
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    return {k: v * scale for k, v in update.items()}, norm


def add_noise(
    update: Mapping[str, Tensor], std: float, generator: torch.Generator
) -> dict[str, Tensor]:
    """``update`` plus independent Gaussian noise of standard deviation ``std`` per entry."""
    if std == 0:
        return dict(update)
    return {
        k: v + std * torch.randn(v.shape, generator=generator, dtype=v.dtype)
        for k, v in update.items()
    }


def prune_update(update: Mapping[str, Tensor], ratio: float) -> dict[str, Tensor]:
    """Zero the ``round(ratio * n)`` entries of smallest magnitude over the whole update.

    Ties are broken by position, so exactly that many entries are zeroed (Zhu et al., "Deep
    Leakage from Gradients", NeurIPS 2019, § 5: pruning as a defense).

    Examples
    --------
    >>> import torch
    >>> prune_update({"a": torch.tensor([1.0, -4.0, 2.0, 3.0])}, 0.5)["a"].tolist()
    [0.0, -4.0, 0.0, 3.0]
    """
    keys = list(update)
    sizes = [update[k].numel() for k in keys]
    flat = torch.cat([update[k].reshape(-1) for k in keys])
    k_zero = int(round(ratio * flat.numel()))
    if k_zero == 0:
        return dict(update)
    order = torch.argsort(flat.abs(), stable=True)
    flat = flat.clone()
    flat[order[:k_zero]] = 0
    out, start = {}, 0
    for k, n in zip(keys, sizes, strict=True):
        out[k] = flat[start : start + n].reshape(update[k].shape)
        start += n
    return out


def quantize_update(
    update: Mapping[str, Tensor], bits: int, keep_zeros: bool = False
) -> dict[str, Tensor]:
    """Each tensor uniformly quantised between its minimum and maximum to ``2**bits`` levels.

    Rounds to the nearest level (deterministic), and sends the dequantised values: at most
    ``2**bits`` distinct values per tensor. With ``keep_zeros`` the levels span the nonzero
    entries and zeros stay zero (a pruned update: one more value, the zero).

    Examples
    --------
    >>> import torch
    >>> quantize_update({"a": torch.tensor([0.0, 0.2, 0.9, 1.0])}, 1)["a"].tolist()
    [0.0, 0.0, 1.0, 1.0]
    """
    levels = 2**bits - 1
    out = {}
    for k, v in update.items():
        mask = v != 0 if keep_zeros else torch.ones_like(v, dtype=torch.bool)
        if not bool(mask.any()):
            out[k] = v.clone()
            continue
        vals = v[mask].double()
        lo, hi = vals.min(), vals.max()
        if float(hi - lo) == 0:
            out[k] = v.clone()
            continue
        step = (hi - lo) / levels
        q = lo + torch.round((vals - lo) / step) * step
        res = v.clone()
        res[mask] = q.to(v.dtype)
        out[k] = res
    return out


def noise_generator(seed: Sequence[int]) -> torch.Generator:
    """A torch generator seeded by a tuple of integers (run seed, round, client)."""
    state = np.random.SeedSequence([int(s) for s in seed] + [19]).generate_state(2)
    gen = torch.Generator()
    gen.manual_seed(int(state[0]) << 32 | int(state[1]))
    return gen


def defend_reply(
    global_weights: Mapping[str, Tensor],
    reply: Mapping[str, Tensor],
    share: str,
    lr: float,
    defense: Defense,
    seed: Sequence[int],
) -> dict[str, Tensor]:
    """What a client sends instead of ``reply`` under ``defense``.

    Parameters
    ----------
    global_weights : mapping
        The weights the client received (a state dict).
    reply : mapping
        Its undefended reply: new weights (``share="update"``, a state dict) or a gradient
        (``share="gradient"``, parameters only).
    share : str
        ``"update"`` or ``"gradient"``.
    lr : float
        The client learning rate (a gradient stands for the update ``-lr * g``).
    defense : Defense
        The settings; DP-SGD (``dp="sgd"``) and secure aggregation act elsewhere.
    seed : sequence of int
        Seeds the noise: ``(run seed, round, client)``.

    Returns
    -------
    dict
        The reply to send, same keys, shapes and dtypes; integer tensors unchanged.
    """
    names = _floats(reply)
    if share == "gradient":
        update = {k: -lr * reply[k] for k in names}
    else:
        update = {k: reply[k] - global_weights[k] for k in names}
    # Untouched replies go out as they came: w + (r - w) is not always r in float32.
    changed = False
    if defense.client_clips:
        assert defense.clip is not None
        update, norm = clip_update(update, defense.clip)
        changed = norm > defense.clip
    if defense.dp == "local" and defense.noise > 0:
        assert defense.clip is not None
        update = add_noise(update, defense.noise * defense.clip, noise_generator(seed))
        changed = True
    if defense.prune_ratio > 0:
        update = prune_update(update, defense.prune_ratio)
        changed = True
    if defense.quantize_bits is not None:
        update = quantize_update(update, defense.quantize_bits, keep_zeros=defense.prune_ratio > 0)
        changed = True
    if not changed:
        return dict(reply)
    out = dict(reply)
    for k in names:
        if share == "gradient":
            out[k] = (update[k] / -lr).to(reply[k].dtype)
        else:
            out[k] = (global_weights[k] + update[k]).to(reply[k].dtype)
    return out
