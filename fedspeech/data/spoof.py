"""Speech-deepfake data: the in-memory bona fide/spoof corpus and the built-in offline corpus.

:class:`SpoofCorpus` is what every spoof loader returns (see :mod:`fedspeech.data.spoof_loaders`):
fixed-length 16 kHz clips labelled 1 = bona fide, 0 = spoof (AASIST's convention), each with
its attack id, speaker and split.

:func:`build_spoof_corpus` makes the built-in corpus without any download: bona fide speech is a
source corpus as it is (by default the eSpeak NG keyword corpus of
:func:`fedspeech.data.synth.synthesize_corpus`), spoofs are the same utterances re-synthesised by
the attacks of :mod:`fedspeech.data.spoof_attacks`. Layout::

    <root>/bonafide/<speaker>/<utt>.wav          16 kHz mono PCM16, the source audio
    <root>/spoof/<attack>/<speaker>/<utt>.wav    same length as the bona fide clip
    <root>/protocol.txt                          SPEAKER UTT - ATTACK LABEL SPLIT, one per clip
    <root>/.complete                             build parameters; written last

``protocol.txt`` follows the ASVspoof CM protocols with a sixth column: ``ATTACK`` is
``bonafide`` for bona fide lines, ``LABEL`` is ``bonafide`` or ``spoof`` and ``SPLIT`` is
``train``, ``validation`` or ``test``. ``UTT`` names the source utterance, so a bona fide clip
and its spoofs share it; ``(UTT, ATTACK)`` is unique.

Splits are by speaker (about 70 / 10 / 20 % train / validation / test, disjoint). Seen attacks
are applied to every speaker; the unseen attacks (default ``lpc``) only to test speakers, so
train and validation never contain them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import uuid
import warnings
import wave
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

from fedspeech.data.audio import read_clip, resample
from fedspeech.data.cache import cache_dir, is_complete, mark_complete
from fedspeech.data.corpus import CLIP_SAMPLES, SAMPLE_RATE, SPLITS
from fedspeech.data.pool import map_in_processes
from fedspeech.data.spoof_attacks import SPOOF_ATTACKS, apply_attack
from fedspeech.data.synth import synthesize_corpus
from fedspeech.errors import ConfigError, DataError, check_main_guard
from fedspeech.fileio import publish_dir

# Bump whenever the audio or the layout changes, so stale caches are not reused.
FORMAT_VERSION = 1

BONAFIDE = "bonafide"
SPOOF = "spoof"
BONAFIDE_LABEL = 1
SPOOF_LABEL = 0

# AASIST's input length: 4.04 s at 16 kHz.
AASIST_SAMPLES = 64_600
BUILTIN_SAMPLES = CLIP_SAMPLES

DEFAULT_ATTACKS: tuple[str, ...] = ("gl", "mel", "lpc", "codec")
# LPC is the hardest held-out attack here: eSpeak's own speech is formant (source-filter)
# synthesis, so an LPC vocoder sounds closest to the bona fide clips, and its artefacts (buzzy
# excitation, lost phase) are unlike the Griffin-Lim phase errors and codec band limits seen
# in training.
DEFAULT_UNSEEN: tuple[str, ...] = ("lpc",)
# 10 of the 50 clips of each of the 80 default speakers: 800 bona fide, 3360 clips in all.
DEFAULT_MAX_PER_SPEAKER = 10

VALIDATION_FRACTION = 0.1
TEST_FRACTION = 0.2

PROTOCOL = "protocol.txt"
AUDIO_EXTENSIONS = (".wav", ".flac")
# Shorter sources are skipped: the attacks' 1024-point STFT needs some audio to work on.
MIN_SOURCE_SAMPLES = 4096

_NOHASH = "_nohash_"
_FSDD_NAME = re.compile(r"^\d_(.+)_\d+\.wav$", re.IGNORECASE)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class SpoofCorpus:
    """Fixed-length bona fide and spoofed clips.

    Attributes
    ----------
    waveforms : np.ndarray
        ``(N, L)`` float32 in [-1, 1], 16 kHz; shorter audio repeated to ``L``, longer audio
        cropped from its start (as AASIST does).
    labels : np.ndarray
        ``(N,)`` int64, 1 = bona fide, 0 = spoof.
    attacks : list[str]
        ``"bonafide"`` for bona fide clips, else the attack id (``"gl"``, ``"A07"``, ...).
    speakers : list[str]
        Speaker id of each clip (``"unknown"`` where the dataset does not say).
    clip_ids : list[str]
        Path of each clip relative to the dataset root.
    split : list[str]
        ``"train"``, ``"validation"`` or ``"test"``.
    skipped : int
        Listed files that were missing or unreadable and were left out.
    """

    waveforms: np.ndarray
    labels: np.ndarray
    attacks: list[str]
    speakers: list[str]
    clip_ids: list[str]
    split: list[str]
    skipped: int = 0

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_samples(self) -> int:
        """Clip length ``L`` in samples."""
        return int(self.waveforms.shape[1])

    def indices(self, split: str) -> np.ndarray:
        """Positions of the clips in ``split``, ascending, as ``(n,)`` int64."""
        return np.array([i for i, s in enumerate(self.split) if s == split], dtype=np.int64)

    def attack_ids(self, split: str | None = None) -> list[str]:
        """Sorted attack ids of the spoofed clips in ``split`` (all splits if None)."""
        return sorted(
            {
                a
                for a, lab, s in zip(self.attacks, self.labels, self.split, strict=True)
                if lab == SPOOF_LABEL and (split is None or s == split)
            }
        )

    def seen_unseen(
        self, split: str = "test", seen: Iterable[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Evaluation subsets of ``split`` for seen and for unseen attacks.

        Parameters
        ----------
        split : str
            The split to evaluate.
        seen : iterable of str, optional
            Attack ids the model was trained on; default: those of this corpus's train split
            (pass the training corpus's ids when evaluating on another dataset).

        Returns
        -------
        seen_idx, unseen_idx : np.ndarray
            ``(n,)`` int64 positions, ascending. Both hold every bona fide clip of ``split``
            (an EER needs both classes) plus its spoofs of seen, respectively unseen, attacks.
            A subset without spoofs holds only the bona fide clips.
        """
        known = set(self.attack_ids("train") if seen is None else seen)
        seen_rows: list[int] = []
        unseen_rows: list[int] = []
        for i, (s, lab, a) in enumerate(zip(self.split, self.labels, self.attacks, strict=True)):
            if s != split:
                continue
            if lab == BONAFIDE_LABEL:
                seen_rows.append(i)
                unseen_rows.append(i)
            elif a in known:
                seen_rows.append(i)
            else:
                unseen_rows.append(i)
        return np.array(seen_rows, dtype=np.int64), np.array(unseen_rows, dtype=np.int64)

    def subset(self, idx: Sequence[int] | np.ndarray) -> SpoofCorpus:
        """The clips at positions ``idx``, in that order (``skipped`` is kept)."""
        rows = np.asarray(idx, dtype=np.int64)
        pick = [int(i) for i in rows]
        return SpoofCorpus(
            waveforms=self.waveforms[rows],
            labels=self.labels[rows],
            attacks=[self.attacks[i] for i in pick],
            speakers=[self.speakers[i] for i in pick],
            clip_ids=[self.clip_ids[i] for i in pick],
            split=[self.split[i] for i in pick],
            skipped=self.skipped,
        )


