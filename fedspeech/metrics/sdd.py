"""Spoofing-detection metrics: equal error rate and the ASVspoof 2019 minimum t-DCF.

Scores follow the ASVspoof convention: higher means more bona fide (or, for the ASV
system, more target). A detection curve is evaluated at every distinct score ``t``,
rejecting the trials scoring ``<= t`` (plus one point below all scores, rejecting none),
as in the official ASVspoof 2019 evaluation script. Tied scores are one operating point
(the official script steps through ties one trial at a time, which is order dependent).

References
----------
Kinnunen, Delgado, Evans, Lee, Vestman, Nautsch, Todisco, Wang, Sahidullah, Yamagishi and
Reynolds, "Tandem assessment of spoofing countermeasures and automatic speaker
verification: Fundamentals", IEEE/ACM TASLP 28, 2020; and the ASVspoof 2019 evaluation
plan (cost model ``π_spoof = 0.05``, ``C_miss = 1``, ``C_fa = 10``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "AsvErrorRates",
    "asv_error_rates",
    "det_curve",
    "eer",
    "min_tdcf",
    "tdcf_curve",
]

ArrayLike = np.ndarray | Sequence[float]


def _scores(x: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite scores")
    return arr


def det_curve(
    positive: ArrayLike, negative: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Miss and false-alarm rates at every threshold.

    Parameters
    ----------
    positive : array_like
        ``(N_pos,)`` scores of positive trials (bona fide / target).
    negative : array_like
        ``(N_neg,)`` scores of negative trials (spoof / non-target).

    Returns
    -------
    miss, false_alarm, thresholds : np.ndarray
        Equal-length arrays, thresholds ascending: at ``thresholds[k]`` the positives
        scoring ``<= thresholds[k]`` are missed and the negatives scoring above it are
        false alarms. The first point (threshold ``min − 0.001``) has miss 0, false alarm 1.

    Examples
    --------
    >>> miss, fa, thr = det_curve([2.0, 3.0], [1.0])
    >>> miss.tolist(), fa.tolist(), thr.tolist()
    ([0.0, 0.0, 0.5, 1.0], [1.0, 0.0, 0.0, 0.0], [0.999, 1.0, 2.0, 3.0])
    """
    pos = _scores(positive, "positive scores")
    neg = _scores(negative, "negative scores")
    scores = np.concatenate([pos, neg])
    is_pos = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    order = np.argsort(scores, kind="mergesort")
    scores, is_pos = scores[order], is_pos[order]
    pos_rejected = np.cumsum(is_pos)
    neg_rejected = np.arange(1, scores.size + 1) - pos_rejected
    # Keep the last trial of every run of tied scores: a threshold cannot split a tie.
    last = np.append(scores[1:] != scores[:-1], True)
    miss = np.concatenate([[0.0], pos_rejected[last] / pos.size])
    false_alarm = np.concatenate([[1.0], (neg.size - neg_rejected[last]) / neg.size])
    thresholds = np.concatenate([[scores[0] - 0.001], scores[last]])
    return miss, false_alarm, thresholds


def eer(bonafide_scores: ArrayLike, spoof_scores: ArrayLike) -> tuple[float, float]:
    """Equal error rate and its threshold (ASVspoof definition).

    The operating point where ``|miss − false alarm|`` is smallest; the EER is the mean
    of the two rates there.

    Parameters
    ----------
    bonafide_scores : array_like
        ``(N_bona,)`` scores of bona fide trials (higher = more bona fide).
    spoof_scores : array_like
        ``(N_spoof,)`` scores of spoofed trials.

    Returns
    -------
    tuple[float, float]
        ``(eer, threshold)``, the EER as a fraction; bona fide trials scoring above the
        threshold are accepted.

    Examples
    --------
    >>> eer([0.9, 0.8], [0.1, 0.2])
    (0.0, 0.2)
    """
    miss, false_alarm, thresholds = det_curve(bonafide_scores, spoof_scores)
    k = int(np.argmin(np.abs(miss - false_alarm)))
    return float((miss[k] + false_alarm[k]) / 2.0), float(thresholds[k])


class AsvErrorRates(NamedTuple):
    """ASV error rates at a fixed threshold (fractions)."""

    p_fa: float
    """Non-target trials accepted."""
    p_miss: float
    """Target trials rejected."""
    p_miss_spoof: float
    """Spoofed trials rejected by the ASV system."""


