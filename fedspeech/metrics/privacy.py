"""The privacy budget of a DP run: epsilon at a fixed delta, per client, after each round.

Every private release of a client is a (subsampled) Gaussian mechanism; its Rényi DP is
composed over the releases the client took part in and converted to ``(epsilon, delta)``
with Opacus' RDP analysis (Mironov, "Rényi differential privacy", CSF 2017; Mironov, Talwar,
Zhang, "Rényi differential privacy of the sampled Gaussian mechanism", 2019).

* ``--dp local`` and ``--dp central``: one release per round the client took part in,
  noise multiplier ``Z``, no amplification by sampling (sampling rate 1). For ``central``
  the server adds noise of standard deviation ``Z * C / n`` to the mean of ``n`` clipped
  updates (Flower's wrapper), that is ``Z * C`` to their sum, whose sensitivity to one
  client is ``C``.
* ``--dp sgd``: each local step of a round is a release with sampling rate
  ``batch / client clips`` (Abadi et al., 2016). The client's batches are shuffled, not
  Poisson-sampled: the rate is the usual approximation, as in Opacus' own accounting of a
  shuffled loader.

Examples
--------
>>> ledger = PrivacyLedger("local", noise=1.0, delta=1e-5)
>>> ledger.took_part([0, 1]); e1 = ledger.epsilon()
>>> ledger.took_part([0]); e2 = ledger.epsilon()
>>> 0 < e1 < e2 < float("inf")
True
>>> no_noise = PrivacyLedger("local", noise=0.0, delta=1e-5)
>>> no_noise.took_part([0]); no_noise.epsilon()
inf
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = ["PrivacyLedger"]

# Rényi orders: Opacus' default grid (RDPAccountant.DEFAULT_ALPHAS).
_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


class PrivacyLedger:
    """Releases per client and the epsilon they add up to.

    Parameters
    ----------
    mode : str
        ``"central"``, ``"local"`` or ``"sgd"``.
    noise : float
        The noise multiplier ``Z``.
    delta : float
        The ``delta`` at which epsilon is reported.
    sample_rates, steps : sequence, optional
        Per client (``sgd`` only): the sampling rate of a step (batch / clips) and the
        steps of a round.
    """

    def __init__(
        self,
        mode: str,
        noise: float,
        delta: float,
        sample_rates: Sequence[float] = (),
        steps: Sequence[int] = (),
    ) -> None:
        if mode not in ("central", "local", "sgd"):
            raise ValueError(f"mode must be central, local or sgd, got {mode!r}")
        if mode == "sgd" and len(sample_rates) != len(steps):
            raise ValueError("sample_rates and steps need one entry per client")
        self.mode = mode
        self.noise = noise
        self.delta = delta
        self.sample_rates = list(sample_rates)
        self.steps = list(steps)
        self.rounds: dict[int, int] = {}  # client id -> rounds taken part in

    def __repr__(self) -> str:
        return f"PrivacyLedger(mode={self.mode!r}, noise={self.noise}, delta={self.delta})"

    def took_part(self, clients: Iterable[int]) -> None:
        """Count one round for each of ``clients``."""
        for c in clients:
            self.rounds[int(c)] = self.rounds.get(int(c), 0) + 1

    def client_epsilon(self, client: int) -> float:
        """Epsilon of ``client`` so far (0 before its first round, inf without noise)."""
        rounds = self.rounds.get(int(client), 0)
        if rounds == 0:
            return 0.0
        if self.noise <= 0:
            return math.inf
        if self.mode == "sgd":
            q, steps = float(self.sample_rates[client]), int(self.steps[client]) * rounds
        else:
            q, steps = 1.0, rounds
        # Deferred: Opacus takes 1.5 s to import; only DP runs need it.
        from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

        rdp = compute_rdp(q=min(q, 1.0), noise_multiplier=self.noise, steps=steps, orders=_ORDERS)
        eps, _ = get_privacy_spent(orders=_ORDERS, rdp=rdp, delta=self.delta)
        return float(eps)

    def epsilon(self) -> float:
        """The largest epsilon of any client so far: the run's guarantee."""
        if not self.rounds:
            return 0.0
        return max(self.client_epsilon(c) for c in self.rounds)
