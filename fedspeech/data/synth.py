"""Built-in offline keyword corpus, synthesised with eSpeak NG.

:func:`synthesize_corpus` writes a small corpus in the Google Speech Commands layout::

    <root>/<word>/<speaker>_nohash_<take>.wav   16 kHz mono int16, exactly 1 s
    <root>/validation_list.txt                  "word/file.wav" lines, as in Speech Commands
    <root>/testing_list.txt
    <root>/speakers.csv                         speaker, accent, variant, pitch, rate, split
    <root>/.complete                            build parameters; written last

so the regular Speech Commands loader reads it. A synthetic speaker is a fixed combination of
English accent x eSpeak voice variant x base pitch x base rate; each take jitters rate, pitch,
level, noise and timing. Validation and test hold out whole speakers.

The output is a pure function of the parameters: the same call gives byte-identical files.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import os
import re
import shutil
import sys
import uuid
import wave
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import firwin, resample_poly
from tqdm import tqdm

from fedspeech.data.cache import cache_dir, is_complete, mark_complete
from fedspeech.data.corpus import CLIP_SAMPLES, SAMPLE_RATE, fix_length
from fedspeech.data.espeak import (
    ACCENT_VOICES,
    ESPEAK_SAMPLE_RATE,
    ESpeak,
    list_accents,
    list_variants,
    voice_name,
)
from fedspeech.data.pool import map_in_processes
from fedspeech.errors import ConfigError, DataError, check_main_guard
from fedspeech.fileio import publish_dir

# Bump whenever the audio or the layout changes, so stale caches are not reused.
FORMAT_VERSION = 1

WORDS: tuple[str, ...] = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")

ACCENTS: tuple[str, ...] = tuple(ACCENT_VOICES)

# eSpeak voice variants that sound like a plausible (if robotic) talker. Left out: echo and
# robot effects (robosoft*, RicishayMax*, UniRobot, anikaRobot, Demonic, Tweaky, Storm),
# whispers (whisper*, caleb), "fast" (marked unstable), names with spaces, the buzzy plain Klatt
# voices (klatt, klatt2) and variants that still saturate eSpeak's int16 output (ed, Jacky,
# antonio, iven).
VARIANTS: tuple[str, ...] = (
    "Alex", "Alicia", "Andrea", "Andy", "Annie", "AnxiousAndy", "Denis", "Diogo", "Gene",
    "Gene2", "Henrique", "Hugo", "Lee", "Marco", "Mario", "Michael", "Mike", "Nguyen", "Reed",
    "adam", "anika", "announcer", "aunty", "belinda", "benjamin", "boris", "croak", "david",
    "edward", "edward2", "f1", "f2", "f3", "f4", "f5", "grandma", "grandpa", "gustave", "ian",
    "iven2", "iven3", "iven4", "john", "kaukovalta", "klatt3", "klatt4", "klatt5", "klatt6",
    "linda", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "marcelo", "max", "michel",
    "miguel", "mike2", "norbert", "pablo", "paul", "pedro", "quincy", "rob", "robert",
    "sandro", "shelby", "steph", "travis", "victor", "zac",
)  # fmt: skip

PITCHES: tuple[int, ...] = (30, 42, 54, 66)  # eSpeak base pitch, 0-100
RATES: tuple[int, ...] = (120, 140, 160, 180)  # words per minute; isolated words are slow
PITCH_RANGE = 50

# Per-take jitter.
RATE_JITTER = 0.08
PITCH_JITTER = 5
RANGE_JITTER = 10
GAIN_RANGE = (0.3, 0.9)  # peak level
SNR_RANGE_DB = (30.0, 40.0)
MAX_SHIFT = SAMPLE_RATE // 10  # samples; never pushes speech out of the clip

# 22 050 Hz -> 16 000 Hz is 320/441.
_UP = SAMPLE_RATE // math.gcd(SAMPLE_RATE, ESPEAK_SAMPLE_RATE)
_DOWN = ESPEAK_SAMPLE_RATE // math.gcd(SAMPLE_RATE, ESPEAK_SAMPLE_RATE)

_WORD_RE = re.compile(r"[a-z][a-z0-9'-]*")


@dataclass(frozen=True)
class SpeakerSpec:
    """One synthetic speaker: a fixed eSpeak voice configuration."""

    speaker_id: str
    accent: str
    variant: str
    pitch: int
    rate: int


@dataclass(frozen=True)
class _Task:
    speaker: SpeakerSpec
    words: tuple[str, ...]
    takes: int
    seed: int
    root: str


def speaker_id(accent: str, variant: str, pitch: int, rate: int) -> str:
    """Deterministic 8-hex-digit id of a speaker configuration."""
    key = f"{accent}/{variant}/{pitch}/{rate}".encode()
    return hashlib.sha256(key).hexdigest()[:8]


def max_speakers() -> int:
    """Number of distinct speaker configurations available."""
    return len(ACCENTS) * len(VARIANTS) * len(PITCHES) * len(RATES)


def choose_speakers(n_speakers: int, seed: int = 0) -> list[SpeakerSpec]:
    """Pick ``n_speakers`` distinct speaker configurations, deterministically from ``seed``.

    Accents are used round-robin and variants least-used-first, so small corpora still spread
    over all accents and many variants; base pitch and rate are drawn at random.
    """
    if not 1 <= n_speakers <= max_speakers():
        raise ConfigError(f"n_speakers must be in 1..{max_speakers()}, got {n_speakers}")
    rng = np.random.default_rng([seed, 1])
    accents = [ACCENTS[i] for i in rng.permutation(len(ACCENTS))]
    rank = {VARIANTS[i]: r for r, i in enumerate(rng.permutation(len(VARIANTS)))}
    uses = dict.fromkeys(VARIANTS, 0)
    styles = [(p, r) for p in PITCHES for r in RATES]
    taken: set[tuple[str, str, int, int]] = set()
    speakers: list[SpeakerSpec] = []
    for i in range(n_speakers):
        accent = accents[i % len(accents)]
        # Round-robin accents keep every accent below its capacity, so some variant has room.
        for variant in sorted(VARIANTS, key=lambda v: (uses[v], rank[v])):
            free = [s for s in styles if (accent, variant, *s) not in taken]
            if free:
                break
        pitch, rate = free[int(rng.integers(len(free)))]
        taken.add((accent, variant, pitch, rate))
        uses[variant] += 1
        sid = speaker_id(accent, variant, pitch, rate)
        speakers.append(SpeakerSpec(sid, accent, variant, pitch, rate))
    if len({s.speaker_id for s in speakers}) != len(speakers):
        raise DataError("speaker id collision; change FORMAT_VERSION's id scheme")
    return speakers


def split_speakers(speakers: Sequence[SpeakerSpec], seed: int = 0) -> dict[str, str]:
    """Map speaker id -> ``"train"``, ``"validation"`` or ``"test"``.

    About 10 % of the speakers (at least one each once there are three) go to validation and
    as many to test, chosen by ``seed``.
    """
    n = len(speakers)
    n_held = max(1, round(n / 10)) if n >= 3 else 0
    order = np.random.default_rng([seed, 2]).permutation(n)
    split = {s.speaker_id: "train" for s in speakers}
    for pos, idx in enumerate(order[: 2 * n_held]):
        split[speakers[int(idx)].speaker_id] = "validation" if pos < n_held else "test"
    return split


def _params(n_speakers: int, takes: int, seed: int, words: tuple[str, ...]) -> dict[str, object]:
    return {
        "format_version": FORMAT_VERSION,
        "n_speakers": n_speakers,
        "takes": takes,
        "seed": seed,
        "words": list(words),
    }


def corpus_key(n_speakers: int, takes: int, seed: int, words: tuple[str, ...] = WORDS) -> str:
    """Short hash naming the cache folder of a corpus with these parameters."""
    blob = json.dumps(_params(n_speakers, takes, seed, words), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _validate(n_speakers: int, takes: int, seed: int, words: tuple[str, ...], workers: int) -> None:
    if not _is_int(n_speakers) or n_speakers < 1:
        raise ConfigError(f"n_speakers must be an integer >= 1, got {n_speakers!r}")
    if n_speakers > max_speakers():
        raise ConfigError(
            f"n_speakers={n_speakers} exceeds the {max_speakers()} distinct synthetic speakers"
        )
    if not _is_int(takes) or takes < 1:
        raise ConfigError(f"takes must be an integer >= 1, got {takes!r}")
    if not _is_int(seed) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    if not _is_int(workers) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    if not words:
        raise ConfigError("words must not be empty")
    for w in words:
        if not isinstance(w, str) or not _WORD_RE.fullmatch(w):
            raise ConfigError(f"word {w!r} must be lowercase letters, digits, ' or -")
    if len(set(words)) != len(words):
        raise ConfigError(f"words must be unique, got {list(words)}")


def _check_voices(speakers: Sequence[SpeakerSpec]) -> None:
    accents = set(list_accents())
    variants = set(list_variants())
    for s in speakers:
        if s.accent not in accents or s.variant not in variants:
            raise DataError(
                f"installed eSpeak NG data lacks accent {s.accent!r} or variant {s.variant!r}"
            )


@functools.lru_cache(maxsize=1)
def _resample_filter() -> np.ndarray:
    # The filter resample_poly(x, 320, 441) designs by default; designing it on every call
    # would cost more than the synthesis itself.
    max_rate = max(_UP, _DOWN)
    return np.asarray(firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0)))


def _render(engine: ESpeak, spk: SpeakerSpec, word: str, rng: np.random.Generator) -> np.ndarray:
    """One take of ``word``: jittered synthesis -> 16 kHz, 1 s, gain, shift, noise -> int16."""
    rate = int(round(spk.rate * rng.uniform(1 - RATE_JITTER, 1 + RATE_JITTER)))
    pitch = int(np.clip(spk.pitch + rng.integers(-PITCH_JITTER, PITCH_JITTER + 1), 0, 100))
    prange = PITCH_RANGE + int(rng.integers(-RANGE_JITTER, RANGE_JITTER + 1))
    gain = rng.uniform(*GAIN_RANGE)
    snr_db = rng.uniform(*SNR_RANGE_DB)
    espeak_seed = int(rng.integers(2**31))

    raw = engine.synth(word, voice_name(spk.accent, spk.variant), rate, pitch, prange, espeak_seed)
    x = raw.astype(np.float64)
    loud = np.flatnonzero(np.abs(x) > 0.01 * np.abs(x).max()) if x.size else x
    if loud.size == 0:
        raise DataError(f"eSpeak produced silence for {word!r} with {spk}")
    x = x[loud[0] : loud[-1] + 1]
    speech = resample_poly(x, _UP, _DOWN, window=_resample_filter())
    speech *= gain / np.abs(speech).max()

    clip = fix_length(speech, CLIP_SAMPLES)
    slack = max(0, CLIP_SAMPLES - speech.shape[0]) // 2
    limit = min(MAX_SHIFT, slack)
    clip = np.roll(clip, int(rng.integers(-limit, limit + 1)))

    rms = float(np.sqrt(np.mean(speech**2)))
    clip = clip + rng.standard_normal(CLIP_SAMPLES) * rms * 10 ** (-snr_db / 20)
    pcm: np.ndarray = np.round(np.clip(clip, -1.0, 1.0) * 32767).astype("<i2")
    return pcm


def _write_wav(path: Path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())


def clip_name(speaker: str, take: int) -> str:
    """File name of one take, as in Speech Commands."""
    return f"{speaker}_nohash_{take}.wav"


def _synth_speaker(task: _Task) -> int:
    """Write every take of every word for one speaker; returns the number of clips."""
    engine = ESpeak()
    spk = task.speaker
    for word in task.words:
        for take in range(task.takes):
            # Keyed by content, not position, so a clip does not depend on the other speakers.
            rng = np.random.default_rng(
                [task.seed, int(spk.speaker_id, 16), zlib.crc32(word.encode()), take]
            )
            pcm = _render(engine, spk, word, rng)
            _write_wav(Path(task.root) / word / clip_name(spk.speaker_id, take), pcm)
    return len(task.words) * task.takes


def _write_metadata(
    root: Path,
    speakers: Sequence[SpeakerSpec],
    split: dict[str, str],
    words: tuple[str, ...],
    takes: int,
) -> None:
    lists: dict[str, list[str]] = {"validation": [], "test": []}
    for s in speakers:
        if split[s.speaker_id] in lists:
            lists[split[s.speaker_id]].extend(
                f"{word}/{clip_name(s.speaker_id, take)}" for word in words for take in range(takes)
            )
    for name, key in (("validation_list.txt", "validation"), ("testing_list.txt", "test")):
        (root / name).write_text("".join(f"{line}\n" for line in sorted(lists[key])))
    with open(root / "speakers.csv", "w", newline="") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(["speaker", "accent", "variant", "pitch", "rate", "split"])
        for s in speakers:
            out.writerow([s.speaker_id, s.accent, s.variant, s.pitch, s.rate, split[s.speaker_id]])


def synthesize_corpus(
    out_root: Path | None = None,
    *,
    n_speakers: int = 80,
    takes: int = 5,
    seed: int = 0,
    words: tuple[str, ...] = WORDS,
    progress: bool = True,
    workers: int = 2,
) -> Path:
    """Build (or reuse) the synthetic keyword corpus and return its root folder.

    Parameters
    ----------
    out_root : Path, optional
        Where the corpus goes; default ``cache_dir()/synth/<corpus_key(...)>``. If it already
        holds a finished corpus with these parameters it is returned untouched.
    n_speakers : int
        Distinct synthetic speakers (at most :func:`max_speakers`).
    takes : int
        Recordings of each word per speaker.
    seed : int
        Chooses speakers, the speaker split and all per-take jitter.
    words : tuple of str
        Keywords, one folder each.
    progress : bool
        Show a progress bar on stderr.
    workers : int
        Processes rendering speakers in parallel.

    Returns
    -------
    Path
        The corpus root, in the Speech Commands layout.
    """
    # Before anything is written: a worker re-running an unguarded script stops here.
    check_main_guard()
    words = tuple(words)
    _validate(n_speakers, takes, seed, words, workers)
    params = _params(n_speakers, takes, seed, words)
    root = (
        Path(out_root)
        if out_root is not None
        else cache_dir() / "synth" / corpus_key(n_speakers, takes, seed, words)
    )
    if is_complete(root, params, "synthetic corpus"):
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(f"{root} exists and is not a finished synthetic corpus; remove it first")

    speakers = choose_speakers(n_speakers, seed)
    _check_voices(speakers)
    split = split_speakers(speakers, seed)

    root.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed at the end: an interrupted build never looks done.
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        for word in words:
            (tmp / word).mkdir()
        tasks = [_Task(s, words, takes, seed, str(tmp)) for s in speakers]
        total = len(tasks) * len(words) * takes
        bar = tqdm(
            total=total,
            unit="clip",
            desc="synthesising corpus",
            disable=not progress,
            file=sys.stderr,
        )
        with bar:
            # eSpeak carries waveform state between utterances, so every speaker is rendered
            # by a process that has never used it: one task per fresh child.
            for n in map_in_processes(
                _synth_speaker,
                tasks,
                min(workers, len(tasks)),
                preload=__name__,
                what="the synthetic corpus",
                fresh=True,
            ):
                bar.update(n)
        _write_metadata(tmp, speakers, split, words, takes)
        mark_complete(tmp, params)
        # Another builder of the same corpus may win the race: theirs is as good as ours.
        publish_dir(tmp, root, lambda: is_complete(root, params, "synthetic corpus"))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
