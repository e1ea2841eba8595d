"""Minimal ctypes binding to eSpeak NG, as shipped by the ``espeakng-loader`` wheel.

Only what the synthetic keyword corpus needs: pick a voice (accent + variant), set rate and
pitch, and render a short text to a float32 waveform at :data:`ESPEAK_SAMPLE_RATE`.

eSpeak NG keeps its state in C globals and is not thread-safe, so the library is initialised
once per process and every :class:`ESpeak` handle in a process shares it behind a lock. Use
separate processes, not threads, for parallel synthesis.

Reproducibility caveat: besides its random generator (seeded on every call here), eSpeak NG
carries waveform state from one utterance to the next (flutter and glottal phase, echo
buffer, ...) that neither voice changes nor ``espeak_Terminate`` reset. The same call sequence
in a fresh process gives identical samples; the same single call after a different history
does not. Callers that need byte-identical output must control the whole sequence, as
:mod:`fedspeech.data.synth` does with one fresh process per speaker.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

import numpy as np

from fedspeech.errors import DataError

ESPEAK_SAMPLE_RATE = 22_050

# English accents: label -> eSpeak voice file under lang/gmw/. British English lives in the
# file "en" (espeak_SetVoiceByName does not know "en-gb"). "en-Shaw" is left out on purpose:
# it expects text in the Shavian alphabet.
ACCENT_VOICES: dict[str, str] = {
    "en-us": "en-US",
    "en-gb": "en",
    "en-gb-scotland": "en-GB-scotland",
    "en-gb-x-rp": "en-GB-x-rp",
    "en-gb-x-gbclan": "en-GB-x-gbclan",
    "en-gb-x-gbcwmd": "en-GB-x-gbcwmd",
    "en-029": "en-029",
    "en-us-nyc": "en-US-nyc",
}

RATE_MIN = 80
RATE_MAX = 450

# Values from speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_PARAM_WORDGAP = 7

# Below eSpeak's nominal 100 so that loud variants do not saturate its int16 output; the
# corpus renormalises the level anyway.
_VOLUME = 60


class _EventId(ctypes.Union):
    _fields_ = [
        ("number", ctypes.c_int),
        ("name", ctypes.c_char_p),
        ("string", ctypes.c_char * 8),
    ]


class _Event(ctypes.Structure):
    """``espeak_EVENT``; never read here, declared so the callback prototype is faithful."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


# int SynthCallback(short *wav, int numsamples, espeak_EVENT *events)
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


def _locate() -> tuple[str, str]:
    """Paths of the shared library and of the ``espeak-ng-data`` folder."""
    try:
        import espeakng_loader
    except ImportError as exc:
        raise DataError(
            "the built-in synthetic corpus needs eSpeak NG: pip install espeakng-loader"
        ) from exc
    try:
        lib_path = str(espeakng_loader.get_library_path())
        data_path = str(espeakng_loader.get_data_path())
    except Exception as exc:  # the loader raises a bare RuntimeError for a broken install
        raise DataError(f"espeakng-loader cannot find eSpeak NG: {exc}") from exc
    if not Path(lib_path).is_file():
        raise DataError(f"eSpeak NG library not found at {lib_path}")
    return lib_path, data_path


class _Engine:
    """The process-wide initialised library plus the buffer its callback fills."""

    def __init__(self) -> None:
        lib_path, data_path = _locate()
        try:
            lib = ctypes.CDLL(lib_path)
        except OSError as exc:
            raise DataError(f"cannot load the eSpeak NG library {lib_path}: {exc}") from exc

        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,  # text
            ctypes.c_size_t,  # size
            ctypes.c_uint,  # position
            ctypes.c_int,  # position_type
            ctypes.c_uint,  # end_position
            ctypes.c_uint,  # flags
            ctypes.POINTER(ctypes.c_uint),  # unique_identifier
            ctypes.c_void_p,  # user_data
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        self.set_rand_seed = getattr(lib, "espeak_ng_SetRandSeed", None)
        if self.set_rand_seed is not None:
            self.set_rand_seed.argtypes = [ctypes.c_long]
            self.set_rand_seed.restype = None
        # The speechPlayer back end (some Klatt variants) draws from libc rand() instead.
        # CDLL(None) is the process's global namespace, which holds libc on POSIX.
        self.libc_srand = getattr(ctypes.CDLL(None), "srand", None) if os.name == "posix" else None
        if self.libc_srand is not None:
            self.libc_srand.argtypes = [ctypes.c_uint]
            self.libc_srand.restype = None

        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, os.fsencode(data_path), _INITIALIZE_DONT_EXIT
        )
        if rate < 0:
            raise DataError(f"eSpeak NG failed to initialise with data folder {data_path}")
        if rate != ESPEAK_SAMPLE_RATE:
            raise DataError(f"eSpeak NG reports {rate} Hz, expected {ESPEAK_SAMPLE_RATE} Hz")

        self.lib = lib
        self.data_path = data_path
        self.chunks: list[np.ndarray] = []
        # The C side keeps only a raw pointer: the ctypes thunk must live as long as the engine.
        self.callback = _SYNTH_CALLBACK(self._on_audio)
        lib.espeak_SetSynthCallback(self.callback)

    def _on_audio(self, wav: ctypes._Pointer[ctypes.c_short], n: int, _events: object) -> int:
        # NULL marks the end of synthesis; zero-length buffers also occur mid-way.
        if wav and n > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def seed(self, seed: int) -> None:
        if self.set_rand_seed is not None:
            self.set_rand_seed(seed)
        if self.libc_srand is not None:
            self.libc_srand(seed & 0xFFFFFFFF)


