"""Local training steps of one client, in plain PyTorch.

The batches a client uses in a round are a pure function of ``(seed, round, client)``, so
the simulator can write the ground truth of a captured update without the client ever
telling the server which clips it used.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def local_batches(
    indices: np.ndarray,
    *,
    seed: int,
    server_round: int,
    client_id: int,
    batch_size: int,
    epochs: int = 1,
    steps: int = 0,
) -> list[np.ndarray]:
    """The mini-batches (corpus positions) a client trains on in one round.

    Parameters
    ----------
    indices : np.ndarray
        ``(n,)`` the client's training clips (corpus positions).
    seed, server_round, client_id : int
        Together they seed the shuffle, so the server can replay it.
    batch_size : int
        Clips per step (the last batch of an epoch may be smaller).
    epochs : int
        Passes over the data; ignored when ``steps`` > 0.
    steps : int
        Exact number of steps, cycling through reshuffled epochs as needed.

    Returns
    -------
    list[np.ndarray]
        One ``(b,)`` array per local step, sorted (memory-mapped reads stay sequential).
    """
    rng = np.random.default_rng([seed, server_round, client_id])
    batches: list[np.ndarray] = []
    n = len(indices)
    if n == 0:
        return batches
    if steps > 0:
        # Exactly ``steps`` batches, reshuffling after every full pass.
        while True:
            order = indices[rng.permutation(n)]
            for start in range(0, n, batch_size):
                batches.append(np.sort(order[start : start + batch_size]))
                if len(batches) == steps:
                    return batches
    for _ in range(epochs):
        order = indices[rng.permutation(n)]
        for start in range(0, n, batch_size):
            batches.append(np.sort(order[start : start + batch_size]))
    return batches


def batch_slots(batches: list[np.ndarray]) -> list[list[int]]:
    """``batches`` of corpus positions as slots numbered by first visit.

    What an attacker replaying the steps needs to know (which clips share a step, and which
    come back in later epochs), without the clips themselves.

    Examples
    --------
    >>> batch_slots([np.array([7, 3]), np.array([5]), np.array([3, 5]), np.array([7])])
    [[0, 1], [2], [1, 2], [0]]
    """
    slot: dict[int, int] = {}
    return [[slot.setdefault(int(p), len(slot)) for p in b] for b in batches]


def local_step_count(clips: int, batch_size: int, epochs: int = 1, steps: int = 0) -> int:
    """How many batches :func:`local_batches` gives a client of ``clips`` clips.

    Examples
    --------
    >>> local_step_count(450, 16, epochs=2), local_step_count(450, 16, steps=10)
    (58, 10)
    """
    if clips == 0:
        return 0
    return steps if steps > 0 else epochs * -(-clips // batch_size)


def seed_torch(seed: int, server_round: int, client_id: int) -> None:
    """Seed torch's global generator from ``(seed, round, client)``.

    A client's random draws inside torch (dropout masks, random initialisations) then
    depend on who trains in which round only, not on what the worker process ran before,
    so a run repeats exactly whichever Ray worker picks up which client.
    """
    state = np.random.SeedSequence([seed, server_round, client_id]).generate_state(1)
    torch.manual_seed(int(state[0]))


@dataclass
class LocalResult:
    """What local training reports back."""

    num_examples: int
    loss: float
    steps: int


def train_local(
    model: nn.Module,
    features: np.ndarray,
    labels: np.ndarray,
    batches: list[np.ndarray],
    *,
    lr: float,
    momentum: float = 0.0,
    proximal_mu: float = 0.0,
    clip_norm: float = 0.0,
) -> LocalResult:
    """Run SGD over ``batches`` in place on ``model``.

    Parameters
    ----------
    model : nn.Module
        Starts at the global weights; updated in place.
    features : np.ndarray
        ``(N, F, T)`` float32 features of the whole corpus (memory-mapped).
    labels : np.ndarray
        ``(N,)`` int64.
    batches : list[np.ndarray]
        Corpus positions per step, from :func:`local_batches`.
    proximal_mu : float
        FedProx's proximal term ``mu/2 ‖w − w_global‖²`` (0 disables it).
    clip_norm : float
        Scale each step's gradient down to at most this L2 norm over all parameters
        (0 disables it). One client whose loss spikes then takes a bounded step instead
        of throwing the global model away (Pascanu et al., "On the difficulty of training
        recurrent neural networks", 2013).
    """
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    total, seen = 0.0, 0
    for batch in batches:
        x = torch.from_numpy(np.ascontiguousarray(features[batch]))
        y = torch.from_numpy(np.ascontiguousarray(labels[batch]))
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        total += float(loss.detach()) * len(batch)
        seen += len(batch)
        if proximal_mu > 0:
            prox = sum(
                ((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True)
            )
            loss = loss + 0.5 * proximal_mu * prox
        loss.backward()
        if clip_norm > 0:
            nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        opt.step()
    return LocalResult(num_examples=seen, loss=total / max(seen, 1), steps=len(batches))


def compute_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradient of the mean cross-entropy over one batch, by parameter name.

    This is what a client shares with ``--share gradient`` (FedSGD): one local step's
    gradient at the global weights.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, F, T)`` features.
    y : torch.Tensor
        ``(B,)`` int64 labels.
    """
    return gradient_and_loss(model, x, y)[0]


def gradient_and_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[dict[str, torch.Tensor], float]:
    """:func:`compute_gradient` and the loss it was taken of, from one forward pass."""
    model.train()
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    names = [n for n, _ in model.named_parameters()]
    grads = torch.autograd.grad(loss, [p for _, p in model.named_parameters()])
    return {n: g.detach() for n, g in zip(names, grads, strict=True)}, float(loss.detach())


def apply_gradient(
    weights: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor], lr: float
) -> dict[str, torch.Tensor]:
    """``w − lr·g`` for every weight that has a gradient; other entries pass through."""
    return {k: (w - lr * grads[k]) if k in grads else w for k, w in weights.items()}


