"""Batch label counting from the last layer (Geng et al., "Towards general deep leakage in
federated learning", 2021).

For the mean cross-entropy over a batch of ``B`` samples, the last layer's bias gradient is

    g_b[j] = (1/B) * sum_i (p_ij - y_ij) = (S_j - n_j) / B,

where ``n_j`` is the number of samples of class ``j`` and ``S_j = sum_i p_ij`` the batch's
summed softmax output. So ``n_j = S_j - B g_b[j]``; everything hinges on estimating ``S``.
Geng et al. estimate it by running the global model on dummy inputs ("dummy"). The default
("proxy") estimates instead the batch's mean penultimate activation from the gradient
itself: for every class absent from the batch, row ``j`` of the weight gradient is
``(1/B) sum_i p_ij h_i``, so ``sum_{j: g_b[j] > 0} G_W[j] / sum_{j: g_b[j] > 0} g_b[j]`` is a
convex combination of the ``h_i`` (the ratio trick of Phong et al. 2017 and iDLG applied
to a batch), and ``S = B softmax(W h + b)``. Counts are then rounded to integers that sum
to ``B`` (largest remainder), never below what the sign of ``g_b`` proves: a class with a
negative bias gradient is present, at least ``floor(-B g_b[j]) + 1`` times, as ``S_j > 0``.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from attacks.labels.lastlayer import last_linear
from attacks.target import AttackTarget
from fedspeech.errors import ConfigError, FedspeechError

__all__ = ["ESTIMATES", "count_labels", "counts_from_bias"]

ESTIMATES = ("proxy", "dummy")


def counts_from_bias(
    bias_grad: torch.Tensor, softmax_sum: torch.Tensor, batch: int
) -> torch.Tensor:
    """Integer class counts from a bias gradient and an estimate of ``S = sum_i p_i``.

    Parameters
    ----------
    bias_grad : torch.Tensor
        ``(C,)`` gradient of the mean loss w.r.t. the last bias.
    softmax_sum : torch.Tensor
        ``(C,)`` estimated summed softmax output of the batch (sums to ``batch``).
    batch : int
        ``B``.

    Returns
    -------
    torch.Tensor
        ``(C,)`` int64 counts summing to ``B``.

    Examples
    --------
    >>> import torch
    >>> s = torch.full((3,), 2 / 3)  # B=2 samples, uniform softmax: S_j = 2/3
    >>> g = (s - torch.tensor([0.0, 2.0, 0.0])) / 2  # both samples are class 1
    >>> counts_from_bias(g, s, 2).tolist()
    [0, 2, 0]
    """
    g = bias_grad.detach().double().cpu()
    est = softmax_sum.detach().double().cpu() - batch * g
    neg = -batch * g
    # A negative entry proves presence: S_j > 0, hence n_j > -B g_b[j].
    lower = torch.where(neg > 1e-9, torch.floor(neg) + 1, torch.zeros_like(neg))
    counts = torch.maximum(torch.floor(est).clamp(min=0), lower)
    if int(lower.sum()) > batch:
        # Inconsistent with an exact mean gradient (e.g. a noisy update estimate).
        lower = torch.zeros_like(lower)
        counts = torch.floor(est).clamp(min=0)
    while int(counts.sum()) < batch:
        counts[int(torch.argmax(est - counts))] += 1
    while int(counts.sum()) > batch:
        slack = est - counts
        slack[counts <= lower] = math.inf
        counts[int(torch.argmin(slack))] -= 1
    return counts.to(torch.long)


def _proxy_softmax(target: AttackTarget, weight: str, bias: str) -> torch.Tensor:
    """``(C,)`` softmax at the gradient-derived mean penultimate activation.

    For an update of several local steps replayed by the attack (``target.local_training``)
    the softmax drifts as the client trains: the mean of the softmax at the global weights and
    at the client's final weights (``w_global - scale * grads``) stands for the steps' mean,
    Geng et al.'s interpolation for FedAvg updates.
    """
    gw, gb = target.grads[weight].double(), target.grads[bias].double()
    absent = gb > 0
    if not bool(absent.any()):
        return torch.full_like(gb, 1.0 / gb.numel())
    h = gw[absent].sum(0) / gb[absent].sum()
    w0, b0 = target.params[weight].double(), target.params[bias].double()
    probs = F.softmax(w0 @ h + b0, dim=0)
    plan = target.local_training
    if plan is None:
        return probs
    w1, b1 = w0 - plan.scale * gw, b0 - plan.scale * gb
    return 0.5 * (probs + F.softmax(w1 @ h + b1, dim=0))


@torch.no_grad()
def _dummy_softmax(target: AttackTarget, n: int, seed: int) -> torch.Tensor:
    """``(C,)`` mean softmax of the global model on standard-normal dummy features."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *target.input_shape), generator=gen)
    device = next(iter(target.params.values())).device
    return F.softmax(target.model(x.to(device)).double(), dim=1).mean(0)


def count_labels(
    target: AttackTarget, *, estimate: str = "proxy", n_dummy: int = 64, seed: int = 0
) -> torch.Tensor:
    """Label multiset of a batch gradient (Geng et al. 2021 bias counting).

    Parameters
    ----------
    target : AttackTarget
        Any batch size; the last linear layer must have a bias.
    estimate : str
        How the batch's summed softmax is estimated: ``"proxy"`` (from the gradient, see
        the module docstring) or ``"dummy"`` (Geng et al.: the model on ``n_dummy``
        standard-normal features, seeded by ``seed``).

    Returns
    -------
    torch.Tensor
        ``(B,)`` int64 labels in ascending order (which sample has which label is unknown).
    """
    if estimate not in ESTIMATES:
        raise ConfigError(f"unknown softmax estimate {estimate!r}; known: {', '.join(ESTIMATES)}")
    weight, bias = last_linear(target.grads)
    if bias is None:
        raise FedspeechError(
            f"label method 'count' needs a bias in the last layer ({weight} has none)"
        )
    b = target.batch_size
    if estimate == "proxy":
        probs = _proxy_softmax(target, weight, bias)
    else:
        probs = _dummy_softmax(target, n_dummy, seed)
    counts = counts_from_bias(target.grads[bias], b * probs, b)
    return torch.repeat_interleave(torch.arange(counts.numel()), counts)
