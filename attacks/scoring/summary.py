"""Per-sample scoring and aggregation over samples.

Examples
--------
>>> summarize([{"stoi": 0.5}, {"stoi": float("nan")}, {"stoi": 0.7}])["stoi"]["n"]
2
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

from attacks.scoring.quality import METRICS

__all__ = ["SAMPLE_METRICS", "score_sample", "summarize"]

# What score_sample reports unless asked otherwise; f_mse compares features, the rest
# waveforms.
SAMPLE_METRICS: tuple[str, ...] = ("f_mse", "w_mse", "pesq_nb", "pesq_wb", "stoi")


def score_sample(
    features_true: np.ndarray | torch.Tensor | None,
    features_rec: np.ndarray | torch.Tensor | None,
    original: np.ndarray,
    reconstruction: np.ndarray,
    sr: int = 16_000,
    *,
    metrics: Sequence[str] = SAMPLE_METRICS,
    **ctx: object,
) -> dict[str, float]:
    """Every metric for one attacked example.

    Parameters
    ----------
    features_true, features_rec : array or None
        ``(F, T)`` true and recovered features, for ``f_mse`` (NaN when either is None,
        e.g. for raw-waveform models).
    original, reconstruction : np.ndarray
        ``(samples,)`` waveforms at ``sr``.
    metrics : sequence of str
        Names in :data:`~attacks.scoring.quality.METRICS`; default :data:`SAMPLE_METRICS`.
    **ctx
        Passed to every waveform metric (e.g. ``encoder=`` for ``speaker_cosine``).

    Returns
    -------
    dict[str, float]
        Metric name -> value (NaN where a metric could not score).
    """
    out: dict[str, float] = {}
    for name in metrics:
        fn = METRICS.get(name)
        if name == "f_mse":
            if features_true is None or features_rec is None:
                out[name] = math.nan
            else:
                out[name] = float(fn(features_true, features_rec))
        else:
            out[name] = float(fn(original, reconstruction, sr, **ctx))
    return out


def summarize(rows: Iterable[Mapping[str, float | bool]]) -> dict[str, dict[str, float]]:
    """Mean, std and count of each metric over samples, ignoring NaN.

    Parameters
    ----------
    rows : iterable of mappings
        One ``{metric: value}`` per sample (booleans count as 0/1); metrics missing from a
        row count as NaN there.

    Returns
    -------
    dict
        ``{metric: {"mean", "std", "n"}}`` in first-seen order: ``n`` counts the non-NaN
        values, ``std`` is the population std (ddof 0); mean and std are NaN when ``n`` is 0.
    """
    values: dict[str, list[float]] = {}
    for row in rows:
        for key, val in row.items():
            values.setdefault(key, []).append(float(val))
    out: dict[str, dict[str, float]] = {}
    for key, vals in values.items():
        arr = np.asarray(vals, dtype=np.float64)
        arr = arr[~np.isnan(arr)]
        n = int(arr.size)
        out[key] = {
            "mean": float(arr.mean()) if n else math.nan,
            "std": float(arr.std()) if n else math.nan,
            "n": n,
        }
    return out