def fit_length(wave: np.ndarray, num_samples: int) -> np.ndarray:
    """Repeat a short ``(n,)`` waveform until it fills ``num_samples``; crop a long one from 0.

    Examples
    --------
    >>> fit_length(np.array([1.0, 2.0, 3.0]), 7).tolist()
    [1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0]
    >>> fit_length(np.arange(5.0), 2).tolist()
    [0.0, 1.0]
    """
    n = wave.shape[0]
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if n == 0:
        return np.zeros(num_samples, dtype=wave.dtype)
    if n >= num_samples:
        return wave[:num_samples]
    return np.tile(wave, -(-num_samples // n))[:num_samples]


# --- bona fide sources -------------------------------------------------------------------------


class BonafideSource(NamedTuple):
    """One source utterance: its file, speaker id and utterance id (both file-name safe)."""

    path: Path
    speaker: str
    utt: str


def _safe(name: str) -> str:
    return _UNSAFE.sub("_", name).strip("._") or "x"


def _speaker_of(rel: Path) -> str:
    name = rel.name
    if _NOHASH in name:
        return name.split(_NOHASH, 1)[0]
    parent = rel.parent
    if parent.name in ("", "recordings") and (m := _FSDD_NAME.match(name)):
        return m.group(1)
    if parent.name:
        return parent.name
    return re.split(r"[-_]", rel.stem, maxsplit=1)[0]


def find_bonafide(root: Path | str) -> list[BonafideSource]:
    """List the audio files under ``root`` with a speaker for each, sorted by path.

    Files are ``.wav`` and ``.flac`` anywhere below ``root`` (hidden entries and
    ``_background_noise_`` skipped). The speaker is, in this order of precedence:

    * the part before ``_nohash_`` (Speech Commands layout, the built-in synthetic corpus);
    * ``<speaker>`` of ``<digit>_<speaker>_<take>.wav`` directly in ``root`` or in
      ``recordings/`` (Free Spoken Digit Dataset);
    * the name of the folder holding the file (``<speaker>/<utt>.wav``, VCTK-style trees);
    * for files directly in ``root``, the file name up to its first ``-`` or ``_``
      (``<speaker>-<utt>.flac``).

    The utterance id is the path relative to ``root`` without its extension, ``/`` turned
    into ``-`` and other unsafe characters into ``_``.

    Raises
    ------
    DataError
        Two files or speakers map to the same id.
    """
    root = Path(root)
    found: list[BonafideSource] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "_background_noise_")
        for name in sorted(files):
            if name.startswith(".") or not name.lower().endswith(AUDIO_EXTENSIONS):
                continue
            path = Path(folder) / name
            rel = path.relative_to(root)
            utt = "-".join(_safe(p) for p in rel.with_suffix("").parts)
            found.append(BonafideSource(path, _speaker_of(rel), utt))
    found.sort(key=lambda s: s.path.relative_to(root).as_posix())
    speakers: dict[str, str] = {}
    utts: set[str] = set()
    out: list[BonafideSource] = []
    for src in found:
        spk = _safe(src.speaker)
        if speakers.setdefault(spk, src.speaker) != src.speaker:
            raise DataError(f"speakers {speakers[spk]!r} and {src.speaker!r} both map to {spk!r}")
        if src.utt in utts:
            raise DataError(f"two files under {root} map to utterance id {src.utt!r}")
        utts.add(src.utt)
        out.append(BonafideSource(src.path, spk, src.utt))
    return out


def split_speakers(speakers: Iterable[str], seed: int = 0) -> dict[str, str]:
    """Map each speaker to ``"train"``, ``"validation"`` or ``"test"``.

    About 10 % go to validation and 20 % to test (at least one each), chosen by ``seed``.

    Raises
    ------
    DataError
        Fewer than 3 speakers: no disjoint three-way split exists.
    """
    ordered = sorted(set(speakers))
    n = len(ordered)
    if n < 3:
        raise DataError(f"need at least 3 speakers for speaker-disjoint splits, found {n}")
    n_val = max(1, round(n * VALIDATION_FRACTION))
    n_test = max(1, round(n * TEST_FRACTION))
    order = np.random.default_rng([seed, 0x5F00F]).permutation(n)
    out = dict.fromkeys(ordered, "train")
    for pos, i in enumerate(order[: n_val + n_test]):
        out[ordered[int(i)]] = "validation" if pos < n_val else "test"
    return out


def select_per_speaker(
    sources: Sequence[BonafideSource], max_per_speaker: int | None, seed: int = 0
) -> list[BonafideSource]:
    """At most ``max_per_speaker`` utterances per speaker, drawn by ``seed``, in path order."""
    if max_per_speaker is None:
        return list(sources)
    by_speaker: dict[str, list[int]] = {}
    for i, s in enumerate(sources):
        by_speaker.setdefault(s.speaker, []).append(i)
    keep: list[int] = []
    for spk, rows in by_speaker.items():
        if len(rows) <= max_per_speaker:
            keep.extend(rows)
            continue
        # Keyed by speaker, so one speaker's choice does not depend on the others.
        rng = np.random.default_rng([seed, *hashlib.sha256(spk.encode()).digest()[:8]])
        keep.extend(rows[int(j)] for j in rng.choice(len(rows), max_per_speaker, replace=False))
    return [sources[i] for i in sorted(keep)]


def clip_seed(seed: int, speaker: str, utt: str, attack: str) -> int:
    """Seed of one spoofed clip: a hash of its content keys, not of its position."""
    blob = f"{seed}\0{speaker}\0{utt}\0{attack}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "little")


# --- building the built-in corpus -------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    src: str
    speaker: str
    utt: str
    attacks: tuple[str, ...]
    seed: int
    out: str


def bonafide_path(root: Path, speaker: str, utt: str) -> Path:
    """Where the built-in corpus keeps a bona fide clip."""
    return root / BONAFIDE / speaker / f"{utt}.wav"


def spoof_path(root: Path, attack: str, speaker: str, utt: str) -> Path:
    """Where the built-in corpus keeps a spoofed clip."""
    return root / SPOOF / attack / speaker / f"{utt}.wav"


def _write_wav(path: Path, x: np.ndarray) -> None:
    # x * 32768 undoes soundfile's PCM16 decoding exactly, so bona fide audio is bit-identical.
    pcm = np.clip(np.round(np.asarray(x, dtype=np.float64) * 32768.0), -32768, 32767)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.astype("<i2").tobytes())


