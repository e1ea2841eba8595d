"""Local training and scoring of a speech-deepfake-detection client, in plain PyTorch.

One entry point, :func:`train_sdd`, runs a client's local steps with the local trainer that
``--alignment`` names in :data:`LOCAL_TRAINERS`:

* ``none``, ``pcgrad``, ``gradvac``, ``cagrad``, ``upgrad`` (one per aligner of
  :data:`~fedspeech.training.aligners.ALIGNERS`): dual-path data-augmented training
  (DPDA; Truong et al., "Addressing Gradient Misalignment in Data-Augmented Training for
  Robust Speech Deepfake Detection", arXiv:2509.20682): each batch is seen clean and
  augmented, and the two gradients are combined by a torchjd aggregator
  (:func:`fedspeech.training.dual_path.train_dual_path`);
* ``roga``: RoGA (Qiu et al., ICME 2025, arXiv:2505.20653;
  :func:`fedspeech.training.roga.train_roga` with ``dual_path=True``) on the batch
  ``[x; augment(x)]`` of ``2B`` clips, with the domains ``--roga-domains`` names
  (:data:`~fedspeech.training.domains.ROGA_DOMAINS`):

  - ``attack`` (default): each clip's attack id (spoofing method), bona fide clips forming
    their own domain; the augmented copy of a clip stays in its clip's domain
    (domains ``[d; d]``), so each domain's ascent and alignment see it clean and augmented,
    and the augmentation is not a domain of its own;
  - ``speaker``: each clip's speaker, likewise ``[d; d]`` (a client partitioned by speaker
    may hold a single speaker, and RoGA is then SAM with the alignment term on the whole
    batch; one with many speakers splits a batch into domains of a clip or two);
  - ``path``: domain 0 for the clean half and 1 for the augmented half, so RoGA's ascent
    and alignment act on exactly the two gradients DPDA aligns (the behaviour before the
    option existed).

Whatever the domains, a step records ``cos(g_clean, g_aug)`` at the pre-step weights, each
path's gradient from its own forward pass (:func:`path_cosine`, DPDA's definition); the client
reports the fraction of steps where it is negative (``conflict_rate``). With ``path`` domains
RoGA's passes at ``θ`` are those two passes; with ``attack`` or ``speaker`` they are one
extra forward and backward pass per path, about half a RoGA step's work. (RoGA's per-domain
passes could give the two gradients for free, but with batch-norm layers each domain is then
normalised on its own few examples, and at the same weights that cosine was found to differ
from this one, at times in sign.)

:func:`score_clips` and :func:`sdd_scores` give the server's side: bona fide scores of the
global model and the EER on seen and unseen attacks (:func:`fedspeech.metrics.eer`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from fedspeech.augment import Augmentation, build_augmentation
from fedspeech.metrics import eer
from fedspeech.registry import Registry
from fedspeech.training.aligners import ALIGNERS
from fedspeech.training.dual_path import DualPathResult, train_dual_path
from fedspeech.training.local import predict
from fedspeech.training.roga import RoGAResult, path_cosine, train_roga


@dataclass
class SddResult:
    """What a client's local training reports.

    Attributes
    ----------
    num_examples : int
        Clean examples seen (each is also seen augmented).
    loss : float
        Example-weighted mean of ``(loss_clean + loss_aug) / 2`` at the pre-step weights.
    steps : int
        Local steps.
    conflict_rate : float
        Fraction of steps with ``cos(g_clean, g_aug) < 0``, in [0, 1].
    mean_cosine : float
        Mean of that cosine over the steps (NaN without steps).
    """

    num_examples: int
    loss: float
    steps: int
    conflict_rate: float
    mean_cosine: float


def augment_fn(aug: Augmentation, rng: np.random.Generator) -> Callable[[Tensor], Tensor]:
    """``(B, T) → (B, T)``: ``aug`` applied to every row, drawing from ``rng``."""

    def run(x: Tensor) -> Tensor:
        return aug.batch(x, rng)

    return run


@dataclass(frozen=True)
class LocalSettings:
    """What a local trainer is told besides the data (one run's ``--lr``, ``--optimizer``, ...).

    Attributes
    ----------
    lr : float
        Learning rate of the local optimizer (a fresh one each call).
    optimizer : str
        ``adam`` (as in Truong et al.) or ``sgd``.
    momentum : float
        SGD's heavy-ball momentum (``sgd`` only).
    weight_decay : float
        The optimizer's L2 weight decay.
    roga_rho, roga_alpha : float, optional
        RoGA's ascent radius and alignment weight (``roga`` only).
    roga_domains : np.ndarray, optional
        ``(N,)`` integer RoGA domain of each clip; ``None``: the clean and augmented paths
        are the two domains (``roga`` only).
    """

    lr: float
    optimizer: str
    momentum: float = 0.0
    weight_decay: float = 0.0
    roga_rho: float | None = None
    roga_alpha: float | None = None
    roga_domains: np.ndarray | None = None


def _sdd_result(res: DualPathResult | RoGAResult) -> SddResult:
    """What a client reports, from either kind of local run."""
    return SddResult(
        num_examples=res.num_examples,
        loss=res.loss,
        steps=res.steps,
        conflict_rate=res.conflict_rate,
        mean_cosine=res.mean_cosine,
    )


class LocalTrainer(Protocol):
    """A registered local trainer: runs ``batches`` in place on ``model``."""

    def __call__(
        self,
        model: nn.Module,
        waveforms: np.ndarray,
        labels: np.ndarray,
        batches: list[np.ndarray],
        augment: Callable[[Tensor], Tensor],
        settings: LocalSettings,
    ) -> SddResult: ...


LOCAL_TRAINERS: Registry[LocalTrainer] = Registry("alignment")
# The name of RoGA's entry (``--alignment roga``), the one trainer that reads domains.
ROGA = "roga"


def _dual_path_trainer(alignment: str) -> LocalTrainer:
    """DPDA (Truong et al., 2025) with the aligner registered as ``alignment``."""

    def train(
        model: nn.Module,
        waveforms: np.ndarray,
        labels: np.ndarray,
        batches: list[np.ndarray],
        augment: Callable[[Tensor], Tensor],
        settings: LocalSettings,
    ) -> SddResult:
        res = train_dual_path(
            model,
            waveforms,
            labels,
            batches,
            augment=augment,
            alignment=alignment,
            lr=settings.lr,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
            optimizer=settings.optimizer,
        )
        return _sdd_result(res)

    train.__doc__ = f"Dual-path training aligned by {alignment!r} (Truong et al., 2025)."
    return train


for _name in ALIGNERS.names():
    LOCAL_TRAINERS.register(_name)(_dual_path_trainer(_name))


@LOCAL_TRAINERS.register(ROGA)
def _roga(
    model: nn.Module,
    waveforms: np.ndarray,
    labels: np.ndarray,
    batches: list[np.ndarray],
    augment: Callable[[Tensor], Tensor],
    settings: LocalSettings,
) -> SddResult:
    """RoGA (Qiu et al., 2025) on the dual-path batch ``[x; augment(x)]``."""
    domains = settings.roga_domains
    if settings.roga_rho is None or settings.roga_alpha is None:
        raise ValueError("RoGA needs roga_rho and roga_alpha")
    if domains is not None and domains.shape != labels.shape:
        raise ValueError(f"roga_domains {domains.shape} must match labels {labels.shape}")
    res = train_roga(
        model,
        waveforms,
        labels,
        domains,
        batches,
        augment=augment,
        dual_path=True,
        lr=settings.lr,
        optimizer=settings.optimizer,
        weight_decay=settings.weight_decay,
        rho=settings.roga_rho,
        alpha=settings.roga_alpha,
    )
    return _sdd_result(res)


def train_sdd(
    model: nn.Module,
    waveforms: np.ndarray,
    labels: np.ndarray,
    batches: list[np.ndarray],
    *,
    augment: str | Augmentation,
    alignment: str,
    lr: float,
    optimizer: str,
    seed: int | Sequence[int] = 0,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    roga_rho: float | None = None,
    roga_alpha: float | None = None,
    roga_domains: np.ndarray | None = None,
) -> SddResult:
    """Run one client's local training over ``batches``, in place on ``model``.

    Parameters
    ----------
    model : nn.Module
        Starts at the global weights; updated in place (put in train mode).
    waveforms : np.ndarray
        ``(N, T)`` float32 clips of the whole run (may be memory-mapped).
    labels : np.ndarray
        ``(N,)`` int64, 1 = bona fide, 0 = spoof.
    batches : list[np.ndarray]
        Corpus positions per step, from :func:`~fedspeech.training.local.local_batches`.
    augment : str or Augmentation
        The second path's augmentation, e.g. ``"rawboost:4"`` (waveform domain).
    alignment : str
        A name in :data:`LOCAL_TRAINERS`: ``none``, ``pcgrad``, ``gradvac``, ``cagrad``,
        ``upgrad`` or ``roga``.
    lr : float
        Learning rate of the local optimizer (a fresh one each call).
    optimizer : str
        ``adam`` (as in Truong et al.) or ``sgd``.
    seed : int or sequence of int
        Seeds the augmentation's randomness (e.g. ``(seed, round, client)``).
    momentum : float
        SGD's momentum (the dual-path trainers with ``optimizer="sgd"``).
    weight_decay : float
        The local optimizer's L2 weight decay.
    roga_rho, roga_alpha : float, optional
        RoGA's ascent radius and alignment weight (``alignment="roga"`` only).
    roga_domains : np.ndarray, optional
        ``(N,)`` integer RoGA domain of each clip (attack or speaker id, e.g. from
        :func:`fedspeech.tasks.prepare.open_domains`); the batch ``[x; augment(x)]`` gets
        ``[d; d]``. ``None``: the clean and augmented paths are the two domains
        (``--roga-domains path``). ``alignment="roga"`` only.

    Returns
    -------
    SddResult
        Loss, number of examples and steps, and the conflict statistics.

    Raises
    ------
    ConfigError
        Unknown alignment (the error lists the known ones) or augmentation.
    ValueError
        ``roga_domains`` does not match ``labels``.
    """
    trainer = LOCAL_TRAINERS.get(alignment)
    aug = build_augmentation(augment) if isinstance(augment, str) else augment
    settings = LocalSettings(
        lr=lr,
        optimizer=optimizer,
        momentum=momentum,
        weight_decay=weight_decay,
        roga_rho=roga_rho,
        roga_alpha=roga_alpha,
        roga_domains=roga_domains,
    )
    return trainer(
        model, waveforms, labels, batches, augment_fn(aug, np.random.default_rng(seed)), settings
    )


@torch.no_grad()
def score_clips(model: nn.Module, waveforms: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Bona fide scores ``(N,)`` of clips ``(N, T)``: ``logit[1] − logit[0]`` (eval mode).

    Higher means more bona fide, the ASVspoof convention of :mod:`fedspeech.metrics.sdd`.
    """
    return bona_fide_scores(predict(model, waveforms, batch_size))


def bona_fide_scores(logits: torch.Tensor) -> np.ndarray:
    """``logit[1] − logit[0]`` of ``(N, 2)`` logits, as float64 ``(N,)``."""
    if len(logits) == 0:
        return np.zeros(0)
    return (logits[:, 1] - logits[:, 0]).double().numpy()


def sdd_scores(
    scores: np.ndarray, labels: np.ndarray, subsets: dict[str, np.ndarray]
) -> dict[str, float]:
    """EER of each evaluation subset (NaN for a subset without both classes).

    Parameters
    ----------
    scores, labels : np.ndarray
        ``(N,)`` bona fide scores and labels (1 = bona fide) of the scored clips.
    subsets : dict[str, np.ndarray]
        Name → positions into ``scores`` (e.g. ``eer`` → seen attacks, ``eer_unseen`` →
        held-out attacks, each with all bona fide clips).

    Returns
    -------
    dict[str, float]
        Name → EER as a fraction in [0, 1], or NaN where it is undefined.
    """
    out: dict[str, float] = {}
    for name, idx in subsets.items():
        s, lab = scores[idx], labels[idx]
        bona, spoof = s[lab == 1], s[lab == 0]
        out[name] = eer(bona, spoof).eer if len(bona) and len(spoof) else math.nan
    return out


__all__ = [
    "LOCAL_TRAINERS",
    "ROGA",
    "LocalSettings",
    "LocalTrainer",
    "SddResult",
    "augment_fn",
    "bona_fide_scores",
    "path_cosine",
    "score_clips",
    "sdd_scores",
    "train_sdd",
]
