"""Speech-deepfake detection (``--task sdd``): clips, partition, scoring sets, local training.

The run's ``data/features.npy`` holds the raw waveforms themselves, ``(N, clip_samples)``
float32, of the training clips and of the scored test clips only (the rest of the corpus is
not copied); ``labels.npy`` holds 1 = bona fide, 0 = spoof; ``index.json`` adds each clip's
attack id and the two scoring subsets; ``domains_attack.npy`` and ``domains_speaker.npy``
number each clip's attack (``bonafide`` is one of them) and speaker as ``(N,)`` int64, the
domains of ``--alignment roga --roga-domains attack|speaker``.

Data
----
* ``--dataset builtin`` (default): the built-in corpus of
  :func:`fedspeech.data.spoof.build_spoof_corpus` (bona fide eSpeak NG keyword clips and their
  re-syntheses by Griffin-Lim, Mel inversion and a codec, seen in training, and by an LPC
  vocoder, held out for test speakers), built on first use with its default parameters
  (``--bonafide-root DIR``: from real speech instead), or read from ``--data-root``. Its clips
  are 1 s long and the words sit near the middle, so a shorter ``--clip-samples`` keeps the
  centre of each clip.
* ``asvspoof2019_la``, ``asvspoof2021_df``, ``asvspoof2021_la``, ``in_the_wild``,
  ``fake_or_real`` with ``--data-root`` (:mod:`fedspeech.data.spoof_loaders`): clips are
  fitted to ``--clip-samples`` as AASIST does (cropped from the start, or repeated).

Scoring: every bona fide test clip with the spoofs of attacks seen in training (``eer``), and
with those of held-out attacks (``eer_unseen``). ``--test-clips N`` scores a fixed random
subset of ``N`` test clips, the same whatever ``--seed``, so runs with different seeds are
scored on the same clips.

Clients train with the local trainer ``--alignment`` names
(:data:`fedspeech.training.sdd.LOCAL_TRAINERS`: dual-path training with an aligner, or RoGA);
the server scores the global model's EER on seen and unseen attacks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedspeech.augment import build_augmentation
from fedspeech.capture import WAVEFORM
from fedspeech.config import SimConfig
from fedspeech.data.corpus import SAMPLE_RATE
from fedspeech.data.partition import PARTITIONS, partition
from fedspeech.data.spoof import BUILTIN_SAMPLES, SpoofCorpus, build_spoof_corpus
from fedspeech.data.spoof_loaders import SPOOF_DATASETS, load_spoof_dataset
from fedspeech.errors import ConfigError, DataError
from fedspeech.models import MODELS, build_model
from fedspeech.tasks.base import TASKS, ClientResult, Task, private_dual_path
from fedspeech.tasks.prepare import RunData, default_run_dir, open_domains
from fedspeech.training.defense import Defense
from fedspeech.training.domains import ROGA_DOMAINS
from fedspeech.training.dual_path import OPTIMIZERS
from fedspeech.training.sdd import (
    LOCAL_TRAINERS,
    ROGA,
    bona_fide_scores,
    sdd_scores,
    train_sdd,
)

CLASSES = ["spoof", "bonafide"]
# The scored subset of the test split does not depend on --seed (see the module docstring).
EVAL_SUBSET_SEED = 0


def sdd_model_kwargs(clip_samples: int) -> dict[str, int]:
    """Keyword arguments that rebuild an sdd model: two classes, the clip length."""
    return {"num_classes": 2, "num_samples": clip_samples}


def center_crop(waveforms: np.ndarray, num_samples: int) -> np.ndarray:
    """The middle ``num_samples`` of every clip ``(N, L)`` → ``(N, num_samples)``.

    Examples
    --------
    >>> center_crop(np.arange(10.0)[None], 4).tolist()
    [[3.0, 4.0, 5.0, 6.0]]
    """
    length = waveforms.shape[1]
    if num_samples >= length:
        return waveforms
    start = (length - num_samples) // 2
    return waveforms[:, start : start + num_samples]


def load_sdd_corpus(cfg: SimConfig) -> SpoofCorpus:
    """The configured spoof corpus with clips of ``cfg.clip_samples`` samples."""
    if cfg.bonafide_root and cfg.dataset != "builtin":
        raise ConfigError(
            "--bonafide-root builds the built-in corpus; use it with --dataset builtin"
        )
    if cfg.bonafide_root and cfg.data_root:
        raise ConfigError(
            "give either --data-root (a built corpus) or --bonafide-root (speech to build from)"
        )
    root: Path | None = Path(cfg.data_root) if cfg.data_root else None
    if cfg.dataset == "builtin":
        if root is None:
            bona = Path(cfg.bonafide_root) if cfg.bonafide_root else None
            root = build_spoof_corpus(bona, progress=cfg.progress)
        # Built-in clips are 1 s with the word near the middle: keep the centre.
        length = max(cfg.clip_samples, BUILTIN_SAMPLES)
        corpus = load_spoof_dataset(cfg.dataset, root, num_samples=length, progress=cfg.progress)
        corpus.waveforms = np.ascontiguousarray(center_crop(corpus.waveforms, cfg.clip_samples))
        return corpus
    if root is None:
        raise ConfigError(f"dataset {cfg.dataset!r} needs --data-root")
    return load_spoof_dataset(
        cfg.dataset, root, num_samples=cfg.clip_samples, progress=cfg.progress
    )


def domain_ids(names: list[str]) -> np.ndarray:
    """``(N,)`` int64 position of each name in the sorted list of distinct names.

    Examples
    --------
    >>> domain_ids(["gl", "bonafide", "gl", "codec"]).tolist()
    [2, 0, 2, 1]
    """
    _, ids = np.unique(np.asarray(names, dtype=str), return_inverse=True)
    return ids.astype(np.int64).reshape(-1)


def clip_domains(corpus: SpoofCorpus, rows: list[int]) -> dict[str, np.ndarray]:
    """Domain ids of the clips ``rows`` for every per-clip kind of RoGA domain.

    Returns
    -------
    dict[str, np.ndarray]
        ``attack`` and ``speaker`` (the kinds of :data:`~fedspeech.training.domains.ROGA_DOMAINS`
        that are a property of the clips) → ``(len(rows),)`` int64 ids (:func:`domain_ids`).
    """
    out: dict[str, np.ndarray] = {}
    for kind in ROGA_DOMAINS:
        attribute = ROGA_DOMAINS.get(kind).attribute
        if attribute is not None:
            values = getattr(corpus, attribute)
            out[kind] = domain_ids([values[i] for i in rows])
    return out


def select_roga_domains(kind: str, features_path: str) -> np.ndarray | None:
    """The ``roga_domains`` argument of :func:`~fedspeech.training.sdd.train_sdd`.

    Parameters
    ----------
    kind : str
        A name in :data:`~fedspeech.training.domains.ROGA_DOMAINS`: ``attack``, ``speaker``
        or ``path``.
    features_path : str
        The run's ``data/features.npy``; the domain ids are read from beside it.

    Returns
    -------
    np.ndarray or None
        ``(N,)`` int64 domain id of every clip of the run, or ``None`` for ``path`` (the
        clean and augmented halves of a batch are the domains).

    Raises
    ------
    ConfigError
        Unknown ``kind``.
    DataError
        The run was prepared without that kind's ids.
    """
    if ROGA_DOMAINS.get(kind).attribute is None:
        return None
    return open_domains(features_path, kind)


def eval_subsets(
    corpus: SpoofCorpus, split: str, max_clips: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Scored clips of ``split`` and the two scoring subsets.

    Parameters
    ----------
    corpus : SpoofCorpus
        The loaded corpus.
    split : str
        ``"test"`` (or ``"validation"`` when a dataset has no test split).
    max_clips : int
        Score at most this many clips (a random subset drawn with a fixed seed); 0 = all.

    Returns
    -------
    positions : np.ndarray
        ``(n,)`` corpus positions of the scored clips, ascending.
    subsets : dict[str, np.ndarray]
        ``eer`` and ``eer_unseen`` → positions into ``positions``.
    """
    seen, unseen = corpus.seen_unseen(split)
    scored = np.union1d(seen, unseen)
    if 0 < max_clips < len(scored):
        rng = np.random.default_rng(EVAL_SUBSET_SEED)
        scored = np.sort(rng.choice(scored, size=max_clips, replace=False))
    where = {int(p): k for k, p in enumerate(scored)}
    subsets = {
        name: np.array([where[int(i)] for i in idx if int(i) in where], dtype=np.int64)
        for name, idx in (("eer", seen), ("eer_unseen", unseen))
    }
    return scored.astype(np.int64), subsets