def _run_job(job: _Job) -> int:
    """Write one bona fide clip and its spoofs; returns clips written (0: unusable source)."""
    try:
        x, sr = read_clip(job.src)
    except DataError:
        return 0
    x = np.clip(resample(x, sr, SAMPLE_RATE), -1.0, 1.0)
    if x.shape[0] < MIN_SOURCE_SAMPLES:
        return 0
    out = Path(job.out)
    _write_wav(bonafide_path(out, job.speaker, job.utt), x)
    for attack in job.attacks:
        y = apply_attack(attack, x, clip_seed(job.seed, job.speaker, job.utt, attack))
        _write_wav(spoof_path(out, attack, job.speaker, job.utt), y)
    return 1 + len(job.attacks)


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _validate(
    attacks: tuple[str, ...],
    unseen: tuple[str, ...],
    seed: int,
    workers: int,
    max_per_speaker: int | None,
) -> None:
    if not attacks:
        raise ConfigError("attacks must not be empty")
    for a in attacks:
        SPOOF_ATTACKS.get(a)
    if len(set(attacks)) != len(attacks):
        raise ConfigError(f"attacks listed twice: {list(attacks)}")
    stray = [a for a in unseen if a not in attacks]
    if stray:
        raise ConfigError(f"unseen attack(s) {', '.join(stray)} not in attacks {list(attacks)}")
    if not set(attacks) - set(unseen):
        raise ConfigError("every attack is unseen; keep at least one for training")
    if not _is_int(seed) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    if not _is_int(workers) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    if max_per_speaker is not None and (not _is_int(max_per_speaker) or max_per_speaker < 1):
        raise ConfigError(
            f"max_per_speaker must be None or an integer >= 1, got {max_per_speaker!r}"
        )