_LOCK = threading.RLock()
_ENGINE: _Engine | None = None


def _engine() -> _Engine:
    global _ENGINE
    with _LOCK:
        if _ENGINE is None:
            _ENGINE = _Engine()
        return _ENGINE


def list_variants() -> list[str]:
    """Names of the voice variants (files in ``voices/!v``) in the eSpeak NG data, sorted."""
    _, data_path = _locate()
    folder = Path(data_path) / "voices" / "!v"
    if not folder.is_dir():
        raise DataError(f"eSpeak NG data has no voice variants folder: {folder}")
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def list_accents() -> list[str]:
    """Labels of :data:`ACCENT_VOICES` whose voice file exists in the eSpeak NG data."""
    _, data_path = _locate()
    folder = Path(data_path) / "lang" / "gmw"
    present = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    return [label for label, file in ACCENT_VOICES.items() if file in present]


def voice_name(accent: str, variant: str | None = None) -> str:
    """eSpeak voice name for an accent label of :data:`ACCENT_VOICES` and an optional variant."""
    try:
        base = ACCENT_VOICES[accent]
    except KeyError:
        raise DataError(f"unknown accent {accent!r}; known: {', '.join(ACCENT_VOICES)}") from None
    return f"{base}+{variant}" if variant else base


class ESpeak:
    """Handle on the process-wide eSpeak NG engine.

    Several handles in one process share one initialised library; calls are serialised by a
    lock. Raises :class:`~fedspeech.errors.DataError` if the library or its data cannot be
    loaded.
    """

    sample_rate: int = ESPEAK_SAMPLE_RATE

    def __init__(self) -> None:
        self._engine = _engine()

    def synth(
        self,
        text: str,
        voice: str = "en-US",
        rate: int = 175,
        pitch: int = 50,
        pitch_range: int = 50,
        seed: int = 0,
    ) -> np.ndarray:
        """Render ``text``.

        Parameters
        ----------
        text : str
            Plain text to speak (no SSML).
        voice : str
            eSpeak voice name, optionally with a variant: ``"en-US"``, ``"en-GB-x-rp+m3"``
            (see :func:`voice_name`).
        rate : int
            Speaking rate in words per minute (80-450).
        pitch, pitch_range : int
            Base pitch and pitch range, 0-100 (50 is the voice's normal).
        seed : int
            Seed for eSpeak's random generators (breath noise, Klatt voices).

        Returns
        -------
        np.ndarray
            Mono float32 waveform in [-1, 1] at 22 050 Hz, empty if nothing was spoken.
        """
        if not RATE_MIN <= rate <= RATE_MAX:
            raise DataError(f"eSpeak rate must be in {RATE_MIN}..{RATE_MAX} wpm, got {rate}")
        if not (0 <= pitch <= 100 and 0 <= pitch_range <= 100):
            raise DataError(f"eSpeak pitch and range must be in 0..100, got {pitch}, {pitch_range}")
        eng = self._engine
        lib = eng.lib
        encoded = text.encode("utf-8") + b"\0"
        with _LOCK:
            # The voice goes first: selecting it resets the parameters set below.
            if lib.espeak_SetVoiceByName(voice.encode("utf-8")) != _EE_OK:
                raise DataError(f"eSpeak NG has no voice {voice!r}")
            for param, value in (
                (_PARAM_RATE, rate),
                (_PARAM_VOLUME, _VOLUME),
                (_PARAM_PITCH, pitch),
                (_PARAM_RANGE, pitch_range),
                (_PARAM_WORDGAP, 0),
            ):
                if lib.espeak_SetParameter(param, value, 0) != _EE_OK:
                    raise DataError(f"eSpeak NG rejected parameter {param} = {value}")
            eng.seed(seed)
            eng.chunks = []
            try:
                status = lib.espeak_Synth(
                    encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
                )
                chunks = eng.chunks
            finally:
                eng.chunks = []
        if status != _EE_OK:
            raise DataError(f"eSpeak NG failed to synthesise {text!r} (status {status})")
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32) / np.float32(32768.0)
