"""Dual-path data-augmented training with gradient alignment (DPDA).

Truong, Liu, Li, Tao, Lee and Chng, "Addressing Gradient Misalignment in Data-Augmented
Training for Robust Speech Deepfake Detection", arXiv:2509.20682 (2025).

Every mini-batch is seen twice: clean (``x``) and augmented (``augment(x)``, e.g. RawBoost).
The gradients of the two cross-entropies with respect to all trainable parameters form a
``(2, P)`` matrix ``J``; an aligner (:mod:`fedspeech.training.aligners`: PCGrad, GradVac,
CAGrad, UPGrad, or ``none`` = their mean) turns it into the step direction, written into
``.grad`` before the optimizer steps. Each step records ``cos(g_clean, g_aug)``; the paper
reports about a quarter of the steps conflicting (cosine < 0) with RawBoost.

Cost: two forward and two backward passes of ``B`` examples (about twice a plain step), one
``(2, P)`` copy, and the aggregation (negligible, except CAGrad's cvxpy solve, a roughly
constant 20-30 ms per step on CPU).

Batch normalisation: by default (``paths="separate"``) the clean and augmented batches go
through the network in two separate forward passes, so each path is normalised with its own
batch statistics, and the running statistics are updated twice per step (once per path, so
they track the mixture of clean and augmented inputs). The clean graph is freed before the
augmented forward, so peak memory is that of one path. ``paths="joint"`` instead concatenates
``[x; augment(x)]`` in one forward, as the authors' released code does (BN statistics over
both halves), and back-propagates each half's loss through the shared graph; it is slower
(each backward runs through the whole ``2B`` graph).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fedspeech.errors import ConfigError
from fedspeech.registry import Registry
from fedspeech.training.aligners import Aggregator, build_aligner
from fedspeech.training.local import LocalResult

LossFn = Callable[[Tensor, Tensor], Tensor]
Paths = Literal["separate", "joint"]

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")


@OPTIMIZERS.register("adam")
def _adam(
    params: Sequence[nn.Parameter], *, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """Adam with default betas; ``momentum`` is ignored (Adam keeps its own moments)."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("sgd")
def _sgd(
    params: Sequence[nn.Parameter], *, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """SGD with optional heavy-ball momentum and L2 weight decay."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def build_optimizer(
    name: str,
    params: Sequence[nn.Parameter],
    *,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """The local optimizer registered as ``name`` (``adam`` or ``sgd``) over ``params``."""
    return OPTIMIZERS.get(name)(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


@dataclass
class StepStats:
    """What one dual-path step measured (losses before the update)."""

    loss_clean: float
    loss_aug: float
    cosine: float
    conflict: bool


@dataclass(kw_only=True)
class DualPathResult(LocalResult):
    """:class:`LocalResult` plus gradient-conflict statistics.

    ``loss`` is the example-weighted mean of ``(loss_clean + loss_aug) / 2`` over the steps;
    ``num_examples`` counts clean examples (each is also seen augmented).
    """

    loss_clean: float = math.nan
    loss_aug: float = math.nan
    conflict_rate: float = 0.0
    mean_cosine: float = math.nan
    cosines: list[float] = field(default_factory=list)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters with ``requires_grad``, in ``model.parameters()`` order."""
    return [p for p in model.parameters() if p.requires_grad]


def flat_grad(loss: Tensor, params: Sequence[Tensor], *, retain_graph: bool = False) -> Tensor:
    """``(P,)`` gradient of a scalar ``loss``; parameters it does not reach get zeros."""
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, params, strict=True)
        ]
    )


def write_grad(params: Sequence[Tensor], vector: Tensor) -> None:
    """Set each ``p.grad`` to its slice of the ``(P,)`` ``vector`` (views, no copy)."""
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = vector[offset : offset + n].view(p.shape)
        offset += n
    if offset != vector.numel():
        raise ValueError(f"vector has {vector.numel()} entries, parameters {offset}")


def pairwise_cosines(gramian: Tensor) -> Tensor:
    """``(m, m)`` cosines from the Gramian ``J Jᵀ``; a zero gradient has cosine 0 with all."""
    norms = gramian.diagonal().clamp_min(0).sqrt()
    denom = norms[:, None] * norms[None, :]
    return torch.where(denom > 0, gramian / denom.clamp_min(1e-30), torch.zeros_like(gramian))