#: Inputs per forward pass when evaluating. Small on purpose: the activations of a batch
#: of 512 keyword clips take ~160 MB, which the allocator maps and unmaps every batch, and
#: the page faults then cost more than the convolutions (``benchmarks/bench_eval_batch.py``
#: prints both, and checks the logits are the same).
EVAL_BATCH = 64


def predict(
    model: nn.Module, inputs: np.ndarray, batch_size: int = EVAL_BATCH, *, workers: int = 1
) -> torch.Tensor:
    """Logits ``(N, C)`` of ``model`` on ``inputs`` ``(N, ...)``, in eval mode, no gradients.

    Parameters
    ----------
    batch_size : int
        Inputs per forward pass (:data:`EVAL_BATCH`).
    workers : int
        Threads that run the forward passes side by side. The batches are the same whatever
        ``workers`` is, and each is computed as one call would compute it, so the logits do
        not depend on it; with one torch thread each, ``workers`` threads use as many cores
        (a simulation's server evaluates while its clients are idle).

    Examples
    --------
    >>> from fedspeech.models import build_model
    >>> m = build_model("kws-cnn")
    >>> x = np.random.default_rng(0).standard_normal((5, 32, 32)).astype(np.float32)
    >>> torch.equal(predict(m, x, 2), predict(m, x, 2, workers=2))
    True
    """
    model.eval()

    def forward(start: int) -> torch.Tensor:
        # no_grad is per thread: set it in the thread that runs the pass.
        with torch.no_grad():
            batch = np.ascontiguousarray(inputs[start : start + batch_size])
            return model(torch.from_numpy(batch))

    starts = range(0, len(inputs), batch_size)
    if workers > 1 and len(starts) > 1:
        with ThreadPoolExecutor(max_workers=min(workers, len(starts))) as pool:
            parts = list(pool.map(forward, starts))
    else:
        parts = [forward(start) for start in starts]
    return torch.cat(parts) if parts else torch.zeros(0, 0)


def loss_and_accuracy(logits: torch.Tensor, labels: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``(N, C)`` logits against ``(N,)`` labels."""
    n = len(labels)
    if n == 0:
        return 0.0, 0.0
    y = torch.from_numpy(np.ascontiguousarray(labels))
    loss = float(F.cross_entropy(logits, y, reduction="sum"))
    return loss / n, int((logits.argmax(1) == y).sum()) / n


def evaluate(
    model: nn.Module, features: np.ndarray, labels: np.ndarray, batch_size: int = EVAL_BATCH
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(features, labels)``."""
    return loss_and_accuracy(predict(model, features, batch_size), labels)
