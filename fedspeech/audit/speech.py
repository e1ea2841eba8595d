"""Public speech the audit's attacker may use: eSpeak NG words for the MFCC CMVN prior.

:func:`attacks.waveform.cmvn_prior` has a stored table for the study's MFCC settings; for
any other settings it estimates the prior from speech its caller supplies. The audit
supplies :func:`espeak_words`, synthesised offline with the project's eSpeak NG engine
(no corpus of the run is involved: the attacker does not know the clients' speech).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from fedspeech.data.audio import resample
from fedspeech.data.corpus import fix_length
from fedspeech.data.espeak import ESpeak

__all__ = ["espeak_words"]

# Digits and command words, several accents and voice variants so that no single vocal
# tract dominates.
_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
          "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")  # fmt: skip
_VOICES = ("en-US", "en-GB-x-rp+f2", "en-US+m3", "en+f4", "en-GB-scotland+m7")


@lru_cache(maxsize=4)
def espeak_words(sample_rate: int) -> np.ndarray:
    """One-second eSpeak NG words ``(N, sample_rate)`` float32, each peak-normalised to 0.9.

    Twenty keywords in five voices (fewer if a synthesis comes back silent), made once per
    process and rate: every caller gets the same array, not to be modified.

    Raises
    ------
    FedspeechError
        eSpeak NG cannot run.
    """
    engine = ESpeak()
    clips = []
    for i, word in enumerate(_WORDS):
        for j, voice in enumerate(_VOICES):
            raw = engine.synth(word, voice=voice, pitch=35 + 7 * j, seed=i)
            if raw.size == 0 or not np.any(raw):
                continue
            y = resample(raw, engine.sample_rate, sample_rate).astype(np.float32)
            y = fix_length(y, sample_rate)
            clips.append(0.9 * y / np.abs(y).max())
    return np.stack(clips)
