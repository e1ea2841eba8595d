"""EER and min t-DCF against small cases worked out by hand."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from fedspeech.metrics import (
    asv_eer_threshold,
    asv_error_rates,
    det_curve,
    eer,
    min_tdcf,
    tdcf_curve,
)

# Shared worked example.
# CM scores, sorted: 0.1 s, 0.2 b, 0.3 s, 0.5 s, 0.6 s, 0.8 b, 0.9 b  (3 bona fide, 4 spoofs).
# Rejecting scores <= t, the (miss, false alarm) points are
#   t < 0.1: (0, 4/4)   t=0.1: (0, 3/4)   t=0.2: (1/3, 3/4)   t=0.3: (1/3, 2/4)
#   t=0.5: (1/3, 1/4)   t=0.6: (1/3, 0)   t=0.8: (2/3, 0)     t=0.9: (1, 0)
BONA = [0.2, 0.8, 0.9]
SPOOF = [0.1, 0.3, 0.5, 0.6]


def test_det_curve_points() -> None:
    miss, fa, thr = det_curve(BONA, SPOOF)
    np.testing.assert_allclose(miss, [0, 0, 1 / 3, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(fa, [1, 3 / 4, 3 / 4, 2 / 4, 1 / 4, 0, 0, 0])
    np.testing.assert_allclose(thr, [0.099, 0.1, 0.2, 0.3, 0.5, 0.6, 0.8, 0.9])


def test_eer_perfect_separation_is_zero() -> None:
    # Rejecting everything up to the best spoof (0.4) misses no bona fide trial; the
    # threshold lies halfway to the lowest bona fide score (0.7).
    value, threshold = eer([0.7, 0.9, 0.8], [0.1, 0.4, 0.3])
    assert value == 0.0
    assert threshold == pytest.approx(0.55)


def test_eer_mixed_case() -> None:
    # |miss - fa| along the curve: 1, 3/4, 5/12, 1/6, 1/12, 1/3, 2/3, 1 -> smallest when
    # rejecting up to 0.5, where miss = 1/3 and fa = 1/4, so EER = (1/3 + 1/4) / 2 = 7/24;
    # accepting from halfway to the next score (0.6) on reaches it.
    value, threshold = eer(BONA, SPOOF)
    assert value == pytest.approx(7 / 24)
    assert threshold == pytest.approx(0.55)


def test_eer_tie_rule_is_one_value_for_every_caller() -> None:
    from attacks.scoring.speaker import eer as speaker_eer
    from fedspeech.training.sdd import sdd_scores

    # (FRR, FAR) = (1/3, 1/2) on (1, 2] and (2/3, 1/2) on (2, 3]: equally near the crossing
    # (|FAR - FRR| = 1/6); the one with the lower error, 5/12, is taken. (Before the shared
    # EER, the spoofing metric gave 7/12 here and the speaker verifier 5/12.)
    bona, spoof = [1.0, 2.0, 3.0], [0.0, 4.0]
    assert speaker_eer is eer
    assert eer(bona, spoof) == (pytest.approx(5 / 12), 1.5)
    scores, labels = np.array(bona + spoof), np.array([1, 1, 1, 0, 0])
    assert sdd_scores(scores, labels, {"eer": np.arange(5)})["eer"] == eer(bona, spoof).eer
    # Symmetric: swapping the classes and negating the scores changes nothing.
    assert eer([-s for s in spoof], [-s for s in bona]).eer == eer(bona, spoof).eer


def _eer_by_the_rule(pos: list[int], neg: list[int]) -> tuple[Fraction, int, int]:
    """The rule in exact arithmetic, brute force: (eer, #pos rejected, #neg accepted)."""
    points = []
    for t in [min(pos + neg) - 1, *sorted(set(pos + neg))]:  # reject scores <= t
        frr = Fraction(sum(p <= t for p in pos), len(pos))
        far = Fraction(sum(n > t for n in neg), len(neg))
        points.append((abs(far - frr), far + frr, t, frr, far))
    gap, total, t, frr, far = min(points)
    return total / 2, sum(p <= t for p in pos), sum(n > t for n in neg)


def test_eer_matches_the_rule_on_tied_integer_scores() -> None:
    rng = np.random.default_rng(1)
    for _ in range(300):
        pos = rng.integers(0, 6, rng.integers(1, 8)).tolist()
        neg = rng.integers(-2, 4, rng.integers(1, 8)).tolist()
        value, threshold = eer(pos, neg)
        expected, missed, false_alarms = _eer_by_the_rule(pos, neg)
        assert value == pytest.approx(float(expected), abs=1e-15)
        # The threshold reaches exactly the point the EER is made of.
        assert sum(p < threshold for p in pos) == missed
        assert sum(n >= threshold for n in neg) == false_alarms
        assert eer([-n for n in neg], [-p for p in pos]).eer == pytest.approx(value, abs=1e-15)


def test_eer_inverted_and_tied_scores() -> None:
    # Every spoof above every bona fide: the curve passes through (1, 1), EER = 1.
    assert eer([0.1, 0.2], [0.8, 0.9])[0] == pytest.approx(1.0)
    # All scores equal: only "accept all" (0, 1) and "reject all" (1, 0) exist, EER = 1/2.
    assert eer([0.5, 0.5], [0.5, 0.5])[0] == pytest.approx(0.5)


def test_eer_matches_brute_force_on_random_scores() -> None:
    rng = np.random.default_rng(0)
    bona, spoof = rng.normal(1.0, 1.0, 200), rng.normal(-1.0, 1.0, 300)
    candidates = np.concatenate([[-np.inf], np.sort(np.concatenate([bona, spoof]))])
    miss = np.array([np.mean(bona <= t) for t in candidates])
    fa = np.array([np.mean(spoof > t) for t in candidates])
    k = np.argmin(np.abs(miss - fa))
    assert eer(bona, spoof)[0] == pytest.approx((miss[k] + fa[k]) / 2)
    assert 0.1 < eer(bona, spoof)[0] < 0.2  # two unit Gaussians 2 apart: EER ~ 0.159


# ASV scores, sorted: 0 n, 1 t, 2 n, 3 n, 4 t, 5 t, 6 t, 7 n (4 targets, 4 non-targets).
# Its curve reaches miss = fa = 1/4 at t = 3 (target 1 missed, non-target 7 accepted), so
# the ASV EER threshold is 3, P_miss_asv = P_fa_asv = 1/4, and of the spoofs
# [0.5, 3.5, 8, 9] one (0.5) is rejected: P_miss_spoof_asv = 1/4.
ASV_TAR = [1.0, 4.0, 5.0, 6.0]
ASV_NON = [0.0, 2.0, 3.0, 7.0]
ASV_SPOOF = [0.5, 3.5, 8.0, 9.0]


def test_asv_error_rates_at_eer_threshold() -> None:
    assert eer(ASV_TAR, ASV_NON) == (0.25, 3.5)
    assert asv_eer_threshold(ASV_TAR, ASV_NON) == 3.0
    rates = asv_error_rates(ASV_TAR, ASV_NON, ASV_SPOOF, 3.0)
    # The ASVspoof reference (obtain_asv_error_rates) accepts a score equal to the
    # threshold: the non-target 3.0 is a false alarm, so 2 of 4.
    assert (rates.p_fa, rates.p_miss, rates.p_miss_spoof) == (0.5, 0.25, 0.25)


def test_a_target_score_at_the_threshold_is_not_a_miss() -> None:
    # As the reference counts it: only target (and spoof) scores below the threshold.
    rates = asv_error_rates([2.0, 3.0, 4.0], [1.0], [3.0, 0.0], 3.0)
    assert (rates.p_miss, rates.p_miss_spoof) == (pytest.approx(1 / 3), 0.5)


def test_min_tdcf_hand_computed() -> None:
    # Priors: pi_tar = 0.95 * 0.99 = 0.9405, pi_non = 0.95 * 0.01 = 0.0095, pi_spoof = 0.05.
    # ASV at its EER threshold 3.0: P_miss 0.25, P_fa 0.5, P_miss_spoof 0.25 (above).
    # C1 = 0.9405 * (1 - 1 * 0.25) - 0.0095 * 10 * 0.5 = 0.705375 - 0.0475 = 0.657875
    # C2 = 10 * 0.05 * (1 - 0.25) = 0.375, so min(C1, C2) = C2 and
    # t-DCF_norm(t) = (C1 / C2) * miss(t) + fa(t) = 1.7543333 * miss + fa. On the CM curve:
    #   1, 0.75, 1.335, 1.085, 0.835, 0.585 (t=0.6: miss 1/3, fa 0), 1.170, 1.754
    # so the minimum is C1 / C2 / 3 = 0.657875 / 1.125 = 0.5847778 at t = 0.6.
    value, threshold = min_tdcf(BONA, SPOOF, ASV_TAR, ASV_NON, ASV_SPOOF)
    assert value == pytest.approx(0.657875 / 1.125)
    assert threshold == pytest.approx(0.6)
    curve, _ = tdcf_curve(BONA, SPOOF, asv_error_rates(ASV_TAR, ASV_NON, ASV_SPOOF, 3.0))
    c1_over_c2 = 0.657875 / 0.375
    miss, fa, _ = det_curve(BONA, SPOOF)
    np.testing.assert_allclose(curve, c1_over_c2 * miss + fa)


def test_min_tdcf_perfect_and_useless_cm() -> None:
    # A perfect CM has an operating point with no misses and no false alarms: t-DCF 0.
    assert min_tdcf([0.9, 0.8], [0.1, 0.2], ASV_TAR, ASV_NON, ASV_SPOOF)[0] == 0.0
    # A CM giving one score to all can only accept all (cost C2) or reject all (cost C1);
    # normalised by min(C1, C2) the best is exactly 1.
    assert min_tdcf([0.5] * 3, [0.5] * 4, ASV_TAR, ASV_NON, ASV_SPOOF)[0] == pytest.approx(1.0)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="empty"):
        eer([], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        eer([np.nan, 0.2], [0.1])
    # An ASV system rejecting every spoof leaves the CM nothing to prevent (C2 = 0).
    with pytest.raises(ValueError, match="positive"):
        min_tdcf(BONA, SPOOF, ASV_TAR, ASV_NON, [-5.0, -6.0])


def test_min_tdcf_when_the_lowest_target_score_is_the_asv_threshold() -> None:
    # ASV: targets 3, 4, 5, 6; non-targets 0, 1, 2, 3.5; spoofs 3, 8, 9. Its EER point
    # (0.25) rejects 0, 1, 2, 3: the threshold is 3.0, the lowest target score.
    tar, non, spf = [3.0, 4.0, 5.0, 6.0], [0.0, 1.0, 2.0, 3.5], [3.0, 8.0, 9.0]
    assert asv_eer_threshold(tar, non) == 3.0
    # The reference accepts a score equal to the threshold: P_miss = 0 (the target at 3.0
    # is not a miss), P_fa = 1/4 (3.5), P_miss_spoof = 0 (the spoof at 3.0 gets through).
    # C1 = 0.9405 * (1 - 0) - 0.0095 * 10 * 0.25 = 0.91675; C2 = 10 * 0.05 * (1 - 0) = 0.5.
    # t-DCF_norm = (C1 / C2) * miss + fa = 1.8335 * miss + fa over the CM curve's points
    # (0, 1), (0, 0.75), (1/3, 0.75), (1/3, 0.5), (1/3, 0.25), (1/3, 0), (2/3, 0), (1, 0):
    # the least is 1.8335 / 3 = 0.6111667 at (1/3, 0). Counting the tied target as a miss
    # (and the tied spoof as rejected) would give 0.6816 instead.
    value, threshold = min_tdcf(BONA, SPOOF, tar, non, spf)
    assert value == pytest.approx(0.91675 / 0.5 / 3)
    assert threshold == pytest.approx(0.6)
