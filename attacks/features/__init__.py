"""Stage 1 of the attack: recover the input features by gradient matching.

Minimise ``d(g_shared, grad_theta L(f(u), y)) + tv_weight * TV(u)`` over features ``u`` of
shape ``(B, F, T)`` (Zhu et al., DLG; Geiping et al., "Inverting gradients"; for speech,
Li, Zhang, Liu). :func:`reconstruct_plain` is the study's algorithm, the benchmark
baseline; :func:`reconstruct` is the same optimisation with early stopping and many
targets batched together (:mod:`~attacks.features.batched`), optionally split over worker
processes (:mod:`~attacks.features.workers`). Both take one frozen
:class:`Stage1Settings`, which checks its values when it is built.
"""

from __future__ import annotations

from attacks.features.fast import reconstruct
from attacks.features.objective import (
    DISTANCES,
    TV_REDUCTIONS,
    GradientDistance,
    GradStats,
    Reconstruction,
    cosine_distance,
    initial_features,
    l2_distance,
    total_variation,
)
from attacks.features.plain import reconstruct_plain
from attacks.features.settings import PRESETS, Stage1Settings, setting_name

__all__ = [
    "DISTANCES",
    "PRESETS",
    "TV_REDUCTIONS",
    "GradStats",
    "GradientDistance",
    "Reconstruction",
    "Stage1Settings",
    "cosine_distance",
    "initial_features",
    "l2_distance",
    "reconstruct",
    "reconstruct_plain",
    "setting_name",
    "total_variation",
]
