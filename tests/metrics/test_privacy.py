"""The privacy budget: finite, positive, growing with the rounds a client took part in."""

from __future__ import annotations

import math

import pytest

from fedspeech.metrics.privacy import PrivacyLedger


@pytest.mark.parametrize("mode", ["local", "central"])
def test_epsilon_grows_with_rounds(mode: str) -> None:
    ledger = PrivacyLedger(mode, noise=1.0, delta=1e-5)
    seen = []
    for _ in range(5):
        ledger.took_part([0, 1])
        seen.append(ledger.epsilon())
    assert all(0 < e < math.inf for e in seen)
    assert seen == sorted(seen) and seen[0] < seen[-1]


def test_more_noise_gives_a_smaller_epsilon() -> None:
    eps = []
    for z in (0.5, 1.0, 2.0):
        ledger = PrivacyLedger("local", noise=z, delta=1e-5)
        ledger.took_part([0])
        eps.append(ledger.epsilon())
    assert eps[0] > eps[1] > eps[2] > 0


def test_only_the_rounds_a_client_took_part_in_count() -> None:
    ledger = PrivacyLedger("local", noise=1.0, delta=1e-5)
    ledger.took_part([0])
    ledger.took_part([0])
    ledger.took_part([1])
    assert ledger.client_epsilon(1) < ledger.client_epsilon(0) == ledger.epsilon()
    assert ledger.client_epsilon(7) == 0.0


def test_dp_sgd_epsilon_counts_steps_and_sampling() -> None:
    small = PrivacyLedger("sgd", noise=1.0, delta=1e-5, sample_rates=[0.01], steps=[10])
    large = PrivacyLedger("sgd", noise=1.0, delta=1e-5, sample_rates=[0.1], steps=[10])
    for ledger in (small, large):
        ledger.took_part([0])
    assert 0 < small.epsilon() < large.epsilon() < math.inf


def test_no_noise_is_no_guarantee() -> None:
    ledger = PrivacyLedger("central", noise=0.0, delta=1e-5)
    ledger.took_part([0])
    assert ledger.epsilon() == math.inf
    with pytest.raises(ValueError, match="mode"):
        PrivacyLedger("fancy", noise=1.0, delta=1e-5)
