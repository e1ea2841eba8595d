"""Leakage scoring: how much of the client's speech a reconstruction gives away.

* :mod:`~attacks.scoring.quality` -- F-MSE, W-MSE, PESQ (narrow- and wide-band), STOI,
  behind the :data:`METRICS` registry.
* :mod:`~attacks.scoring.speaker` -- speaker re-identification with a pretrained encoder
  (:data:`SPEAKER_MODELS`) and an EER-threshold :class:`SpeakerVerifier`.
* :mod:`~attacks.scoring.content` -- :class:`ContentClassifier`, the keyword "listener".
* :mod:`~attacks.scoring.summary` -- :func:`score_sample` and :func:`summarize`.
"""

from __future__ import annotations

from attacks.scoring.content import ContentClassifier
from attacks.scoring.quality import (
    METRICS,
    Metric,
    align,
    f_mse,
    failure_counts,
    pcm16,
    peak_normalize,
    pesq_nb,
    pesq_wb,
    reset_failure_counts,
    stoi,
    stoi_tiled_count,
    w_mse,
)
from attacks.scoring.speaker import (
    ECAPA_ENV,
    SPEAKER_MODELS,
    EcapaEncoder,
    ResemblyzerEncoder,
    SpeakerEncoder,
    SpeakerVerifier,
    build_speaker_model,
    cosine,
    eer,
    speaker_cosine,
)
from attacks.scoring.summary import SAMPLE_METRICS, score_sample, summarize

__all__ = [
    "ECAPA_ENV",
    "METRICS",
    "SAMPLE_METRICS",
    "SPEAKER_MODELS",
    "ContentClassifier",
    "EcapaEncoder",
    "Metric",
    "ResemblyzerEncoder",
    "SpeakerEncoder",
    "SpeakerVerifier",
    "align",
    "build_speaker_model",
    "cosine",
    "eer",
    "f_mse",
    "failure_counts",
    "pcm16",
    "peak_normalize",
    "pesq_nb",
    "pesq_wb",
    "reset_failure_counts",
    "score_sample",
    "speaker_cosine",
    "stoi",
    "stoi_tiled_count",
    "summarize",
    "w_mse",
]
