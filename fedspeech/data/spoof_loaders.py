"""Speech-deepfake dataset loaders: a folder on disk in, a :class:`SpoofCorpus` out.

Every loader has the signature of :class:`SpoofLoader` and is registered in
:data:`SPOOF_DATASETS`; :func:`load_spoof_dataset` looks one up by name and checks the root
first. Audio is read as integer PCM (WAV or FLAC), resampled to 16 kHz and fitted to
``num_samples`` by repetition or cropping from the start (:func:`fit_length`). Missing or
unreadable files are skipped and counted in one warning and in ``SpoofCorpus.skipped``.

Layouts
-------
``builtin``
    The corpus of :func:`fedspeech.data.spoof.build_spoof_corpus` (``protocol.txt``,
    ``bonafide/``, ``spoof/``); default ``num_samples`` 16000, the length of its clips.
``asvspoof2019_la``
    ``<root>/ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.{train.trn,dev.trl,eval.trl}.txt``
    and ``<root>/ASVspoof2019_LA_{train,dev,eval}/flac/<UTT>.flac`` (``root`` is the ``LA``
    folder, or holds it). Lines ``SPEAKER UTT - ATTACK bonafide|spoof``; train/dev/eval become
    train/validation/test. Attack ids are kept as written: eval's A07-A19 are unseen in
    training except A16 and A19, which are A04 and A06 again (:data:`ASVSPOOF2019_SAME_AS`).
    Splits whose protocol file is absent are left out with a warning.
``asvspoof2021_df`` / ``asvspoof2021_la``
    Evaluation only, all ``test``: ``<root>/keys/{DF,LA}/CM/trial_metadata.txt`` (or under
    ``<root>/{DF,LA}-keys-full/``) with lines like
    ``LA_0023 DF_E_2000011 nocodec asvspoof A14 spoof notrim progress ...`` (speaker, utterance,
    codec, source, attack, label, ...), audio in ``<root>/ASVspoof2021_{DF,LA}_eval/flac/``
    (all ``_partNN`` archives extracted into that one folder).
``in_the_wild``
    ``<root>/meta.csv`` (or ``<root>/release_in_the_wild/meta.csv``) with columns ``file``,
    ``speaker``, ``label`` (``bona-fide`` or ``spoof``); files relative to the csv's folder.
    All ``test``; the attack id of every spoof is ``itw-spoof``.
``fake_or_real``
    ``<root>/{training,validation,testing}/{real,fake}/*.wav`` (the for-norm, for-2sec and
    for-rerec versions share it). Speakers are unknown (``"unknown"``); the attack id of every
    fake is ``for-fake``.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from fedspeech.data.audio import read_clip, resample
from fedspeech.data.corpus import SAMPLE_RATE, SPLITS
from fedspeech.data.loaders import check_root
from fedspeech.data.spoof import (
    AASIST_SAMPLES,
    BONAFIDE,
    BONAFIDE_LABEL,
    BUILTIN_SAMPLES,
    PROTOCOL,
    SPOOF,
    SPOOF_LABEL,
    SpoofCorpus,
    bonafide_path,
    fit_length,
    read_protocol,
    spoof_path,
)
from fedspeech.errors import ConfigError, DataError
from fedspeech.registry import Registry

ASVSPOOF2019_SAME_AS = {"A16": "A04", "A19": "A06"}
ITW_ATTACK = "itw-spoof"
FOR_ATTACK = "for-fake"
UNKNOWN_SPEAKER = "unknown"

_ASV19_PROTOCOLS = (
    ("train", "train", "ASVspoof2019.LA.cm.train.trn.txt"),
    ("dev", "validation", "ASVspoof2019.LA.cm.dev.trl.txt"),
    ("eval", "test", "ASVspoof2019.LA.cm.eval.trl.txt"),
)
_FOR_SPLITS = (("training", "train"), ("validation", "validation"), ("testing", "test"))


class SpoofLoader(Protocol):
    """Signature shared by every registered loader."""

    def __call__(
        self,
        root: Path,
        *,
        num_samples: int = ...,
        progress: bool = False,
        splits: Sequence[str] | None = None,
    ) -> SpoofCorpus: ...


SPOOF_DATASETS: Registry[SpoofLoader] = Registry("spoof dataset")


class _Item(NamedTuple):
    path: Path
    label: int
    attack: str
    speaker: str
    clip_id: str
    split: str


def load_spoof_dataset(name: str, root: Path | str | None, **kw: Any) -> SpoofCorpus:
    """Load the spoof dataset registered as ``name`` from ``root``.

    Parameters
    ----------
    name : str
        A name in :data:`SPOOF_DATASETS`.
    root : Path, str or None
        Dataset folder; None is an error (building the built-in corpus is the caller's job).
    **kw
        Passed to the loader (``num_samples``, ``progress``, ``splits``).

    Raises
    ------
    ConfigError
        Unknown dataset name or bad keyword value.
    DataError
        Root missing, not a folder, malformed, or without readable clips.
    """
    loader = SPOOF_DATASETS.get(name)
    if root is None:
        raise DataError(f"no data root given for spoof dataset {name!r}")
    return loader(check_root(root), **kw)


def _check_args(num_samples: int, splits: Sequence[str] | None) -> set[str]:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    if splits is None:
        return set(SPLITS)
    wanted = {splits} if isinstance(splits, str) else set(splits)
    unknown = sorted(wanted - set(SPLITS))
    if unknown:
        raise ConfigError(f"unknown split(s) {', '.join(unknown)}; known: {', '.join(SPLITS)}")
    return wanted


def _read_fitted(path: Path, num_samples: int) -> np.ndarray | None:
    try:
        wave, sr = read_clip(path)
    except DataError:
        return None
    if sr != SAMPLE_RATE:
        # Resampling can overshoot full scale a little; decoded PCM never does.
        wave = np.clip(resample(wave, sr, SAMPLE_RATE), -1.0, 1.0)
    return fit_length(wave, num_samples)


def _build(
    root: Path, items: list[_Item], num_samples: int, progress: bool, what: str
) -> SpoofCorpus:
    """Read the clips of ``items`` into a corpus, skipping missing and unreadable files."""
    if not items:
        raise DataError(f"no {what} clips listed under {root}")
    waveforms = np.zeros((len(items), num_samples), dtype=np.float32)

    def load(i: int) -> bool:
        wave = _read_fitted(items[i].path, num_samples)
        if wave is None:
            return False
        waveforms[i] = wave
        return True

    n_workers = min(4, os.cpu_count() or 1)
    rows = range(len(items))
    if n_workers <= 1 or len(items) < 64:
        results: Any = map(load, rows)
        pool = None
    else:
        pool = ThreadPoolExecutor(n_workers)
        results = pool.map(load, rows)
    try:
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(items), desc=f"reading {what}", unit="clip")
        ok = list(results)
    finally:
        if pool is not None:
            pool.shutdown()
    kept = [i for i, good in enumerate(ok) if good]
    bad = len(items) - len(kept)
    if bad:
        warnings.warn(
            f"skipped {bad} missing, unreadable or non-PCM {what} files under {root}",
            stacklevel=3,
        )
    if not kept:
        raise DataError(f"no readable {what} clips under {root} ({bad} missing or bad files)")
    if bad:
        # Compacted in place: a copy would double the peak memory of a large set.
        for row, i in enumerate(kept):
            if row != i:
                waveforms[row] = waveforms[i]
        waveforms.resize((len(kept), num_samples), refcheck=False)
    chosen = [items[i] for i in kept]
    return SpoofCorpus(
        waveforms=waveforms,
        labels=np.array([it.label for it in chosen], dtype=np.int64),
        attacks=[it.attack for it in chosen],
        speakers=[it.speaker for it in chosen],
        clip_ids=[it.clip_id for it in chosen],
        split=[it.split for it in chosen],
        skipped=bad,
    )


def _label(word: str, where: str) -> int:
    if word == BONAFIDE:
        return BONAFIDE_LABEL
    if word == SPOOF:
        return SPOOF_LABEL
    raise DataError(f"{where}: label must be 'bonafide' or 'spoof', got {word!r}")


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


# --- built-in ----------------------------------------------------------------------------------


@SPOOF_DATASETS.register("builtin")
def load_builtin(
    root: Path,
    *,
    num_samples: int = BUILTIN_SAMPLES,
    progress: bool = False,
    splits: Sequence[str] | None = None,
) -> SpoofCorpus:
    """Load the built-in corpus of :func:`~fedspeech.data.spoof.build_spoof_corpus`.

    Parameters
    ----------
    root : Path
        The folder returned by ``build_spoof_corpus``.
    num_samples : int
        Clip length ``L``; 16000 keeps the 1-s synthetic clips as they are.
    progress : bool
        Show a progress bar while reading.
    splits : sequence of str, optional
        Only these splits (default all).

    Returns
    -------
    SpoofCorpus
        Clips in ``protocol.txt`` order; clip ids ``bonafide/<speaker>/<utt>.wav`` and
        ``spoof/<attack>/<speaker>/<utt>.wav``.
    """
    root = check_root(root)
    wanted = _check_args(num_samples, splits)
    items: list[_Item] = []
    for speaker, utt, attack, label, split in read_protocol(root):
        if split not in wanted:
            continue
        if label == BONAFIDE:
            path = bonafide_path(root, speaker, utt)
        else:
            path = spoof_path(root, attack, speaker, utt)
        items.append(_Item(path, _label(label, PROTOCOL), attack, speaker, _rel(path, root), split))
    return _build(root, items, num_samples, progress, "built-in spoof")


# --- ASVspoof ----------------------------------------------------------------------------------


def _asv_item(
    parts: list[str],
    audio: Path,
    root: Path,
    split: str,
    attack_col: int,
    label_col: int,
    where: str,
) -> _Item:
    label = _label(parts[label_col], where)
    attack = BONAFIDE if label == BONAFIDE_LABEL else parts[attack_col]
    if label == SPOOF_LABEL and attack in ("-", BONAFIDE):
        raise DataError(f"{where}: spoof line without an attack id")
    path = audio / f"{parts[1]}.flac"
    return _Item(path, label, attack, parts[0], _rel(path, root), split)


@SPOOF_DATASETS.register("asvspoof2019_la")
def load_asvspoof2019_la(
    root: Path,
    *,
    num_samples: int = AASIST_SAMPLES,
    progress: bool = False,
    splits: Sequence[str] | None = None,
) -> SpoofCorpus:
    """Load ASVspoof 2019 logical access (train, dev, eval -> train, validation, test).

    Parameters
    ----------
    root : Path
        The ``LA`` folder, or a folder holding it (layout in the module docstring).
    num_samples : int
        Clip length ``L``; 64600 (4.04 s) is AASIST's.
    progress : bool
        Show a progress bar while reading.
    splits : sequence of str, optional
        Only these splits (default all); the others' audio is not read.

    Returns
    -------
    SpoofCorpus
        Attack ids ``A01``-``A19`` as in the protocols; clip ids relative to ``root``.
    """
    root = check_root(root)
    wanted = _check_args(num_samples, splits)
    base = root / "LA" if not (root / "ASVspoof2019_LA_cm_protocols").is_dir() else root
    protocols = base / "ASVspoof2019_LA_cm_protocols"
    if not protocols.is_dir():
        raise DataError(
            f"ASVspoof2019_LA_cm_protocols not found under {root} (expected the LA folder)"
        )
    items: list[_Item] = []
    absent: list[str] = []
    for part, split, name in _ASV19_PROTOCOLS:
        if split not in wanted:
            continue
        path = protocols / name
        if not path.is_file():
            absent.append(name)
            continue
        audio = base / f"ASVspoof2019_LA_{part}" / "flac"
        if not audio.is_dir():
            raise DataError(f"{name} is there but the audio folder {audio} is not")
        for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            where = f"{path}:{no}"
            if len(parts) != 5:
                raise DataError(f"{where}: expected 'SPEAKER UTT - ATTACK LABEL': {line!r}")
            items.append(_asv_item(parts, audio, root, split, 3, 4, where))
    if absent:
        warnings.warn(f"ASVspoof 2019 LA protocol(s) missing: {', '.join(absent)}", stacklevel=2)
    return _build(root, items, num_samples, progress, "ASVspoof 2019 LA")


def _load_asvspoof2021(
    root: Path, track: str, num_samples: int, progress: bool, splits: Sequence[str] | None
) -> SpoofCorpus:
    root = check_root(root)
    wanted = _check_args(num_samples, splits)
    what = f"ASVspoof 2021 {track}"
    candidates = [
        root / "keys" / track / "CM" / "trial_metadata.txt",
        root / f"{track}-keys-full" / "keys" / track / "CM" / "trial_metadata.txt",
    ]
    meta = next((p for p in candidates if p.is_file()), None)
    if meta is None:
        raise DataError(
            f"{what} keys not found under {root}: expected keys/{track}/CM/trial_metadata.txt"
        )
    audio = root / f"ASVspoof2021_{track}_eval" / "flac"
    if not audio.is_dir():
        raise DataError(f"{what} audio folder {audio} not found")
    items: list[_Item] = []
    if "test" in wanted:
        for no, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            where = f"{meta}:{no}"
            if len(parts) < 6:
                raise DataError(
                    f"{where}: expected 'SPEAKER UTT CODEC SOURCE ATTACK LABEL ...': {line!r}"
                )
            items.append(_asv_item(parts, audio, root, "test", 4, 5, where))
    return _build(root, items, num_samples, progress, what)


@SPOOF_DATASETS.register("asvspoof2021_df")
def load_asvspoof2021_df(
    root: Path,
    *,
    num_samples: int = AASIST_SAMPLES,
    progress: bool = False,
    splits: Sequence[str] | None = None,
) -> SpoofCorpus:
    """Load the ASVspoof 2021 deepfake evaluation set (all ``test``; layout in module doc).

    Attack ids are the fifth column of ``trial_metadata.txt`` (``A07`` ... or vocoder ids).
    """
    return _load_asvspoof2021(root, "DF", num_samples, progress, splits)


@SPOOF_DATASETS.register("asvspoof2021_la")
def load_asvspoof2021_la(
    root: Path,
    *,
    num_samples: int = AASIST_SAMPLES,
    progress: bool = False,
    splits: Sequence[str] | None = None,
) -> SpoofCorpus:
    """Load the ASVspoof 2021 logical-access evaluation set (all ``test``; as ``DF``)."""
    return _load_asvspoof2021(root, "LA", num_samples, progress, splits)


# --- In-the-Wild -------------------------------------------------------------------------------


@SPOOF_DATASETS.register("in_the_wild")
def load_in_the_wild(
    root: Path,
    *,
    num_samples: int = AASIST_SAMPLES,
    progress: bool = False,
    splits: Sequence[str] | None = None,
) -> SpoofCorpus:
    """Load In-the-Wild (Müller et al. 2022): all ``test``, spoofs as attack ``itw-spoof``.

    Parameters
    ----------
    root : Path
        Folder holding ``meta.csv`` (or ``release_in_the_wild/meta.csv``) and the audio.
    num_samples, progress, splits
        As for :func:`load_asvspoof2019_la`.
    """
    root = check_root(root)
    wanted = _check_args(num_samples, splits)
    base = root if (root / "meta.csv").is_file() else root / "release_in_the_wild"
    meta = base / "meta.csv"
    if not meta.is_file():
        raise DataError(f"meta.csv not found under {root}")
    items: list[_Item] = []
    with open(meta, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"file", "speaker", "label"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{meta}: missing column(s) {', '.join(sorted(missing))}")
        for no, row in enumerate(reader, 2):
            word = (row["label"] or "").strip().lower()
            if word in ("bona-fide", "bonafide", "bona fide"):
                label, attack = BONAFIDE_LABEL, BONAFIDE
            elif word == "spoof":
                label, attack = SPOOF_LABEL, ITW_ATTACK
            else:
                raise DataError(f"{meta}:{no}: label must be 'bona-fide' or 'spoof', got {word!r}")
            path = base / (row["file"] or "").strip()
            speaker = (row["speaker"] or "").strip() or UNKNOWN_SPEAKER
            if "test" in wanted:
                items.append(_Item(path, label, attack, speaker, _rel(path, root), "test"))
    return _build(root, items, num_samples, progress, "In-the-Wild")


# --- Fake-or-Real ------------------------------------------------------------------------------


@SPOOF_DATASETS.register("fake_or_real")
def load_fake_or_real(
    root: Path,
    *,
    num_samples: int = AASIST_SAMPLES,
    progress: bool = False,
    splits: Sequence[str] | None = None,
) -> SpoofCorpus:
    """Load Fake-or-Real (for-norm, for-2sec or for-rerec; layout in the module docstring).

    Parameters
    ----------
    root : Path
        The version's folder, holding ``training/``, ``validation/`` and ``testing/``.
    num_samples, progress, splits
        As for :func:`load_asvspoof2019_la`.
    """
    root = check_root(root)
    wanted = _check_args(num_samples, splits)
    present = [(d, s) for d, s in _FOR_SPLITS if (root / d).is_dir()]
    if not present:
        raise DataError(f"no training/, validation/ or testing/ folder under {root}")
    items: list[_Item] = []
    for folder, split in present:
        if split not in wanted:
            continue
        for kind, label, attack in (
            ("real", BONAFIDE_LABEL, BONAFIDE),
            ("fake", SPOOF_LABEL, FOR_ATTACK),
        ):
            sub = root / folder / kind
            if not sub.is_dir():
                continue
            with os.scandir(sub) as it:
                names = sorted(
                    e.name
                    for e in it
                    if e.name.lower().endswith(".wav") and not e.name.startswith(".")
                )
            for name in names:
                path = sub / name
                items.append(_Item(path, label, attack, UNKNOWN_SPEAKER, _rel(path, root), split))
    return _build(root, items, num_samples, progress, "Fake-or-Real")