def prepare_sdd_run(cfg: SimConfig, run_dir: Path | None = None) -> RunData:
    """Load the spoof corpus, partition clients by speaker, and write ``run_dir/data``.

    Returns
    -------
    RunData
        As for keyword spotting; ``input_shape`` is ``(clip_samples,)``, ``classes``
        ``["spoof", "bonafide"]``, and ``eval_sets`` holds the scoring subsets.

    Raises
    ------
    ConfigError, DataError
        Unknown names, clips too short for the model, missing data, impossible partitions.
    """
    # Unknown names and too-short clips fail here, before any data is read or Ray starts.
    MODELS.get(cfg.model)
    SPOOF_DATASETS.get(cfg.dataset)
    PARTITIONS.get(cfg.partition)
    build_model(cfg.model, **sdd_model_kwargs(cfg.clip_samples))
    run_dir = Path(run_dir or cfg.out or default_run_dir())
    corpus = load_sdd_corpus(cfg)
    train_idx = corpus.indices("train")
    split = "test" if len(corpus.indices("test")) else "validation"
    if len(train_idx) == 0:
        raise DataError(f"dataset {cfg.dataset!r} has no training clips")
    if len(corpus.indices(split)) == 0:
        raise DataError(f"dataset {cfg.dataset!r} has no test or validation clips")
    if len(set(corpus.labels[train_idx].tolist())) < 2:
        raise DataError(f"the training split of {cfg.dataset!r} lacks bona fide or spoof clips")
    scored, subsets = eval_subsets(corpus, split, cfg.test_clips)
    parts = partition(
        corpus, train_idx, cfg.clients, scheme=cfg.partition, alpha=cfg.alpha, seed=cfg.seed
    )

    # Keep only what the run reads: training clips, then the scored clips.
    keep = np.concatenate([train_idx, scored])
    new_pos = {int(old): new for new, old in enumerate(keep)}
    parts = [np.array([new_pos[int(i)] for i in p], dtype=np.int64) for p in parts]
    test_indices = np.arange(len(train_idx), len(keep), dtype=np.int64)
    rows = [int(i) for i in keep]

    meta = {
        "classes": CLASSES,
        "clip_ids": [corpus.clip_ids[i] for i in rows],
        "speakers": [corpus.speakers[i] for i in rows],
        "split": [corpus.split[i] for i in rows],
        "attacks": [corpus.attacks[i] for i in rows],
    }
    index = {
        **meta,
        "sample_rate": SAMPLE_RATE,
        "eval": {name: idx.tolist() for name, idx in subsets.items()},
    }
    run = RunData(
        run_dir=run_dir,
        classes=list(CLASSES),
        input_shape=(cfg.clip_samples,),
        test_indices=test_indices,
        partitions=parts,
        corpus_meta={k: v for k, v in meta.items() if k != "classes"},
        eval_sets=subsets,
        domains=clip_domains(corpus, rows),
    )
    run.write(corpus.waveforms[keep].astype(np.float32), corpus.labels[keep], index, cfg.partition)
    return run


