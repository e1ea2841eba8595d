"""Evaluation metrics.

* :mod:`fedspeech.metrics.sdd` -- spoofing / deepfake detection: EER and min t-DCF.
"""

from __future__ import annotations

from fedspeech.metrics.sdd import (
    AsvErrorRates,
    asv_error_rates,
    det_curve,
    eer,
    min_tdcf,
    tdcf_curve,
)

__all__ = ["AsvErrorRates", "asv_error_rates", "det_curve", "eer", "min_tdcf", "tdcf_curve"]
