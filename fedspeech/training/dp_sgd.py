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

Opacus draws its noise from torch's global generator, which the client seeds by
``(seed, round, client)`` (:func:`fedspeech.training.seed_torch`): a run repeats.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizerFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from torch import nn

from fedspeech.training.local import LocalResult

__all__ = ["train_dp_sgd"]

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
        for p in model.parameters():
            p.grad = None
            for attr in _OPTIMIZER_ATTRS:  # what DPOptimizer leaves on a parameter
                if hasattr(p, attr):
                    delattr(p, attr)
    return LocalResult(num_examples=seen, loss=total / max(seen, 1), steps=len(batches))