class SpeechDeepfakeDetection(Task):
    """``--task sdd``: AASIST-style detectors trained on raw waveforms, scored by EER."""

    def validate(self, cfg: SimConfig) -> None:
        """Values only speech-deepfake detection reads (names behind their registries)."""

        if cfg.share != "update":
            raise ConfigError("--task sdd trains locally and shares updates; use --share update")
        if cfg.strategy == "fedprox":
            raise ConfigError(
                "--strategy fedprox is not available with --task sdd (the dual-path "
                "step has no proximal term); use fedavg or fedadam"
            )
        aug = build_augmentation(cfg.augment)
        if aug.domain != "wave":
            raise ConfigError(
                f"--augment {cfg.augment!r} works on spectral features; --task sdd "
                "models take raw waveforms (use rawboost:N)"
            )
        if cfg.dp == "sgd" and cfg.alignment == ROGA:
            raise ConfigError(
                "--dp sgd works with the dual-path aligners (none, pcgrad, gradvac, cagrad, "
                "upgrad), not --alignment roga (its ascent step reads the whole batch)"
            )
        super().validate(cfg)
        SPOOF_DATASETS.get(cfg.dataset)
        LOCAL_TRAINERS.get(cfg.alignment)
        OPTIMIZERS.get(cfg.optimizer)
        ROGA_DOMAINS.get(cfg.roga_domains)

    def prepare(self, cfg: SimConfig, run_dir: Path | None = None) -> RunData:
        """:func:`prepare_sdd_run`."""
        return prepare_sdd_run(cfg, run_dir)

    def model_kwargs(self, cfg: SimConfig, data: RunData) -> dict[str, Any]:
        """Two classes and the clip length (``dropout=False`` only when it is off)."""
        kwargs: dict[str, Any] = {
            "num_classes": len(data.classes),
            "num_samples": int(data.input_shape[-1]),
        }
        if not cfg.dropout:  # only when off, so captures of default runs stay as they were
            kwargs["dropout"] = False
        return kwargs

    def capture_frontend(self, cfg: SimConfig) -> str:
        """The models take the waveform itself: no front-end outside the model."""
        return WAVEFORM

    def client_config(self, cfg: SimConfig) -> dict[str, Any]:
        """The augmentation, the local trainer and its settings."""
        return {
            "augment": cfg.augment,
            "alignment": cfg.alignment,
            "optimizer": cfg.optimizer,
            "weight-decay": cfg.weight_decay,
            "roga-rho": cfg.roga_rho,
            "roga-alpha": cfg.roga_alpha,
            "roga-domains": cfg.roga_domains,
        }

    def training_meta(self, cfg: SimConfig) -> dict[str, Any]:
        """The task and the local trainer's settings."""
        return {
            "task": "sdd",
            "augment": cfg.augment,
            "alignment": cfg.alignment,
            "optimizer": cfg.optimizer,
            "weight_decay": cfg.weight_decay,
            "roga_rho": cfg.roga_rho,
            "roga_alpha": cfg.roga_alpha,
            "roga_domains": cfg.roga_domains,
        }

    def train(
        self,
        model: nn.Module,
        features: np.ndarray,
        labels: np.ndarray,
        batches: list[np.ndarray],
        settings: Mapping[str, Any],
        client_id: int,
    ) -> ClientResult:
        """:func:`~fedspeech.training.sdd.train_sdd`; shares the updated weights."""

        kind = str(settings["roga-domains"])
        alignment = str(settings["alignment"])
        defense = Defense.from_meta(json.loads(str(settings.get("defense", "{}"))))
        if defense.dp == "sgd":
            return private_dual_path(model, model, features, labels, batches, settings, client_id)
        domains = None
        if alignment == ROGA:  # the other trainers take no domains: no file to read
            domains = select_roga_domains(kind, str(settings["features-path"]))
        res = train_sdd(
            model,
            features,
            labels,
            batches,
            augment=str(settings["augment"]),
            alignment=alignment,
            lr=float(settings["lr"]),
            optimizer=str(settings["optimizer"]),
            weight_decay=float(settings.get("weight-decay", 0.0)),
            seed=(int(settings["seed"]), int(settings["server-round"]), client_id),
            roga_rho=float(settings["roga-rho"]),
            roga_alpha=float(settings["roga-alpha"]),
            roga_domains=domains,
        )
        return ClientResult(
            model.state_dict(),
            num_examples=res.num_examples,
            loss=res.loss,
            metrics={"conflict-rate": res.conflict_rate},
        )

    def evaluate(self, logits: torch.Tensor, labels: np.ndarray, data: RunData) -> dict[str, float]:
        """EER on seen (``eer``) and held-out attacks (``eer_unseen``) of the test clips."""

        return sdd_scores(bona_fide_scores(logits), labels, data.eval_sets)


SDD = TASKS.register("sdd")(SpeechDeepfakeDetection())

__all__ = [
    "CLASSES",
    "EVAL_SUBSET_SEED",
    "SDD",
    "SpeechDeepfakeDetection",
    "center_crop",
    "clip_domains",
    "domain_ids",
    "eval_subsets",
    "load_sdd_corpus",
    "prepare_sdd_run",
    "sdd_model_kwargs",
    "select_roga_domains",
]