def _source_fingerprint(root: Path, sources: Sequence[BonafideSource]) -> str:
    h = hashlib.sha256()
    for s in sources:
        h.update(f"{s.path.relative_to(root).as_posix()}\0{s.path.stat().st_size}\n".encode())
    return h.hexdigest()


def build_spoof_corpus(
    bonafide_root: Path | None = None,
    *,
    attacks: tuple[str, ...] = DEFAULT_ATTACKS,
    unseen: tuple[str, ...] = DEFAULT_UNSEEN,
    seed: int = 0,
    progress: bool = True,
    workers: int = 2,
    max_per_speaker: int | None = DEFAULT_MAX_PER_SPEAKER,
    out_root: Path | None = None,
) -> Path:
    """Build (or reuse) the built-in bona fide/spoof corpus and return its root folder.

    Parameters
    ----------
    bonafide_root : Path, optional
        Folder of bona fide speech, read as described in :func:`find_bonafide` (Speech
        Commands layout, FSDD, or ``<speaker>/<utt>.wav|flac`` trees); resampled to 16 kHz,
        any length of at least 0.256 s. Default: the synthetic keyword corpus with its default
        parameters (built first if needed).
    attacks : tuple of str
        Attack ids in :data:`fedspeech.data.spoof_attacks.SPOOF_ATTACKS`.
    unseen : tuple of str
        Attacks held out of train and validation; applied to test speakers only.
    seed : int
        Chooses utterances, the speaker split and every attack's randomness.
    progress : bool
        Show progress bars on stderr.
    workers : int
        Processes running the attacks (1: in this process).
    max_per_speaker : int or None
        Utterances kept per speaker, drawn by ``seed``; None keeps all. The default of 10 keeps
        the default corpus at 3360 clips.
    out_root : Path, optional
        Where to build; default ``cache_dir()/spoof/<hash of parameters and source files>``.

    Returns
    -------
    Path
        The corpus root (layout in the module docstring); load it with
        ``load_spoof_dataset("builtin", root)``.

    Raises
    ------
    ConfigError
        Unknown attack or invalid parameter.
    DataError
        No usable audio, fewer than 3 speakers, or ``out_root`` holds something else.
    """
    # Before anything is written: a worker re-running an unguarded script stops here.
    check_main_guard()
    attacks, unseen = tuple(attacks), tuple(unseen)
    _validate(attacks, unseen, seed, workers, max_per_speaker)
    if bonafide_root is None:
        source = synthesize_corpus(progress=progress, workers=workers)
    else:
        source = Path(bonafide_root).expanduser()
        if not source.is_dir():
            raise DataError(f"bona fide root {source} is not a directory")
    source = source.resolve()
    found = find_bonafide(source)
    if not found:
        raise DataError(f"no .wav or .flac files under {source}")
    chosen = select_per_speaker(found, max_per_speaker, seed)
    split = split_speakers((s.speaker for s in chosen), seed)

    params: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "attacks": list(attacks),
        "unseen": list(unseen),
        "seed": seed,
        "max_per_speaker": max_per_speaker,
        "source": str(source),
        "source_files": _source_fingerprint(source, found),
    }
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(out_root) if out_root is not None else cache_dir() / "spoof" / key
    if is_complete(root, params, "spoof corpus"):
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(f"{root} exists and is not a finished spoof corpus; remove it first")

    seen_attacks = tuple(a for a in attacks if a not in unseen)
    root.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed at the end: an interrupted build never looks done.
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        jobs = [
            _Job(
                str(s.path),
                s.speaker,
                s.utt,
                attacks if split[s.speaker] == "test" else seen_attacks,
                seed,
                str(tmp),
            )
            for s in chosen
        ]
        done = _run_jobs(jobs, workers, progress)
        lines: list[str] = []
        bad = 0
        for job, n in zip(jobs, done, strict=True):
            if n == 0:
                bad += 1
                continue
            where = split[job.speaker]
            lines.append(f"{job.speaker} {job.utt} - {BONAFIDE} {BONAFIDE} {where}\n")
            lines.extend(f"{job.speaker} {job.utt} - {a} {SPOOF} {where}\n" for a in job.attacks)
        if bad:
            warnings.warn(
                f"skipped {bad} unreadable, non-PCM or too short source files under {source}",
                stacklevel=2,
            )
        if not lines:
            raise DataError(f"no usable bona fide audio under {source}")
        (tmp / PROTOCOL).write_text("".join(lines))
        mark_complete(tmp, params)
        # Another builder of the same corpus may win the race: theirs is as good as ours.
        publish_dir(tmp, root, lambda: is_complete(root, params, "spoof corpus"))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _run_jobs(jobs: Sequence[_Job], workers: int, progress: bool) -> list[int]:
    """Run every job, in parallel when ``workers > 1``; clips written per job, in job order."""
    total = sum(1 + len(j.attacks) for j in jobs)
    bar = tqdm(
        total=total,
        unit="clip",
        desc="building spoof corpus",
        disable=not progress,
        file=sys.stderr,
    )
    done: list[int] = []
    with bar:
        if workers == 1 or len(jobs) < 2:
            for job in jobs:
                done.append(_run_job(job))
                bar.update(1 + len(job.attacks))
        else:
            chunk = max(1, min(16, len(jobs) // (4 * workers)))
            results = map_in_processes(
                _run_job,
                jobs,
                min(workers, len(jobs)),
                preload=__name__,
                what="the spoof corpus",
                chunksize=chunk,
            )
            for job, n in zip(jobs, results, strict=True):
                done.append(n)
                bar.update(1 + len(job.attacks))
    return done


def read_protocol(root: Path | str) -> list[tuple[str, str, str, str, str]]:
    """Parse ``<root>/protocol.txt`` of the built-in corpus.

    Returns
    -------
    list of (speaker, utt, attack, label, split)

    Raises
    ------
    DataError
        The file is missing or a line is malformed.
    """
    path = Path(root) / PROTOCOL
    if not path.is_file():
        raise DataError(f"{PROTOCOL} missing under {root}; is this a built-in spoof corpus?")
    rows: list[tuple[str, str, str, str, str]] = []
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 6 or parts[4] not in (BONAFIDE, SPOOF) or parts[5] not in SPLITS:
            raise DataError(f"{path}:{no}: expected 'SPEAKER UTT - ATTACK LABEL SPLIT': {line!r}")
        if (parts[4] == BONAFIDE) != (parts[3] == BONAFIDE):
            raise DataError(f"{path}:{no}: label {parts[4]} with attack {parts[3]}")
        rows.append((parts[0], parts[1], parts[3], parts[4], parts[5]))
    return rows