def dual_path_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    augment: Callable[[Tensor], Tensor],
    aligner: Aggregator,
    loss_fn: LossFn = F.cross_entropy,
    *,
    paths: Paths = "separate",
) -> StepStats:
    """One DPDA step (Truong et al., 2025): align the clean and augmented gradients, then step.

    Parameters
    ----------
    model : nn.Module
        Updated in place; its train/eval mode is left to the caller.
    optimizer : torch.optim.Optimizer
        Steps on the aligned direction written into ``.grad`` (previous ``.grad`` is replaced).
    x : Tensor
        ``(B, ...)`` clean inputs, e.g. ``(B, T)`` waveforms.
    y : Tensor
        ``(B,)`` int64 labels, shared by both paths.
    augment : Callable[[Tensor], Tensor]
        ``(B, ...) → (B, ...)``; called without autograd.
    aligner : Aggregator
        From :func:`~fedspeech.training.aligners.build_aligner`; maps ``(2, P)`` to ``(P,)``.
    loss_fn : Callable[[Tensor, Tensor], Tensor]
        ``(logits, y) → scalar``, mean over the batch.
    paths : {"separate", "joint"}
        Two forward passes (default, each path with its own BN statistics) or one forward of
        ``[x; augment(x)]`` (the authors' code).

    Returns
    -------
    StepStats
        Both losses at the pre-step weights and ``cos(g_clean, g_aug)``.
    """
    params = trainable_parameters(model)
    with torch.no_grad():
        x_aug = augment(x)
    if paths == "separate":
        loss_clean = loss_fn(model(x), y)
        g_clean = flat_grad(loss_clean, params)
        loss_aug = loss_fn(model(x_aug), y)
        g_aug = flat_grad(loss_aug, params)
    elif paths == "joint":
        logits = model(torch.cat([x, x_aug]))
        loss_clean = loss_fn(logits[: len(x)], y)
        loss_aug = loss_fn(logits[len(x) :], y)
        g_clean = flat_grad(loss_clean, params, retain_graph=True)
        g_aug = flat_grad(loss_aug, params)
    else:
        raise ConfigError(f"unknown paths {paths!r}; known: joint, separate")
    jac = torch.stack([g_clean, g_aug])
    del g_clean, g_aug
    cosine = float(pairwise_cosines(jac @ jac.T)[0, 1])
    direction = aligner(jac)
    write_grad(params, direction)
    optimizer.step()
    return StepStats(
        loss_clean=float(loss_clean.detach()),
        loss_aug=float(loss_aug.detach()),
        cosine=cosine,
        conflict=cosine < 0,
    )


def train_dual_path(
    model: nn.Module,
    waveforms: np.ndarray,
    labels: np.ndarray,
    batches: list[np.ndarray],
    *,
    augment: Callable[[Tensor], Tensor],
    alignment: str | Aggregator,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    optimizer: str,
    aligner_kwargs: dict[str, object] | None = None,
    loss_fn: LossFn = F.cross_entropy,
    paths: Paths = "separate",
) -> DualPathResult:
    """Run DPDA local training (Truong et al., 2025) over ``batches``, in place on ``model``.

    Parameters
    ----------
    model : nn.Module
        Starts at the global weights; updated in place (put in train mode).
    waveforms : np.ndarray
        ``(N, T)`` float32 inputs of the whole corpus (may be memory-mapped).
    labels : np.ndarray
        ``(N,)`` int64.
    batches : list[np.ndarray]
        Corpus positions per step, from :func:`~fedspeech.training.local.local_batches`.
    augment : Callable[[Tensor], Tensor]
        ``(B, T) → (B, T)`` augmentation of the second path (e.g. RawBoost).
    alignment : str or Aggregator
        Aligner name (``none``, ``pcgrad``, ``gradvac``, ``cagrad``, ``upgrad``), or a built
        aligner to reuse, e.g. to keep GradVac's EMA state across federated rounds (a name
        builds a fresh one per call).
    lr, momentum, weight_decay : float
        Optimizer settings (``momentum`` applies to SGD only).
    optimizer : str
        ``adam`` (as in the paper) or ``sgd``.
    aligner_kwargs : dict, optional
        Passed to :func:`~fedspeech.training.aligners.build_aligner` (names only).

    Returns
    -------
    DualPathResult
        ``conflict_rate`` is the fraction of steps with ``cos(g_clean, g_aug) < 0``.
    """
    if isinstance(alignment, Aggregator):
        aligner = alignment
    else:
        aligner = build_aligner(alignment, **(aligner_kwargs or {}))
    params = trainable_parameters(model)
    opt = build_optimizer(optimizer, params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    model.train()
    sum_clean = sum_aug = 0.0
    seen = conflicts = 0
    cosines: list[float] = []
    for batch in batches:
        x = torch.from_numpy(np.ascontiguousarray(waveforms[batch]))
        y = torch.from_numpy(np.ascontiguousarray(labels[batch]))
        stats = dual_path_step(model, opt, x, y, augment, aligner, loss_fn, paths=paths)
        sum_clean += stats.loss_clean * len(batch)
        sum_aug += stats.loss_aug * len(batch)
        seen += len(batch)
        conflicts += stats.conflict
        cosines.append(stats.cosine)
    denom = max(seen, 1)
    return DualPathResult(
        num_examples=seen,
        loss=(sum_clean + sum_aug) / (2 * denom),
        steps=len(batches),
        loss_clean=sum_clean / denom if seen else math.nan,
        loss_aug=sum_aug / denom if seen else math.nan,
        conflict_rate=conflicts / len(batches) if batches else 0.0,
        mean_cosine=float(np.mean(cosines)) if cosines else math.nan,
        cosines=cosines,
    )


__all__ = [
    "OPTIMIZERS",
    "DualPathResult",
    "LossFn",
    "Paths",
    "StepStats",
    "build_optimizer",
    "dual_path_step",
    "flat_grad",
    "pairwise_cosines",
    "train_dual_path",
    "trainable_parameters",
    "write_grad",
]
