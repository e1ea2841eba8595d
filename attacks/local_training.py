"""A client's local training, replayed differentiably inside the attack.

A FedAvg client does not share a gradient: it runs ``K`` optimiser steps, each at the
weights the previous step left, and shares the result. Matching that update as one averaged
gradient (Geiping et al. 2020's approximation, ``update_model="averaged"``) ignores that
every step's gradient is taken at different weights. Dimitrov, Balunović, Konstantinov,
Vechev, "Data Leakage in Federated Averaging" (TMLR 2022) instead replay the client's local
training inside the attack, with the learning rate, epochs and batch size the server knows,
and match the simulated weight change to the captured one; Geiping et al. (§ multiple local
steps) and, for speech, Dang et al. (arXiv 2104.07815) attack a few local steps the same way.
:func:`replay_update` is that replay for candidate clips ``u`` ``(N, *input_shape)``: the
same steps, batches, optimiser (SGD with heavy-ball momentum, weight decay, FedProx's
proximal term and per-step norm clipping as :func:`fedspeech.training.local.train_local`
does them; or Adam), written with :mod:`torch.func` so that it runs under ``vmap`` and is
differentiated through in ``u``.

Which candidate clip goes in which step is :attr:`LocalTraining.batches`, slot indices
into ``u``. Within one pass over the data the slots are interchangeable (the candidates are
free variables), so one epoch needs no order; over several epochs the batches regroup the
clips, and the capture's ``training["batch_order"]`` (the client's seeded order, written as
slots numbered by first visit) says how. Without it every epoch is assumed to repeat the
first one's batches, and :attr:`LocalTraining.order_known` is False.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad
from torch.nn import functional as F

__all__ = ["OPTIMIZERS", "UPDATE_MODELS", "LocalTraining", "replay_update", "sequential_batches"]

#: How stage 1 models an update of several local steps: replayed step by step
#: (``"unrolled"``) or as one averaged gradient (``"averaged"``).
UPDATE_MODELS = ("unrolled", "averaged")

#: Local optimisers :func:`replay_update` replays.
OPTIMIZERS = ("sgd", "adam")

_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, which the clients use
_ADAM_EPS = 1e-8
_CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s


@dataclass(frozen=True)
class LocalTraining:
    """The local training behind one captured update, as the attacker replays it.

    Attributes
    ----------
    batches : tuple[tuple[int, ...], ...]
        Per local step, the slots (indices into the ``N`` candidate clips) it trained on.
    lr : float
        The round's learning rate.
    scale : float
        What the weight change is divided by to give the target's gradient units,
        ``lr * effective_steps`` (the averaged model's scale, so both models match the
        same reference).
    optimizer : str
        ``"sgd"`` or ``"adam"`` (:data:`OPTIMIZERS`).
    momentum : float
        SGD's heavy-ball momentum (PyTorch's form, ``v <- m v + g``).
    weight_decay : float
        L2 weight decay added to each step's gradient (``g + wd * w``).
    proximal_mu : float
        FedProx's ``mu / 2 * ||w - w_global||^2`` added to each step's loss.
    clip_norm : float
        Each step's gradient scaled down to at most this L2 norm (0: not clipped).
    order_known : bool
        True when the batches are the client's recorded order, or when the order cannot
        matter (one pass over the data); False when later epochs were assumed to repeat
        the first.

    Examples
    --------
    >>> plan = LocalTraining(batches=((0,), (1,)), lr=0.1, scale=0.2)
    >>> plan.clips, plan.steps
    (2, 2)
    """

    batches: tuple[tuple[int, ...], ...]
    lr: float
    scale: float
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    proximal_mu: float = 0.0
    clip_norm: float = 0.0
    order_known: bool = True

    def __post_init__(self) -> None:
        if not self.batches or any(len(b) == 0 for b in self.batches):
            raise ValueError("batches must hold at least one non-empty step")
        if self.optimizer not in OPTIMIZERS:
            known = ", ".join(OPTIMIZERS)
            raise ValueError(f"optimizer must be one of {known}, got {self.optimizer!r}")
        if not self.lr > 0 or not self.scale > 0:
            raise ValueError(f"lr and scale must be positive, got {self.lr} and {self.scale}")

    @property
    def steps(self) -> int:
        """Local steps ``K``."""
        return len(self.batches)

    @property
    def clips(self) -> int:
        """Distinct candidate clips ``N`` the steps use (slots ``0 .. N - 1``)."""
        return max(max(b) for b in self.batches) + 1


def sequential_batches(
    clips: int, batch_size: int, epochs: int = 1, steps: int = 0
) -> tuple[tuple[int, ...], ...]:
    """Slots per step when the order is not recorded: every epoch in the first one's order.

    ``steps`` > 0 gives exactly that many steps, cycling through the clips; otherwise
    ``epochs`` passes of ``ceil(clips / batch_size)`` steps (the last batch may be smaller),
    as :func:`fedspeech.training.local.local_batches` cuts them.

    Examples
    --------
    >>> sequential_batches(5, 2)
    ((0, 1), (2, 3), (4,))
    >>> sequential_batches(3, 1, steps=4)
    ((0,), (1,), (2,), (0,))
    """
    one_pass = [tuple(range(s, min(s + batch_size, clips))) for s in range(0, clips, batch_size)]
    if steps > 0:
        return tuple(one_pass[k % len(one_pass)] for k in range(steps))
    return tuple(one_pass * max(epochs, 1))


def replay_update(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    buffers: Mapping[str, torch.Tensor],
    u: torch.Tensor,
    y: torch.Tensor,
    plan: LocalTraining,
    keep: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The client's update on candidate clips ``u``, in the target's gradient units.

    Runs ``plan.steps`` optimiser steps from ``params`` (the global weights), step ``k`` on
    the clips ``u[plan.batches[k]]`` with labels ``y[plan.batches[k]]``, and returns
    ``(params - w_K) / plan.scale`` per parameter: for one plain SGD step, the gradient
    itself. Pure :mod:`torch.func`, so it runs under ``vmap`` and ``grad`` over ``u``; the
    graph of every step is kept for that outer gradient (memory grows linearly in ``K``).

    Parameters
    ----------
    model : nn.Module
        The architecture, called through :func:`torch.func.functional_call`.
    params : Mapping[str, torch.Tensor]
        Global weights of the trained parameters.
    buffers : Mapping[str, torch.Tensor]
        The model's buffers (passed through unchanged).
    u : torch.Tensor
        ``(N, *input_shape)`` candidate clips.
    y : torch.Tensor
        ``(N,)`` int64 labels.
    plan : LocalTraining
        The client's steps and optimiser.
    keep : torch.Tensor or None
        A dual-path step's expected second-path multiplier
        (:func:`attacks.target.specaugment_keep`): each step's loss is then the mean of the
        clean and the masked path's.

    Returns
    -------
    dict[str, torch.Tensor]
        Same names and shapes as ``params``.

    Examples
    --------
    >>> from torch import nn
    >>> lin = nn.Linear(3, 2)
    >>> w = {k: v.detach() for k, v in lin.named_parameters()}
    >>> u, y = torch.randn(2, 3), torch.tensor([0, 1])
    >>> one = replay_update(lin, w, {}, u, y, LocalTraining(((0, 1),), lr=0.1, scale=0.1))
    >>> g = torch.autograd.grad(F.cross_entropy(lin(u), y), list(lin.parameters()))
    >>> bool(torch.allclose(one["weight"], g[0], atol=1e-6))
    True
    """
    names = list(params)
    anchor = dict(params)
    w = dict(params)
    first: dict[str, torch.Tensor] = {}
    second: dict[str, torch.Tensor] = {}

    def step_loss(p: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, {**p, **buffers}, (x,))
        loss = F.cross_entropy(out, t)
        if keep is not None:
            loss = 0.5 * (
                loss + F.cross_entropy(functional_call(model, {**p, **buffers}, (x * keep,)), t)
            )
        if plan.proximal_mu > 0:
            prox = sum(((p[n] - anchor[n]) ** 2).sum() for n in names)
            loss = loss + 0.5 * plan.proximal_mu * prox
        return loss

    step_grad = grad(step_loss)
    for k, slots in enumerate(plan.batches):
        x, t = _take(u, y, slots)
        g = step_grad(w, x, t)
        if plan.clip_norm > 0:
            total = torch.sqrt(sum(g[n].square().sum() for n in names))
            coef = torch.clamp(plan.clip_norm / (total + _CLIP_EPS), max=1.0)
            g = {n: g[n] * coef for n in names}
        if plan.weight_decay:
            g = {n: g[n] + plan.weight_decay * w[n] for n in names}
        if plan.optimizer == "adam":
            w = _adam(w, g, first, second, k + 1, plan.lr)
        else:
            if plan.momentum:
                # PyTorch's SGD: the first step's buffer is the gradient itself.
                first = {n: g[n] if k == 0 else plan.momentum * first[n] + g[n] for n in names}
                g = first
            w = {n: w[n] - plan.lr * g[n] for n in names}
    return {n: (anchor[n] - w[n]) / plan.scale for n in names}


