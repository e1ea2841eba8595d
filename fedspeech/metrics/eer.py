"""Equal error rate of a two-class detector: one definition for every caller.

Spoofing countermeasures (bona fide vs spoof scores, :mod:`fedspeech.metrics.sdd`) and speaker
verification (same- vs different-speaker similarities, :mod:`attacks.scoring.speaker`) both
use :func:`eer`. Scores are "higher = more positive" (bona fide, same speaker, target).

Operating points and ties
-------------------------
A threshold cannot split tied scores, so the curve is evaluated over the distinct scores
``u_1 < ... < u_m`` only: operating point ``k`` (``0 <= k <= m``) rejects every trial scoring
``<= u_k`` (point 0 rejects none, point ``m`` rejects all). Its false-reject rate ``FRR_k``
(positives rejected, "miss") rises with ``k`` and its false-accept rate ``FAR_k`` (negatives
accepted, "false alarm") falls, so ``FRR − FAR`` crosses zero once.

EER rule (no interpolation between operating points, as in the ASVspoof evaluation
scripts): the operating point nearest the crossing, i.e. with the smallest
``|FAR − FRR|``, and the EER is ``(FAR + FRR) / 2`` there. When the crossing lies exactly
halfway between two operating points (equal ``|FAR − FRR|``, compared exactly on trial
counts, not in floating point), the one with the smaller ``FAR + FRR`` is taken, then the
lower threshold. This rule is symmetric (swapping the classes and negating the scores gives
the same EER), and the returned threshold reaches exactly the rates the EER is made of.

References
----------
ASVspoof 2019 evaluation plan and its ``compute_eer`` (Todisco et al., Interspeech 2019);
Kinnunen et al., "Tandem assessment of spoofing countermeasures and automatic speaker
verification: Fundamentals", IEEE/ACM TASLP 28, 2020.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["EqualErrorRate", "det_curve", "eer"]

ArrayLike = np.ndarray | Sequence[float]


class EqualErrorRate(NamedTuple):
    """What :func:`eer` returns; unpacks as ``(eer, threshold)``."""

    eer: float
    """The equal error rate, a fraction in [0, 1]."""
    threshold: float
    """Accept a trial when its score is ``>= threshold``: this reaches the EER's rates."""


def scores_array(x: ArrayLike, name: str) -> np.ndarray:
    """``x`` as a flat float64 array; refuses empty input and NaN or infinite scores."""
    arr = np.asarray(x, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite scores")
    return arr


def _operating_points(
    positive: ArrayLike, negative: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Distinct scores ``(m,)`` and the misses and false alarms ``(m + 1,)`` (counts).

    Point ``k`` rejects the trials scoring ``<= levels[k - 1]`` (point 0 rejects none).
    """
    pos = scores_array(positive, "positive scores")
    neg = scores_array(negative, "negative scores")
    scores = np.concatenate([pos, neg])
    is_pos = np.concatenate([np.ones(pos.size, np.int64), np.zeros(neg.size, np.int64)])
    order = np.argsort(scores, kind="mergesort")
    scores, is_pos = scores[order], is_pos[order]
    pos_rejected = np.cumsum(is_pos)
    neg_rejected = np.arange(1, scores.size + 1) - pos_rejected
    # Keep the last trial of every run of tied scores: a threshold cannot split a tie.
    last = np.append(scores[1:] != scores[:-1], True)
    missed = np.concatenate([[0], pos_rejected[last]])
    false_alarms = np.concatenate([[neg.size], neg.size - neg_rejected[last]])
    return scores[last], missed, false_alarms, pos.size, neg.size


def det_curve(
    positive: ArrayLike, negative: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Miss and false-alarm rates at every operating point (distinct thresholds only).

    Parameters
    ----------
    positive : array_like
        ``(N_pos,)`` scores of positive trials (bona fide / target / same speaker).
    negative : array_like
        ``(N_neg,)`` scores of negative trials (spoof / non-target / different speakers).

    Returns
    -------
    miss, false_alarm, thresholds : np.ndarray
        Equal-length arrays, thresholds ascending: at ``thresholds[k]`` the positives
        scoring ``<= thresholds[k]`` are missed and the negatives scoring above it are
        false alarms. The first point (threshold ``min − 0.001``) has miss 0, false alarm 1.

    Raises
    ------
    ValueError
        Either set is empty or holds NaN or infinite scores.

    Examples
    --------
    >>> miss, fa, thr = det_curve([2.0, 3.0], [1.0])
    >>> miss.tolist(), fa.tolist(), thr.tolist()
    ([0.0, 0.0, 0.5, 1.0], [1.0, 0.0, 0.0, 0.0], [0.999, 1.0, 2.0, 3.0])
    """
    levels, missed, false_alarms, n_pos, n_neg = _operating_points(positive, negative)
    thresholds = np.concatenate([[levels[0] - 0.001], levels])
    return missed / n_pos, false_alarms / n_neg, thresholds


def eer(positive: ArrayLike, negative: ArrayLike) -> EqualErrorRate:
    """Equal error rate and a threshold that reaches it (rule in the module docstring).

    Parameters
    ----------
    positive : array_like
        ``(N_pos,)`` scores of positive trials (bona fide, same-speaker pairs), higher =
        more positive.
    negative : array_like
        ``(N_neg,)`` scores of negative trials (spoofs, different-speaker pairs).

    Returns
    -------
    EqualErrorRate
        ``(eer, threshold)``: ``eer = (FAR + FRR) / 2`` at the operating point nearest the
        crossing of FAR and FRR; accepting scores ``>= threshold`` gives exactly that
        point's FAR and FRR. The threshold is the midpoint between the highest rejected and
        the lowest accepted distinct score, the lowest score when all are accepted, and
        just above the highest when all are rejected.

    Raises
    ------
    ValueError
        Either set is empty or holds NaN or infinite scores.

    Examples
    --------
    FAR = FRR = 1/4 for thresholds in (0.4, 0.5]:

    >>> eer([0.9, 0.8, 0.7, 0.4], [0.5, 0.3, 0.2, 0.1])
    EqualErrorRate(eer=0.25, threshold=0.45)

    Equally near the crossing: (FRR, FAR) = (1/3, 1/2) on (1, 2] and (2/3, 1/2) on (2, 3];
    the first has the lower error, 5/12:

    >>> rate, threshold = eer([1, 2, 3], [0, 4])
    >>> round(rate, 4), threshold
    (0.4167, 1.5)
    """
    levels, missed, false_alarms, n_pos, n_neg = _operating_points(positive, negative)
    # |FRR − FAR| and FRR + FAR, both times N_pos · N_neg: exact integers, so ties are ties.
    gap = np.abs(missed * n_neg - false_alarms * n_pos)
    total = missed * n_neg + false_alarms * n_pos
    nearest = np.flatnonzero(gap == gap.min())
    k = int(nearest[np.argmin(total[nearest])])
    rate = float((missed[k] / n_pos + false_alarms[k] / n_neg) / 2.0)
    if k == 0:  # accept all
        threshold = float(levels[0])
    elif k == len(levels):  # reject all
        threshold = float(np.nextafter(levels[-1], np.inf))
    else:
        lo, hi = float(levels[k - 1]), float(levels[k])
        mid = (lo + hi) / 2.0
        threshold = mid if lo < mid else hi  # adjacent floats: no value lies between
    return EqualErrorRate(rate, threshold)
