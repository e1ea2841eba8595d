"""Spoofing-detection metrics: equal error rate and the ASVspoof 2019 minimum t-DCF.

Scores follow the ASVspoof convention: higher means more bona fide (or, for the ASV
system, more target). A detection curve is evaluated at every distinct score ``t``,
rejecting the trials scoring ``<= t`` (plus one point below all scores, rejecting none),
as in the official ASVspoof 2019 evaluation script. Tied scores are one operating point
(the official script steps through ties one trial at a time, which is order dependent).
The curve and the EER are those of :mod:`fedspeech.metrics.eer`, shared with speaker
verification.

References
----------
Kinnunen, Delgado, Evans, Lee, Vestman, Nautsch, Todisco, Wang, Sahidullah, Yamagishi and
Reynolds, "Tandem assessment of spoofing countermeasures and automatic speaker
verification: Fundamentals", IEEE/ACM TASLP 28, 2020; and the ASVspoof 2019 evaluation
plan (cost model ``π_spoof = 0.05``, ``C_miss = 1``, ``C_fa = 10``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fedspeech.metrics.eer import ArrayLike, det_curve, eer
from fedspeech.metrics.eer import scores_array as _scores

__all__ = [
    "AsvErrorRates",
    "asv_eer_threshold",
    "asv_error_rates",
    "det_curve",
    "eer",
    "min_tdcf",
    "tdcf_curve",
]


def asv_eer_threshold(target: ArrayLike, nontarget: ArrayLike) -> float:
    """The ASV system's EER operating point as the highest score it rejects.

    A :func:`det_curve` threshold, as the ASVspoof reference's ``compute_eer`` returns it;
    ``min − 0.001`` when the EER point accepts every trial.

    Examples
    --------
    >>> asv_eer_threshold([1.0, 4.0, 5.0, 6.0], [0.0, 2.0, 3.0, 7.0])
    3.0
    """
    _, _, thresholds = det_curve(target, nontarget)
    # eer's threshold lies above the highest rejected score and at most the lowest accepted.
    rejected = thresholds[thresholds < eer(target, nontarget).threshold]
    return float(rejected[-1] if rejected.size else thresholds[0])


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
    """ASV false-alarm, miss and spoof-miss rates at ``threshold``.

    As the ASVspoof reference (``obtain_asv_error_rates`` of the t-DCF code): a score equal
    to the threshold is accepted, so a false alarm is a non-target score ``>= threshold`` and
    a miss a target (or spoof) score ``< threshold``. (Its EER threshold, which
    :func:`asv_eer_threshold` reproduces, is the highest score its DET curve rejects: the
    reference itself accepts that score here, and so does this function.)

    Examples
    --------
    >>> asv_error_rates([3.0, 5.0], [1.0, 3.0], [2.0, 4.0], 3.0)
    AsvErrorRates(p_fa=0.5, p_miss=0.0, p_miss_spoof=0.5)
    """
    tar = _scores(target, "ASV target scores")
    non = _scores(nontarget, "ASV non-target scores")
    spf = _scores(spoof, "ASV spoof scores")
    return AsvErrorRates(
        p_fa=float(np.mean(non >= threshold)),
        p_miss=float(np.mean(tar < threshold)),
        p_miss_spoof=float(np.mean(spf < threshold)),
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
        ASV operating point; defaults to the ASV EER operating point
        (:func:`asv_eer_threshold`), as in ASVspoof 2019. As in the reference code, the ASV
        system accepts a score equal to it: its misses are the target and spoof scores below
        it, its false alarms the non-target scores at or above it (:func:`asv_error_rates`).

    Returns
    -------
    tuple[float, float]
        ``(min_tdcf, cm_threshold)``.
    """
    if asv_threshold is None:
        asv_threshold = asv_eer_threshold(asv_target, asv_nontarget)
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
