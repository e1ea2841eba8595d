"""Stage 2 of the attack: features -> waveform, by front-end name.

See :mod:`attacks.waveform.stage2` (Li, Zhang & Liu's NNLS + Griffin-Lim inversion) and
:mod:`attacks.waveform.cmvn_prior` (the attacker's guess of MFCC normalisation statistics).
"""

from __future__ import annotations

from attacks.waveform.cmvn_prior import CmvnStats, cmvn_prior, estimate_cmvn_prior
from attacks.waveform.stage2 import (
    DEFAULT_N_ITER,
    INVERTERS,
    Inverter,
    features_to_wave,
    griffin_lim,
    invert_mel,
    invert_mfcc,
    invert_raw,
    mel_to_magnitude,
    mfcc_to_mel,
    true_cmvn_stats,
    undo_preemphasis,
)

__all__ = [
    "DEFAULT_N_ITER",
    "INVERTERS",
    "CmvnStats",
    "Inverter",
    "cmvn_prior",
    "estimate_cmvn_prior",
    "features_to_wave",
    "griffin_lim",
    "invert_mel",
    "invert_mfcc",
    "invert_raw",
    "mel_to_magnitude",
    "mfcc_to_mel",
    "true_cmvn_stats",
    "undo_preemphasis",
]
