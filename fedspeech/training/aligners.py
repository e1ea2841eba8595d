"""Gradient aligners: torchjd aggregators that turn an ``(m, P)`` gradient matrix into one step.

Each name maps to a factory returning a :class:`torchjd.aggregation.Aggregator`. An aggregator
takes the matrix ``J`` whose rows are the gradients of ``m`` losses (``m = 2`` for dual-path
training: clean and augmented) with respect to all ``P`` trainable parameters, and returns the
``(P,)`` direction written into ``.grad``.

Scaling convention: every aligner returns a direction on the scale of the **mean** of the rows,
so the learning rate means the same thing whichever aligner is chosen, and ``none`` is exactly
ordinary training on ``(L_clean + L_aug) / 2`` (the no-alignment baseline of Truong et al.,
whose reference code computes one cross-entropy over the concatenated clean and augmented batch).

============  ==========================================  =====================================
name          torchjd aggregator                          rescaling to the mean scale
============  ==========================================  =====================================
``none``      ``Mean()``                                  none needed
``pcgrad``    ``PCGrad()`` (Yu et al., 2020)              ``1/m`` (torchjd sums projected rows)
``gradvac``   ``GradVac(beta=0.5)`` (Wang et al., 2021)   ``1/m`` (torchjd sums corrected rows)
``cagrad``    ``CAGrad(c=0.5)`` (Liu et al., 2021)        ``1/(1 + c²)``, as the CAGrad authors
``upgrad``    ``UPGrad()`` (Quinton & Rey, 2024)          none (mean preference vector)
============  ==========================================  =====================================

The ``1/m`` and ``1/(1+c²)`` factors follow the reference implementation of Truong et al.
(PCGrad and GradVac with ``reduction='mean'``, CAGrad with ``c = 0.5`` divided by ``1 + c²``).
Rescaling by a positive constant keeps every property the methods promise (e.g. no conflict
with any input gradient). ``gradvac`` is stateful (an EMA of target cosines), so build one
aligner per training run. ``cagrad`` needs ``cvxpy`` and ``clarabel``, ``upgrad`` needs
``qpsolvers`` and ``quadprog`` (``pip install "torchjd[full]"``); a missing dependency is
reported as a :class:`~fedspeech.errors.ConfigError` when the aligner is built.

Examples
--------
>>> import torch
>>> J = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])  # cosine < 0: the two gradients conflict
>>> d = build_aligner("pcgrad")(J)
>>> bool((J @ d >= -1e-6).all())
True
>>> build_aligner("none")(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
tensor([2., 3.])
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import Tensor
from torchjd.aggregation import Aggregator, CAGrad, GradVac, Mean, PCGrad, UPGrad

from fedspeech.errors import ConfigError
from fedspeech.registry import Registry

ALIGNERS: Registry[Callable[..., Aggregator]] = Registry("alignment")


class Rescaled(Aggregator):
    """A torchjd aggregator whose output is multiplied by a constant (and optionally ``1/m``).

    Parameters
    ----------
    inner : Aggregator
        The wrapped aggregator.
    factor : float
        Constant multiplier (> 0, so directions and conflict guarantees are unchanged).
    per_row : bool
        Also divide by the number of rows ``m``: turns a sum of ``m`` rows into a mean.
    """

    def __init__(self, inner: Aggregator, factor: float = 1.0, per_row: bool = False) -> None:
        super().__init__()
        if factor <= 0:
            raise ValueError(f"factor must be positive, got {factor}")
        self.inner = inner
        self.factor = factor
        self.per_row = per_row

    def forward(self, matrix: Tensor, /) -> Tensor:
        """``(m, P)`` gradient matrix → ``(P,)`` direction."""
        scale = self.factor / matrix.shape[0] if self.per_row else self.factor
        return self.inner(matrix) * scale

    def __repr__(self) -> str:
        return f"Rescaled({self.inner!r}, factor={self.factor}, per_row={self.per_row})"

    def __str__(self) -> str:
        return str(self.inner)


def _needs(name: str, build: Callable[[], Aggregator]) -> Aggregator:
    # torchjd checks optional dependencies when the aggregator is instantiated.
    try:
        return build()
    except ImportError as err:
        raise ConfigError(
            f"alignment {name!r} needs optional dependencies: {err}. "
            'Install them with: pip install "torchjd[full]"'
        ) from None


@ALIGNERS.register("none")
def _none() -> Aggregator:
    """Mean of the rows: ordinary training on the mean of the losses."""
    return Mean()


@ALIGNERS.register("pcgrad")
def _pcgrad() -> Aggregator:
    """PCGrad (Yu et al., NeurIPS 2020), mean of the projected rows."""
    return Rescaled(PCGrad(), per_row=True)


@ALIGNERS.register("gradvac")
def _gradvac(beta: float = 0.5, eps: float = 1e-8) -> Aggregator:
    """Gradient Vaccine (Wang et al., ICLR 2021), mean of the corrected rows; stateful."""
    return Rescaled(GradVac(beta=beta, eps=eps), per_row=True)


@ALIGNERS.register("cagrad")
def _cagrad(c: float = 0.5, norm_eps: float = 1e-4) -> Aggregator:
    """Conflict-averse GD (Liu et al., NeurIPS 2021), divided by ``1 + c²``."""
    return _needs(
        "cagrad", lambda: Rescaled(CAGrad(c=c, norm_eps=norm_eps), factor=1.0 / (1.0 + c * c))
    )


@ALIGNERS.register("upgrad")
def _upgrad(pref_vector: Tensor | None = None) -> Aggregator:
    """UPGrad (Quinton & Rey, 2024): mean of the rows projected onto their dual cone."""
    return _needs("upgrad", lambda: UPGrad(pref_vector=pref_vector))


def build_aligner(name: str, **kwargs: Any) -> Aggregator:
    """Build the aligner registered as ``name``.

    Parameters
    ----------
    name : str
        One of ``none``, ``pcgrad``, ``gradvac``, ``cagrad``, ``upgrad``.
    **kwargs
        Passed to the factory (``beta``/``eps`` for gradvac, ``c`` for cagrad, ...).

    Raises
    ------
    ConfigError
        Unknown name, bad keyword, or a missing optional dependency.
    """
    factory = ALIGNERS.get(name)
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as err:
        raise ConfigError(f"alignment {name!r}: {err}") from None
    return factory(**kwargs)


__all__ = ["ALIGNERS", "Aggregator", "Rescaled", "build_aligner"]
