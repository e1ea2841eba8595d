"""DP-SGD local training (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016).

Each step clips every sample's gradient to L2 norm ``C`` and adds Gaussian noise of
standard deviation ``Z * C`` to their sum, through Opacus' ghost clipping (Li et al.,
"Large language models can be strong differentially private learners", ICLR 2022;
Bu et al., "Scalable and efficient training of large convolutional neural networks with
differential privacy", NeurIPS 2022): the per-sample gradient norms come from each layer's
inputs and output gradients, and a second backward pass of the loss reweighted by the clip
factors gives the clipped sum, without ever holding a per-sample gradient. For the keyword
CNN, whose 55,296 x 128 layer would need 28 MB per sample of per-sample gradients, that is
what keeps a DP-SGD step within a small multiple of a plain one
(``benchmarks/bench_defenses.py``). The model is made private
for the round only and handed back as the standard module: a client process reuses its
model across rounds (:func:`fedspeech.federation.client_app.reusable_model`), and hooks
added twice would count every sample twice.

:func:`train_dp_dual_path` is DP-SGD for the dual-path trainers of ``--task sdd``
(AASIST-style detectors). Opacus cannot wrap those models (its per-sample hooks refuse the
sinc front-end and the graph-attention layers, "trainable layer with buffers", even after
``ModuleValidator.fix``), so each clip's gradient is computed by its own backward pass and
handed to Opacus' :class:`~opacus.optimizers.DPOptimizer` as ``p.grad_sample``; Opacus then
clips, sums and adds the noise exactly as for the keyword CNN. What one clip contributes is
the aligned direction of its clean and augmented gradients (the aligner applied to that
clip's ``(2, P)`` pair), clipped as one: a clip and its augmented copy are one example of
the privacy analysis, so the sampling rate and the accountant are those of plain DP-SGD.

Batch normalisation mixes the clips of a batch (each is normalised by the others'
statistics), which per-example clipping cannot bound. Opacus' answer, swapping BatchNorm for
GroupNorm, would change the model the federation aggregates and evaluates (other layers,
other state keys than the server's model and the published AASIST checkpoints). Here the
BatchNorm layers instead run on their running statistics during DP-SGD (eval mode, their
affine weights still trained): no statistic of the batch enters a clip's gradient, and the
model keeps its architecture. The running statistics are then not updated by private
training.

Opacus draws its noise from torch's global generator, which the client seeds by
``(seed, round, client)`` (:func:`fedspeech.training.seed_torch`): a run repeats.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from torch import Tensor, nn
from torch.nn import functional as F

from fedspeech.training.aligners import Aggregator, build_aligner
from fedspeech.training.dual_path import build_optimizer, flat_grad, trainable_parameters
from fedspeech.training.local import LocalResult

__all__ = ["frozen_batch_norm", "train_dp_dual_path", "train_dp_sgd"]

_OPTIMIZER_ATTRS = ("summed_grad", "grad_sample", "_forward_counter", "_norm_sample")


def train_dp_sgd(
    model: nn.Module,
    features: np.ndarray,
    labels: np.ndarray,
    batches: list[np.ndarray],
    *,
    lr: float,
    clip: float,
    noise: float,
    momentum: float = 0.0,
) -> LocalResult:
    """Run DP-SGD over ``batches`` in place on ``model``.

    Parameters
    ----------
    model : nn.Module
        Starts at the global weights; updated in place, returned without Opacus' hooks.
    features, labels : np.ndarray
        ``(N, F, T)`` float32 features and ``(N,)`` int64 labels of the corpus.
    batches : list[np.ndarray]
        Corpus positions per step (:func:`~fedspeech.training.local_batches`).
    lr, momentum : float
        SGD's step size and momentum.
    clip : float
        ``C``, the per-sample gradient bound.
    noise : float
        ``Z``, the noise multiplier.

    Examples
    --------
    >>> import numpy as np, torch
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 2))
    >>> x, y = np.random.default_rng(0).normal(size=(4, 2, 3)).astype("f4"), np.array([0, 1, 0, 1])
    >>> res = train_dp_sgd(model, x, y, [np.array([0, 1]), np.array([2, 3])], lr=0.1,
    ...                    clip=1.0, noise=1.0)
    >>> res.steps, [h for m in model.modules() for h in m._forward_hooks]
    (2, [])
    """
    model.train()
    expected = max((len(b) for b in batches), default=1)
    private = GradSampleModuleFastGradientClipping(
        model, max_grad_norm=clip, use_ghost_clipping=True, loss_reduction="mean"
    )
    total, seen = 0.0, 0
    try:
        opt = DPOptimizerFastGradientClipping(
            torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum),
            noise_multiplier=noise,
            max_grad_norm=clip,
            expected_batch_size=expected,
            loss_reduction="mean",
        )
        criterion = DPLossFastGradientClipping(
            private, opt, nn.CrossEntropyLoss(reduction="mean"), loss_reduction="mean"
        )
        for batch in batches:
            x = torch.from_numpy(np.ascontiguousarray(features[batch]))
            y = torch.from_numpy(np.ascontiguousarray(labels[batch]))
            opt.zero_grad(set_to_none=True)
            loss = criterion(private(x), y)
            total += float(loss.detach()) * len(batch)
            seen += len(batch)
            with warnings.catch_warnings():
                # Opacus' hooks fire on the first layer although the input needs no grad.
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
            opt.step()
    finally:
        private._close()  # removes the hooks and the per-sample norms
        _strip(model)
    return LocalResult(num_examples=seen, loss=total / max(seen, 1), steps=len(batches))


def _strip(model: nn.Module) -> None:
    """Remove the gradients and what DPOptimizer leaves on the parameters."""
    for p in model.parameters():
        p.grad = None
        for attr in _OPTIMIZER_ATTRS:
            if hasattr(p, attr):
                delattr(p, attr)


@contextmanager
def frozen_batch_norm(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in train mode with every BatchNorm layer on its running statistics.

    Dropout stays on; each BatchNorm normalises by its running mean and variance and does
    not update them, so no clip's output depends on the other clips of its batch. The
    modes are restored on exit.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.BatchNorm1d(3), torch.nn.Dropout(0.5)).eval()
    >>> with frozen_batch_norm(net):
    ...     [m.training for m in net]
    [False, True]
    >>> [m.training for m in net]
    [False, False]
    """
    modes = {m: m.training for m in model.modules()}
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


