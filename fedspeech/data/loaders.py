"""Dataset loaders: a folder on disk in, a :class:`KeywordCorpus` out.

Every loader has the signature of :class:`DatasetLoader` and is registered in
:data:`DATASETS`; :func:`load_dataset` looks one up by name and checks the root first.

Layouts
-------
``speech_commands`` (also ``speech_commands_v1``, ``speech_commands_v2``, ``synth``)
    ``<root>/<word>/<speaker>_nohash_<n>.wav`` with ``validation_list.txt`` and
    ``testing_list.txt`` at the root. If both lists are absent the split falls back to the
    speaker hash rule of the Speech Commands README (about 10 % validation, 10 % test,
    speaker-disjoint) with a warning; if only one is present that is a broken copy and a
    :class:`DataError` names the missing file.
``fsdd``
    ``<root>/recordings/<digit>_<speaker>_<take>.wav`` (``root`` may also be the
    ``recordings`` folder itself). Classes are ``"zero"`` ... ``"nine"`` with label = digit;
    takes 0-4 are the test split, the rest train; there is no validation split.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from fedspeech.data.audio import read_clips
from fedspeech.data.corpus import CLIP_SAMPLES, KeywordCorpus
from fedspeech.errors import ConfigError, DataError
from fedspeech.registry import Registry

SPEECH_COMMANDS_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
FSDD_CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

VALIDATION_LIST = "validation_list.txt"
TESTING_LIST = "testing_list.txt"
BACKGROUND_NOISE = "_background_noise_"

_FSDD_NAME = re.compile(r"^(\d)_(.+)_(\d+)\.wav$", re.IGNORECASE)
_NOHASH = "_nohash_"


class DatasetLoader(Protocol):
    """Signature shared by every registered loader."""

    def __call__(
        self,
        root: Path,
        *,
        words: str | Sequence[str] | None = None,
        progress: bool = False,
    ) -> KeywordCorpus: ...


DATASETS: Registry[DatasetLoader] = Registry("dataset")


class _Entry(NamedTuple):
    path: Path
    label: int
    speaker: str
    clip_id: str
    split: str


def load_dataset(name: str, root: Path | str | None, **kw: Any) -> KeywordCorpus:
    """Load the dataset registered as ``name`` from ``root``.

    Parameters
    ----------
    name : str
        A name in :data:`DATASETS`.
    root : Path, str or None
        Dataset folder. None is an error here: building the synthetic corpus is the
        caller's job.
    **kw
        Passed to the loader (``words``, ``progress``).

    Raises
    ------
    ConfigError
        Unknown dataset name.
    DataError
        Root missing, not a folder, or without usable clips.
    """
    loader = DATASETS.get(name)
    if root is None:
        raise DataError(f"no data root given for dataset {name!r}")
    return loader(check_root(root), **kw)


def check_root(root: Path | str) -> Path:
    """``root`` as a Path, or a DataError if it is missing or not a folder."""
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"data root {path} does not exist")
    if not path.is_dir():
        raise DataError(f"data root {path} is not a directory")
    return path


def _wav_names(folder: Path) -> list[str]:
    # scandir, not Path.iterdir: it avoids a stat per file on the 100k-file Speech Commands.
    with os.scandir(folder) as it:
        return sorted(
            e.name
            for e in it
            if e.name.lower().endswith(".wav") and not e.name.startswith(".") and e.is_file()
        )


def _build(
    root: Path, entries: list[_Entry], classes: list[str], what: str, progress: bool
) -> KeywordCorpus:
    """Read the clips of ``entries`` and assemble the corpus, skipping bad files."""
    if not entries:
        raise DataError(f"no {what} clips found under {root}")
    waves, bad = read_clips([e.path for e in entries], progress=progress)
    kept = [i for i, w in enumerate(waves) if w is not None]
    if bad:
        warnings.warn(f"skipped {bad} unreadable or non-PCM WAV files under {root}", stacklevel=3)
    if not kept:
        raise DataError(f"no readable {what} clips found under {root} ({bad} bad files)")
    waveforms = np.empty((len(kept), CLIP_SAMPLES), dtype=np.float32)
    for row, i in enumerate(kept):
        waveforms[row] = waves[i]
    chosen = [entries[i] for i in kept]
    return KeywordCorpus(
        waveforms=waveforms,
        labels=np.array([e.label for e in chosen], dtype=np.int64),
        speakers=[e.speaker for e in chosen],
        clip_ids=[e.clip_id for e in chosen],
        split=[e.split for e in chosen],
        classes=classes,
        skipped=bad,
    )


def _word_list(words: str | Sequence[str] | None, default: Sequence[str]) -> list[str] | None:
    """Requested words in order; None means "all"."""
    if words is None:
        return list(default)
    if isinstance(words, str):
        if words.strip() == "all":
            return None
        wanted = [w.strip() for w in words.split(",") if w.strip()]
    else:
        wanted = [str(w) for w in words]
    if not wanted:
        raise ConfigError("empty word list")
    dupes = sorted({w for w in wanted if wanted.count(w) > 1})
    if dupes:
        raise ConfigError(f"words listed twice: {', '.join(dupes)}")
    return wanted


def _read_list(path: Path) -> set[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return {ln.strip().replace("\\", "/") for ln in lines if ln.strip()}


def _hash_split(speaker: str) -> str:
    """Speech Commands README rule: a stable, speaker-level 80/10/10 split."""
    buckets = 2**27
    digest = int(hashlib.sha1(speaker.encode("utf-8")).hexdigest(), 16)
    percent = (digest % buckets) * (100.0 / (buckets - 1))
    if percent < 10.0:
        return "validation"
    if percent < 20.0:
        return "test"
    return "train"


def _speaker_of(name: str) -> str:
    stem = name.rsplit(".", 1)[0]
    return stem.split(_NOHASH, 1)[0]


@DATASETS.register("speech_commands")
@DATASETS.register("speech_commands_v1")
@DATASETS.register("speech_commands_v2")
def load_speech_commands(
    root: Path,
    *,
    words: str | Sequence[str] | None = None,
    progress: bool = False,
) -> KeywordCorpus:
    """Load a Speech Commands tree (v1 or v2 layout).

    Parameters
    ----------
    root : Path
        Folder holding one sub-folder per word and the two split lists.
    words : str, sequence of str or None
        None: the 10-word subset ``yes, no, up, down, left, right, on, off, stop, go`` in
        that order. ``"all"``: every word folder except ``_background_noise_``, sorted. A
        sequence or a comma-separated string: those words, in that order.
    progress : bool
        Show a progress bar while reading.

    Returns
    -------
    KeywordCorpus
        Clip ids are ``word/file.wav``; speakers are the part of the file name before
        ``_nohash_`` (the whole stem if it has none).
    """
    root = check_root(root)
    folders = {
        d.name: d
        for d in root.iterdir()
        if d.is_dir() and d.name != BACKGROUND_NOISE and not d.name.startswith(".")
    }
    files = {w: names for w, d in folders.items() if (names := _wav_names(d))}
    if not files:
        raise DataError(f"no Speech Commands clips found under {root}")
    wanted = _word_list(words, SPEECH_COMMANDS_WORDS)
    classes = sorted(files) if wanted is None else wanted
    missing = [w for w in classes if w not in files]
    if missing:
        raise DataError(
            f"no clips for word(s) {', '.join(missing)} under {root}; "
            f"present: {', '.join(sorted(files))} (pass words='all' or a list)"
        )

    val_path, test_path = root / VALIDATION_LIST, root / TESTING_LIST
    if val_path.is_file() and test_path.is_file():
        validation, testing = _read_list(val_path), _read_list(test_path)
        use_hash = False
    elif val_path.is_file() or test_path.is_file():
        absent = TESTING_LIST if val_path.is_file() else VALIDATION_LIST
        raise DataError(f"{absent} missing under {root} (the other split list is there)")
    else:
        warnings.warn(
            f"no {VALIDATION_LIST} or {TESTING_LIST} under {root}; "
            "splitting by speaker hash (about 10% validation, 10% test)",
            stacklevel=2,
        )
        validation, testing, use_hash = set(), set(), True

    entries: list[_Entry] = []
    for label, word in enumerate(classes):
        for name in files[word]:
            clip_id = f"{word}/{name}"
            speaker = _speaker_of(name)
            if use_hash:
                split = _hash_split(speaker)
            elif clip_id in testing:
                split = "test"
            elif clip_id in validation:
                split = "validation"
            else:
                split = "train"
            entries.append(_Entry(folders[word] / name, label, speaker, clip_id, split))
    return _build(root, entries, list(classes), "Speech Commands", progress)


@DATASETS.register("synth")
def load_synth(
    root: Path,
    *,
    words: str | Sequence[str] | None = None,
    progress: bool = False,
) -> KeywordCorpus:
    """Load the built-in synthetic corpus, which is written in Speech Commands layout."""
    return load_speech_commands(root, words=words, progress=progress)


@DATASETS.register("fsdd")
def load_fsdd(
    root: Path,
    *,
    words: str | Sequence[str] | None = None,
    progress: bool = False,
) -> KeywordCorpus:
    """Load the Free Spoken Digit Dataset, resampled from 8 kHz to 16 kHz.

    Parameters
    ----------
    root : Path
        The dataset folder (holding ``recordings/``) or ``recordings/`` itself.
    words : str, sequence of str or None
        None or ``"all"``: the ten digits. Otherwise digits to keep, as ``"3"`` or
        ``"three"``, in the order given; labels are renumbered to that order.
    progress : bool
        Show a progress bar while reading.

    Returns
    -------
    KeywordCorpus
        Classes ``"zero"`` ... ``"nine"``; clip ids ``recordings/<file>.wav`` whichever
        form of ``root`` was given; takes 0-4 are ``"test"``, the rest ``"train"``.
        WAV files not named ``<digit>_<speaker>_<take>.wav`` are ignored.
    """
    root = check_root(root)
    rec = root / "recordings" if (root / "recordings").is_dir() else root
    wanted = _word_list(words, FSDD_CLASSES)
    if wanted is None:
        wanted = list(FSDD_CLASSES)
    digits: list[int] = []
    for w in wanted:
        if w.isdigit() and len(w) == 1:
            digits.append(int(w))
        elif w in FSDD_CLASSES:
            digits.append(FSDD_CLASSES.index(w))
        else:
            raise ConfigError(f"FSDD has no digit {w!r}; use 0-9 or zero-nine")
    if len(set(digits)) != len(digits):
        raise ConfigError(f"digits listed twice: {', '.join(wanted)}")
    label_of = {d: i for i, d in enumerate(digits)}

    parsed: list[tuple[int, str, int, str]] = []
    for name in _wav_names(rec):
        m = _FSDD_NAME.match(name)
        if m and int(m.group(1)) in label_of:
            parsed.append((int(m.group(1)), m.group(2), int(m.group(3)), name))
    parsed.sort(key=lambda t: (label_of[t[0]], t[1], t[2]))
    entries = [
        _Entry(
            rec / name,
            label_of[digit],
            speaker,
            f"recordings/{name}",
            "test" if take < 5 else "train",
        )
        for digit, speaker, take, name in parsed
    ]
    classes = [FSDD_CLASSES[d] for d in digits]
    return _build(root, entries, classes, "FSDD", progress)