def asv_error_rates(
    target: ArrayLike, nontarget: ArrayLike, spoof: ArrayLike, threshold: float
) -> AsvErrorRates:
    """ASV false-alarm, miss and spoof-miss rates, accepting scores above ``threshold``."""
    tar = _scores(target, "ASV target scores")
    non = _scores(nontarget, "ASV non-target scores")
    spf = _scores(spoof, "ASV spoof scores")
    return AsvErrorRates(
        p_fa=float(np.mean(non > threshold)),
        p_miss=float(np.mean(tar <= threshold)),
        p_miss_spoof=float(np.mean(spf <= threshold)),
    )


def tdcf_curve(
    bonafide_cm: ArrayLike,
    spoof_cm: ArrayLike,
    asv: AsvErrorRates,
    *,
    pi_spoof: float = 0.05,
    target_share: float = 0.99,
    c_miss_asv: float = 1.0,
    c_fa_asv: float = 10.0,
    c_miss_cm: float = 1.0,
    c_fa_cm: float = 10.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised ASVspoof 2019 t-DCF at every CM threshold, for a fixed ASV system.

    ``t-DCF(s) = C1 · P_miss^cm(s) + C2 · P_fa^cm(s)`` with
    ``C1 = π_tar (C_miss^cm − C_miss^asv P_miss^asv) − π_non C_fa^asv P_fa^asv`` and
    ``C2 = C_fa^cm π_spoof (1 − P_miss,spoof^asv)``, divided by ``min(C1, C2)`` (the cost
    of the better of accepting or rejecting everything), where
    ``π_tar = (1 − π_spoof) · target_share`` and ``π_non = (1 − π_spoof)(1 − target_share)``.

    Returns
    -------
    tdcf, thresholds : np.ndarray
        Normalised t-DCF and CM thresholds (see :func:`det_curve`).
    """
    p_tar = (1.0 - pi_spoof) * target_share
    p_non = (1.0 - pi_spoof) * (1.0 - target_share)
    c1 = p_tar * (c_miss_cm - c_miss_asv * asv.p_miss) - p_non * c_fa_asv * asv.p_fa
    c2 = c_fa_cm * pi_spoof * (1.0 - asv.p_miss_spoof)
    if c1 <= 0 or c2 <= 0:
        raise ValueError(
            f"t-DCF weights must be positive, got C1={c1:.6g}, C2={c2:.6g} "
            "(check the ASV error rates and costs)"
        )
    miss, false_alarm, thresholds = det_curve(bonafide_cm, spoof_cm)
    return (c1 * miss + c2 * false_alarm) / min(c1, c2), thresholds


def min_tdcf(
    bonafide_cm: ArrayLike,
    spoof_cm: ArrayLike,
    asv_target: ArrayLike,
    asv_nontarget: ArrayLike,
    asv_spoof: ArrayLike,
    *,
    pi_spoof: float = 0.05,
    target_share: float = 0.99,
    c_miss_asv: float = 1.0,
    c_fa_asv: float = 10.0,
    c_miss_cm: float = 1.0,
    c_fa_cm: float = 10.0,
    asv_threshold: float | None = None,
) -> tuple[float, float]:
    """Minimum normalised t-DCF of a CM in tandem with an ASV system (ASVspoof 2019).

    Parameters
    ----------
    bonafide_cm, spoof_cm : array_like
        CM scores of bona fide and spoofed trials.
    asv_target, asv_nontarget, asv_spoof : array_like
        ASV scores of target, zero-effort non-target and spoofed trials.
    pi_spoof : float
        Prior of a spoofing attack (0.05).
    target_share : float
        Share of targets among non-spoof trials (0.99), so ``π_tar = 0.9405``.
    c_miss_asv, c_fa_asv, c_miss_cm, c_fa_cm : float
        Costs (1, 10, 1, 10).
    asv_threshold : float, optional
        ASV operating point; defaults to the ASV EER threshold, as in ASVspoof 2019.

    Returns
    -------
    tuple[float, float]
        ``(min_tdcf, cm_threshold)``.
    """
    if asv_threshold is None:
        asv_threshold = eer(asv_target, asv_nontarget)[1]
    rates = asv_error_rates(asv_target, asv_nontarget, asv_spoof, asv_threshold)
    curve, thresholds = tdcf_curve(
        bonafide_cm,
        spoof_cm,
        rates,
        pi_spoof=pi_spoof,
        target_share=target_share,
        c_miss_asv=c_miss_asv,
        c_fa_asv=c_fa_asv,
        c_miss_cm=c_miss_cm,
        c_fa_cm=c_fa_cm,
    )
    k = int(np.argmin(curve))
    return float(curve[k]), float(thresholds[k])