def per_clip_directions(
    model: nn.Module,
    params: list[nn.Parameter],
    x: Tensor,
    x_aug: Tensor,
    y: Tensor,
    aligner: Aggregator,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
) -> tuple[Tensor, float]:
    """Each clip's aligned direction, ``(B, P)``, and the summed mean loss of its two paths.

    Clip ``i``'s clean and augmented gradients, each from its own forward and backward pass
    of that clip alone, form the ``(2, P)`` matrix the aligner maps to clip ``i``'s row.
    """
    rows = []
    total = 0.0
    for i in range(len(x)):
        loss_clean = loss_fn(model(x[i : i + 1]), y[i : i + 1])
        g_clean = flat_grad(loss_clean, params)
        loss_aug = loss_fn(model(x_aug[i : i + 1]), y[i : i + 1])
        g_aug = flat_grad(loss_aug, params)
        rows.append(aligner(torch.stack([g_clean, g_aug])))
        total += (float(loss_clean.detach()) + float(loss_aug.detach())) / 2
    return torch.stack(rows), total


def train_dp_dual_path(
    model: nn.Module,
    waveforms: np.ndarray,
    labels: np.ndarray,
    batches: list[np.ndarray],
    *,
    augment: Callable[[Tensor], Tensor],
    alignment: str | Aggregator,
    lr: float,
    optimizer: str,
    clip: float,
    noise: float,
    weight_decay: float = 0.0,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
) -> LocalResult:
    """DP-SGD of dual-path training (Abadi et al. 2016; Truong et al. 2025), in place.

    Each step: every clip's aligned direction (:func:`per_clip_directions`) is clipped to
    L2 norm ``clip``, the sum gets Gaussian noise of standard deviation ``noise * clip`` and
    is divided by the batch size (Opacus' :class:`~opacus.optimizers.DPOptimizer`), and the
    local optimizer steps on it. BatchNorm runs on its running statistics
    (:func:`frozen_batch_norm`).

    Parameters
    ----------
    model : nn.Module
        Starts at the global weights; updated in place, left without per-sample state.
    waveforms : np.ndarray
        ``(N, T)`` float32 clips of the run.
    labels : np.ndarray
        ``(N,)`` int64.
    batches : list[np.ndarray]
        Corpus positions per step (:func:`~fedspeech.training.local_batches`).
    augment : Callable[[Tensor], Tensor]
        ``(B, T) → (B, T)``, the second path (called without autograd).
    alignment : str or Aggregator
        The aligner (``none`` = the mean of the two gradients), applied per clip.
    lr : float
        Learning rate of the local optimizer.
    optimizer : str
        ``adam`` or ``sgd`` (:data:`~fedspeech.training.dual_path.OPTIMIZERS`).
    clip, noise : float
        ``C`` and ``Z``.
    weight_decay : float
        The local optimizer's L2 weight decay (applied after the noise, to the weights).

    Returns
    -------
    LocalResult
        ``loss`` is the mean over clips of ``(loss_clean + loss_aug) / 2`` at the pre-step
        weights. The conflict rate is not reported: it is a statistic of the private clips
        that the privacy analysis does not cover.

    Examples
    --------
    >>> import numpy as np, torch
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3),
    ...                           torch.nn.Linear(3, 2))
    >>> x = np.random.default_rng(0).normal(size=(4, 4)).astype("f4")
    >>> res = train_dp_dual_path(net, x, np.array([0, 1, 0, 1]), [np.arange(4)],
    ...                          augment=lambda t: t + 0.1, alignment="pcgrad", lr=0.01,
    ...                          optimizer="sgd", clip=1.0, noise=1.0)
    >>> res.steps, res.num_examples, hasattr(net[0].weight, "grad_sample")
    (1, 4, False)
    """
    aligner = alignment if isinstance(alignment, Aggregator) else build_aligner(alignment)
    params = trainable_parameters(model)
    expected = max((len(b) for b in batches), default=1)
    opt = DPOptimizer(
        build_optimizer(optimizer, params, lr=lr, weight_decay=weight_decay),
        noise_multiplier=noise,
        max_grad_norm=clip,
        expected_batch_size=expected,
        loss_reduction="mean",
    )
    total, seen = 0.0, 0
    try:
        with frozen_batch_norm(model):
            for batch in batches:
                x = torch.from_numpy(np.ascontiguousarray(waveforms[batch]))
                y = torch.from_numpy(np.ascontiguousarray(labels[batch]))
                with torch.no_grad():
                    x_aug = augment(x)
                rows, loss = per_clip_directions(model, params, x, x_aug, y, aligner, loss_fn)
                total += loss
                seen += len(batch)
                offset = 0
                for p in params:  # Opacus reads each parameter's (B, *shape) slice
                    n = p.numel()
                    sample = rows[:, offset : offset + n].reshape(len(batch), *p.shape)
                    setattr(p, "grad_sample", sample)  # noqa: B010 (Opacus' attribute)
                    offset += n
                opt.step()
                opt.zero_grad(set_to_none=True)
    finally:
        _strip(model)
    return LocalResult(num_examples=seen, loss=total / max(seen, 1), steps=len(batches))
