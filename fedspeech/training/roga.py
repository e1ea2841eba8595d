"""RoGA: robust gradient alignment across the domains of a mini-batch.

Qiu, Jiang and Tan, "RoGA: Towards Generalizable Deepfake Detection through Robust Gradient
Alignment", ICME 2025, arXiv:2505.20653. (The paper targets face-forgery detection; here the
domains are whatever the caller labels them: attack types, speakers, corpora.)

For each domain ``i`` present in the batch (``n_i`` of the ``B`` examples), with the SAM-style
ascent ``ε_i = ρ g_i / ‖g_i‖`` from ``g_i = ∇L_i(θ)``, the step minimises

    J(θ) = Σ_i (n_i / B) · [ L_i(θ + ε_i) − α ⟨∇L_i(θ + ε_i), ∇L_i(θ)⟩ ],

with ``ε_i`` held constant when differentiating, as in SAM. The weights ``n_i / B`` make
``ρ = α = 0`` exactly ordinary training on the batch-mean loss. The gradient of the alignment
term is ``−α (H_i⁺ g_i + H_i g_i⁺)`` (``H`` the Hessian of ``L_i`` at ``θ``, ``H⁺`` at
``θ + ε_i``, ``g_i⁺ = ∇L_i(θ + ε_i)``): a Hessian-vector-product term. Three estimators:

``mode="fd"`` (default, no extra passes)
    Along the ascent segment, ``g_i⁺ − g_i = H̄_i ε_i`` exactly, with ``H̄_i`` the Hessian
    averaged over ``[θ, θ + ε_i]``; so ``H̄_i g_i = ‖g_i‖ (g_i⁺ − g_i) / ρ`` costs nothing
    beyond the two gradients SAM already needs. Using ``H̄_i`` for both ``H_i⁺`` and ``H_i``
    (and ``g_i⁺ ≈ g_i`` inside the second product, error ``O(ρ)``) gives the direction
    ``g_i⁺ − λ_i (g_i⁺ − g_i)``, ``λ_i = 2 α ‖g_i‖ / ρ``: the sharpness-aware gradient pulled
    toward the ERM gradient of the same domain. Exact for a quadratic loss up to the
    ``α ρ H² ĝ`` term.
``mode="shift"``
    The first-order Taylor trick of sharpness-aware gradient matching (Wang et al., SAGM,
    CVPR 2023), on which gradient-alignment-with-perturbation methods build:
    ``L_i(θ + ε_i − α g_i) ≈ L_i(θ + ε_i) − α ⟨g_i⁺, g_i⟩``, so the gradient is taken at the
    shifted point. Free as well, but with the shift held constant it only carries the
    ``−α H_i⁺ g_i`` half of the alignment gradient.
``mode="exact"``
    Both Hessian-vector products by double back-propagation (``create_graph=True``); about
    two to three times the cost of the other modes. Used to check the estimators.

(The paper's full text could not be consulted offline; the objective is the per-domain form
above and the estimator choice is documented rather than assumed.)

Per-domain passes: each domain's sub-batch goes through the network on its own, at ``θ`` and at
its ascent point, so a step costs about two plain steps whatever the number of domains (plus
per-call overhead for many tiny domains). Batch-norm layers therefore see per-domain batch
statistics; their running statistics are updated by the passes at ``θ`` only (frozen during
the perturbed passes), and domains with a single example are merged into the largest domain
when the model has batch-norm layers (a one-example batch cannot be normalised).

Conflict statistic: ``cosine`` is the smallest pairwise cosine between the domains' ERM
gradients ``g_i`` at ``θ`` (NaN when fewer than two domains are present); a step conflicts when
it is negative. ``conflict_rate`` is the fraction of steps with at least two domains that
conflict.

:func:`train_roga` is the one local-training loop: on ``augment(x)``, or (``dual_path=True``,
the ``roga`` trainer of :mod:`fedspeech.training.sdd`) on the dual-path batch
``[x; augment(x)]``, whose conflict statistic is then the clean-vs-augmented cosine.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from fedspeech.errors import ConfigError
from fedspeech.training.dual_path import (
    build_optimizer,
    flat_grad,
    pairwise_cosines,
    trainable_parameters,
    write_grad,
)
from fedspeech.training.local import LocalResult

LossFn = Callable[[Tensor, Tensor], Tensor]
Mode = Literal["fd", "shift", "exact"]
_MODES = ("exact", "fd", "shift")


@dataclass
class RoGAStats:
    """What one RoGA step measured (losses before the update)."""

    loss: float
    loss_perturbed: float
    cosine: float
    conflict: bool
    num_domains: int


@dataclass(kw_only=True)
class RoGAResult(LocalResult):
    """:class:`LocalResult` plus the domain-conflict statistics of :mod:`roga`."""

    loss_perturbed: float = math.nan
    conflict_rate: float = 0.0
    mean_cosine: float = math.nan
    cosines: list[float] = field(default_factory=list)


@contextlib.contextmanager
def frozen_running_stats(model: nn.Module) -> Iterator[None]:
    """Batch-norm layers keep normalising with batch statistics but stop updating buffers."""
    saved: list[tuple[_BatchNorm, float | None, Tensor | None]] = []
    for m in model.modules():
        if isinstance(m, _BatchNorm) and m.track_running_stats:
            count = m.num_batches_tracked
            saved.append((m, m.momentum, None if count is None else count.clone()))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, count in saved:
            m.momentum = momentum
            if count is not None and m.num_batches_tracked is not None:
                m.num_batches_tracked.copy_(count)


def _domain_groups(domains: Tensor, merge_singletons: bool) -> list[Tensor]:
    """Index tensors of the examples of each domain, largest first."""
    values, inverse, counts = torch.unique(domains, return_inverse=True, return_counts=True)
    order = torch.argsort(counts, descending=True, stable=True)
    groups = [torch.nonzero(inverse == int(k)).flatten() for k in order]
    if merge_singletons and len(groups) > 1:
        small = [g for g in groups if len(g) < 2]
        if small:
            groups = [g for g in groups if len(g) >= 2] or [small.pop(0)]
            groups[0] = torch.sort(torch.cat([groups[0], *small])).values
    return groups


class RoGA:
    """Wrap a base optimizer with RoGA's per-domain perturbation and alignment (Qiu et al.).

    Parameters
    ----------
    model : nn.Module
        Updated in place; its train/eval mode is left to the caller.
    base_optimizer : torch.optim.Optimizer
        Steps on the RoGA direction written into ``.grad`` (Adam, SGD, ...).
    rho : float
        Ascent radius ``ρ`` (0 disables the perturbation).
    alpha : float
        Weight ``α`` of the alignment term (0 gives per-domain SAM).
    loss_fn : Callable[[Tensor, Tensor], Tensor]
        ``(logits, y) → scalar``, mean over the (sub-)batch.
    mode : {"fd", "shift", "exact"}
        Estimator of the alignment gradient (see the module docstring).
    """

    def __init__(
        self,
        model: nn.Module,
        base_optimizer: torch.optim.Optimizer,
        rho: float,
        alpha: float,
        *,
        loss_fn: LossFn = F.cross_entropy,
        mode: Mode = "fd",
    ) -> None:
        if rho < 0 or alpha < 0:
            raise ConfigError(f"RoGA needs rho >= 0 and alpha >= 0, got {rho}, {alpha}")
        if mode not in _MODES:
            raise ConfigError(f"unknown RoGA mode {mode!r}; known: {', '.join(_MODES)}")
        self.model = model
        self.base_optimizer = base_optimizer
        self.rho = rho
        self.alpha = alpha
        self.loss_fn = loss_fn
        self.mode: Mode = mode
        self._has_bn = any(isinstance(m, _BatchNorm) for m in model.modules())

    def step(self, x: Tensor, y: Tensor, domains: Tensor) -> RoGAStats:
        """One RoGA update on a batch.

        Parameters
        ----------
        x : Tensor
            ``(B, ...)`` inputs.
        y : Tensor
            ``(B,)`` int64 labels.
        domains : Tensor
            ``(B,)`` integer domain of each example (attack type, speaker, ...).
        """
        if domains.shape != y.shape:
            raise ValueError(f"domains {tuple(domains.shape)} must match labels {tuple(y.shape)}")
        params = trainable_parameters(self.model)
        groups = _domain_groups(domains.to(x.device), merge_singletons=self._has_bn)
        total = len(y)
        direction = params[0].new_zeros(sum(p.numel() for p in params))
        erm_grads: list[Tensor] = []
        loss = loss_pert = 0.0
        exact = self.mode == "exact" or (self.mode == "fd" and self.rho == 0 and self.alpha > 0)
        moves = self.rho > 0 or (self.mode == "shift" and self.alpha > 0)
        # The ascent overwrites the weights in place; keep an exact copy to come back to.
        origin = [p.detach().clone() for p in params] if moves and not exact else []
        for idx in groups:
            weight = len(idx) / total
            xb, yb = x[idx], y[idx]
            if exact:
                g, d, lp, lc = self._exact(params, xb, yb)
            else:
                g, d, lp, lc = self._first_order(params, origin, xb, yb)
            erm_grads.append(g)
            direction.add_(d, alpha=weight)
            loss += weight * lc
            loss_pert += weight * lp
        cosine = math.nan
        if len(erm_grads) > 1:
            jac = torch.stack(erm_grads)
            cos = pairwise_cosines(jac @ jac.T)
            off = ~torch.eye(len(erm_grads), dtype=torch.bool)
            cosine = float(cos[off].min())
        write_grad(params, direction)
        self.base_optimizer.step()
        return RoGAStats(
            loss=loss,
            loss_perturbed=loss_pert,
            cosine=cosine,
            conflict=cosine < 0,
            num_domains=len(groups),
        )

    def _first_order(
        self, params: list[nn.Parameter], origin: list[Tensor], xb: Tensor, yb: Tensor
    ) -> tuple[Tensor, Tensor, float, float]:
        """``fd`` and ``shift`` modes: two plain gradients, at ``θ`` and at the ascent point."""
        loss = self.loss_fn(self.model(xb), yb)
        g = flat_grad(loss, params)
        lc = float(loss.detach())
        norm = float(g.norm())
        if not origin or norm == 0:
            return g, g, lc, lc
        step = g * (self.rho / norm)
        if self.mode == "shift":
            step = step - self.alpha * g
        _add_flat(params, origin, step)
        try:
            with frozen_running_stats(self.model):
                loss_p = self.loss_fn(self.model(xb), yb)
            g_plus = flat_grad(loss_p, params)
        finally:
            with torch.no_grad():
                for p, o in zip(params, origin, strict=True):
                    p.copy_(o)
        if self.mode == "shift" or self.alpha == 0:
            return g, g_plus, float(loss_p.detach()), lc
        lam = 2.0 * self.alpha * norm / self.rho
        return g, g_plus - lam * (g_plus - g), float(loss_p.detach()), lc

    def _exact(
        self, params: list[nn.Parameter], xb: Tensor, yb: Tensor
    ) -> tuple[Tensor, Tensor, float, float]:
        """``exact`` mode: differentiate ``J_i`` through both gradients (double backward)."""
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        loss = self.loss_fn(self.model(xb), yb)
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        g_list = _fill(grads, params)
        g_flat = torch.cat([gi.detach().reshape(-1) for gi in g_list])
        lc = float(loss.detach())
        if self.rho > 0:
            norm = float(g_flat.norm())
            scale = self.rho / norm if norm > 0 else 0.0
            # θ + ε with ε detached: the perturbed weights depend on θ with unit Jacobian.
            shifted = {n: p + scale * gi.detach() for (n, p), gi in zip(named, g_list, strict=True)}
            with frozen_running_stats(self.model):
                logits = functional_call(self.model, shifted, (xb,), strict=False)
            loss_p = self.loss_fn(logits, yb)
            plus = torch.autograd.grad(
                loss_p, list(shifted.values()), create_graph=True, allow_unused=True
            )
            p_list = _fill(plus, params)
        else:
            loss_p, p_list = loss, g_list
        inner = sum((a * b).sum() for a, b in zip(p_list, g_list, strict=True))
        objective = loss_p - self.alpha * inner
        d = flat_grad(objective, params)
        return g_flat, d, float(loss_p.detach()), lc


def _fill(grads: Sequence[Tensor | None], params: Sequence[nn.Parameter]) -> list[Tensor]:
    """Zeros for the parameters a loss does not reach."""
    return [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params, strict=True)]


def _add_flat(params: Sequence[nn.Parameter], origin: Sequence[Tensor], step: Tensor) -> None:
    """Set every parameter to ``origin + step`` (its slice of the flat ``step``)."""
    offset = 0
    with torch.no_grad():
        for p, o in zip(params, origin, strict=True):
            n = p.numel()
            p.copy_(o).add_(step[offset : offset + n].view(p.shape))
            offset += n


def path_cosine(
    model: nn.Module, x: Tensor, x_aug: Tensor, y: Tensor, loss_fn: LossFn = F.cross_entropy
) -> float:
    """``cos(g_clean, g_aug)`` at the current weights, without changing the model.

    Parameters
    ----------
    model : nn.Module
        In the mode the training uses; batch-norm running statistics are left as they are.
    x, x_aug : Tensor
        ``(B, ...)`` clean inputs and their augmented copies.
    y : Tensor
        ``(B,)`` int64 labels of both.
    loss_fn : Callable[[Tensor, Tensor], Tensor]
        ``(logits, y) → scalar``, mean over the batch.

    Returns
    -------
    float
        The cosine of the gradients of the two paths' mean losses, each path in its own
        forward pass (as :func:`~fedspeech.training.dual_path.dual_path_step` takes them,
        the definition of Truong et al., arXiv:2509.20682).
    """
    params = trainable_parameters(model)
    with frozen_running_stats(model):
        g_clean = flat_grad(loss_fn(model(x), y), params)
        g_aug = flat_grad(loss_fn(model(x_aug), y), params)
    jac = torch.stack([g_clean, g_aug])
    return float(pairwise_cosines(jac @ jac.T)[0, 1])


def train_roga(
    model: nn.Module,
    waveforms: np.ndarray,
    labels: np.ndarray,
    domains: np.ndarray | None,
    batches: list[np.ndarray],
    *,
    augment: Callable[[Tensor], Tensor] | None = None,
    dual_path: bool = False,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    optimizer: str,
    rho: float,
    alpha: float,
    mode: Mode = "fd",
    loss_fn: LossFn = F.cross_entropy,
) -> RoGAResult:
    """Run RoGA local training (Qiu et al., 2025) over ``batches``, in place on ``model``.

    Parameters
    ----------
    model : nn.Module
        Starts at the global weights; updated in place (put in train mode).
    waveforms : np.ndarray
        ``(N, T)`` float32 inputs (or any ``(N, ...)`` features the model takes).
    labels : np.ndarray
        ``(N,)`` int64.
    domains : np.ndarray or None
        ``(N,)`` integer domain of each clip (attack type, speaker, ...). ``None`` only with
        ``dual_path``: the clean and augmented halves are then the two domains.
    batches : list[np.ndarray]
        Corpus positions per step, from :func:`~fedspeech.training.local.local_batches`.
    augment : Callable[[Tensor], Tensor], optional
        Applied to each whole batch (without autograd) before the step; required with
        ``dual_path``.
    dual_path : bool
        Train on ``[x; augment(x)]`` with labels ``[y; y]`` and domains ``[d; d]`` (each
        augmented copy in its clip's domain), as dual-path training sees a batch (Truong et
        al., arXiv:2509.20682), instead of on ``augment(x)`` alone.
    lr, momentum, weight_decay : float
        Base-optimizer settings (``momentum`` applies to SGD only).
    optimizer : str
        ``adam`` or ``sgd``.
    rho, alpha : float
        RoGA's ascent radius and alignment weight.
    mode : {"fd", "shift", "exact"}
        Alignment-gradient estimator.
    loss_fn : Callable[[Tensor, Tensor], Tensor]
        ``(logits, y) → scalar``, mean over the (sub-)batch.

    Returns
    -------
    RoGAResult
        ``loss`` is the example-weighted batch loss at the pre-step weights (``num_examples``
        counts clean clips). The conflict statistic of a step (``cosines``, ``mean_cosine``,
        ``conflict_rate``: the fraction of its steps below 0): without ``dual_path``, the
        smallest cosine between the domains' gradients, over the steps with at least two
        domains; with ``dual_path``, ``cos(g_clean, g_aug)`` (:func:`path_cosine`, before the
        step; RoGA's own when the paths are the domains) over every step, NaN counting as no
        conflict.

    Raises
    ------
    ValueError
        ``domains`` does not match ``labels``, or is missing without ``dual_path``, or
        ``dual_path`` has no ``augment``.
    """
    if domains is not None and domains.shape != labels.shape:
        raise ValueError(f"domains {domains.shape} must match labels {labels.shape}")
    if domains is None and not dual_path:
        raise ValueError("train_roga needs domains unless dual_path (the paths are the domains)")
    if dual_path and augment is None:
        raise ValueError("dual_path training needs an augment function")
    params = trainable_parameters(model)
    opt = build_optimizer(optimizer, params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    roga = RoGA(model, opt, rho=rho, alpha=alpha, loss_fn=loss_fn, mode=mode)
    model.train()
    total = total_pert = 0.0
    seen = counted = conflicts = 0
    cosines: list[float] = []
    for batch in batches:
        x = torch.from_numpy(np.ascontiguousarray(waveforms[batch]))
        y = torch.from_numpy(np.ascontiguousarray(labels[batch]))
        x_aug = x
        if augment is not None:
            with torch.no_grad():
                x_aug = augment(x)
        if not dual_path and domains is not None:
            d = torch.from_numpy(np.ascontiguousarray(domains[batch]))
            stats = roga.step(x_aug, y, d)
            cosine, counts = stats.cosine, stats.num_domains > 1
        else:
            xx, yy = torch.cat([x, x_aug]), torch.cat([y, y])
            if domains is None:
                # The paths are the domains: RoGA's own passes at θ give the two gradients.
                stats = roga.step(xx, yy, torch.cat([torch.zeros_like(y), torch.ones_like(y)]))
                cosine = stats.cosine
            else:
                # Measured before the step, at the weights the step starts from.
                cosine = path_cosine(model, x, x_aug, y, loss_fn)
                d = torch.from_numpy(np.ascontiguousarray(domains[batch])).long()
                stats = roga.step(xx, yy, torch.cat([d, d]))
            counts = True
        total += stats.loss * len(batch)
        total_pert += stats.loss_perturbed * len(batch)
        seen += len(batch)
        if counts:
            counted += 1
            conflicts += cosine < 0
            cosines.append(cosine)
    return RoGAResult(
        num_examples=seen,
        loss=total / max(seen, 1),
        steps=len(batches),
        loss_perturbed=total_pert / seen if seen else math.nan,
        conflict_rate=conflicts / counted if counted else 0.0,
        mean_cosine=float(np.mean(cosines)) if cosines else math.nan,
        cosines=cosines,
    )


__all__ = [
    "Mode",
    "RoGA",
    "RoGAResult",
    "RoGAStats",
    "frozen_running_stats",
    "path_cosine",
    "train_roga",
]
