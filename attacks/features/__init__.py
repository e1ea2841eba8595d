"""Stage 1 of the attack: recover the input features by gradient matching.

Minimise ``d(g_shared, grad_theta L(f(u), y)) + tv_weight * TV(u)`` over features ``u`` of
shape ``(B, F, T)`` (Zhu et al., DLG; Geiping et al., "Inverting gradients"; for speech,
Li, Zhang, Liu). :func:`reconstruct_plain` is the study's algorithm, the benchmark
baseline; :func:`reconstruct` is the same optimisation with early stopping and many
targets batched together.
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

__all__ = [
    "DISTANCES",
    "TV_REDUCTIONS",
    "GradStats",
    "GradientDistance",
    "Reconstruction",
    "cosine_distance",
    "initial_features",
    "l2_distance",
    "reconstruct",
    "reconstruct_plain",
    "total_variation",
]
