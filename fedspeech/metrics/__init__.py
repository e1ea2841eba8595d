"""Evaluation metrics.

* :mod:`fedspeech.metrics.eer` -- the equal error rate of any two-class detector (spoofing
  countermeasures, speaker verification), one tie rule for all.
* :mod:`fedspeech.metrics.sdd` -- spoofing / deepfake detection: min t-DCF.
"""

from __future__ import annotations

from fedspeech.metrics.eer import EqualErrorRate, det_curve, eer
from fedspeech.metrics.sdd import (
    AsvErrorRates,
    asv_eer_threshold,
    asv_error_rates,
    min_tdcf,
    tdcf_curve,
)

__all__ = [
    "AsvErrorRates",
    "EqualErrorRate",
    "asv_eer_threshold",
    "asv_error_rates",
    "det_curve",
    "eer",
    "min_tdcf",
    "tdcf_curve",
]