def _take(
    u: torch.Tensor, y: torch.Tensor, slots: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's clips: a slice when its slots are consecutive (cheaper under vmap)."""
    lo, hi = slots[0], slots[-1] + 1
    if list(slots) == list(range(lo, hi)):
        return u[lo:hi], y[lo:hi]
    idx = torch.tensor(list(slots), device=u.device)
    return u.index_select(0, idx), y.index_select(0, idx)


def _adam(
    w: dict[str, torch.Tensor],
    g: dict[str, torch.Tensor],
    first: dict[str, torch.Tensor],
    second: dict[str, torch.Tensor],
    step: int,
    lr: float,
) -> dict[str, torch.Tensor]:
    """One step of ``torch.optim.Adam`` (default betas and eps), moments updated in place."""
    b1, b2 = _BETAS
    c1, c2 = 1.0 - b1**step, 1.0 - b2**step
    out = {}
    for n in w:
        first[n] = (1 - b1) * g[n] if step == 1 else b1 * first[n] + (1 - b1) * g[n]
        second[n] = (
            (1 - b2) * g[n].square() if step == 1 else b2 * second[n] + (1 - b2) * g[n].square()
        )
        # sqrt has an infinite slope at 0 (an entry whose gradient was exactly 0 so far): the
        # floor changes the value by at most 1e-15 and keeps the outer gradient finite.
        root = torch.sqrt(second[n].clamp(min=1e-30))
        out[n] = w[n] - (lr / c1) * first[n] / (root / c2**0.5 + _ADAM_EPS)
    return out
