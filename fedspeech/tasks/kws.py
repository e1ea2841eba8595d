"""Keyword spotting (``--task kws``): spectral features, a keyword CNN, FedAvg/FedProx/FedAdam.

The run's ``data/features.npy`` holds the front-end features ``(N, n_features, n_frames)`` of
every clip of the corpus; clients share either their updated weights after local SGD
(``--share update``) or the gradient of one batch (``--share gradient``).
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
from fedspeech.config import SimConfig
from fedspeech.data.corpus import KeywordCorpus
from fedspeech.data.loaders import DATASETS, load_dataset
from fedspeech.data.partition import PARTITIONS, partition
from fedspeech.data.synth import synthesize_corpus
from fedspeech.errors import ConfigError, DataError
from fedspeech.fileio import atomic_save_npy
from fedspeech.frontends import FRONTENDS, build_frontend
from fedspeech.models import MODELS
from fedspeech.tasks.base import TASKS, ClientResult, Task, private_dual_path
from fedspeech.tasks.prepare import (
    RunData,
    compute_features,
    default_run_dir,
    open_waveforms,
    peak_normalize,
    waveforms_file,
)
from fedspeech.training import gradient_and_loss, train_local
from fedspeech.training.defense import Defense
from fedspeech.training.dual_path import OPTIMIZERS
from fedspeech.training.sdd import LOCAL_TRAINERS, ROGA, train_sdd


def resolve_corpus(cfg: SimConfig) -> KeywordCorpus:
    """Load the configured dataset, building the built-in corpus if needed."""
    root: Path | None = Path(cfg.data_root) if cfg.data_root else None
    if cfg.dataset == "synth" and root is None:
        root = synthesize_corpus(
            n_speakers=cfg.synth_speakers,
            takes=cfg.synth_takes,
            seed=cfg.seed,
            progress=cfg.progress,
        )
    elif root is None:
        raise ConfigError(f"dataset {cfg.dataset!r} needs --data-root")
    words: Any = cfg.words
    if isinstance(words, str) and words != "all":
        words = [w.strip() for w in words.split(",") if w.strip()]
    return load_dataset(cfg.dataset, root, words=words, progress=cfg.progress)


def prepare_kws_run(cfg: SimConfig, run_dir: Path | None = None) -> RunData:
    """Load data, compute features, partition clients, and write ``run_dir/data``.

    Raises
    ------
    DataError, ConfigError
        On a missing or empty dataset, an impossible partition, and similar bad input.
    """
    # Unknown names fail here, before any data is read or Ray starts.
    MODELS.get(cfg.model)
    frontend = build_frontend(cfg.frontend)
    PARTITIONS.get(cfg.partition)
    DATASETS.get(cfg.dataset)
    run_dir = Path(run_dir or cfg.out or default_run_dir())
    corpus = resolve_corpus(cfg)
    train_idx = corpus.indices("train")
    test_idx = corpus.indices("test")
    if len(test_idx) == 0:
        test_idx = corpus.indices("validation")
    if len(train_idx) == 0:
        raise DataError(f"dataset {cfg.dataset!r} has no training clips")
    if len(test_idx) == 0:
        raise DataError(f"dataset {cfg.dataset!r} has no test or validation clips")
    parts = partition(
        corpus, train_idx, cfg.clients, scheme=cfg.partition, alpha=cfg.alpha, seed=cfg.seed
    )
    if cfg.normalize == "peak":
        corpus.waveforms = peak_normalize(corpus.waveforms)
    feats = compute_features(corpus.waveforms, frontend)

    meta = {
        "classes": list(corpus.classes),
        "clip_ids": list(corpus.clip_ids),
        "speakers": list(corpus.speakers),
        "split": list(corpus.split),
    }
    run = RunData(
        run_dir=run_dir,
        classes=list(corpus.classes),
        input_shape=(int(feats.shape[1]), int(feats.shape[2])),
        test_indices=test_idx,
        partitions=parts,
        corpus_meta={k: v for k, v in meta.items() if k != "classes"},
    )
    run.write(feats, corpus.labels, meta, cfg.partition)
    if build_augmentation(cfg.augment).domain == "wave" and cfg.augment != "none":
        # A waveform augmentation runs before the front-end: the clients need the clips.
        atomic_save_npy(waveforms_file(run.features_path.parent), corpus.waveforms.astype("f4"))
    return run


class KeywordSpotting(Task):
    """``--task kws``: the keyword-spotting study whose updates and gradients are audited."""

    def validate(self, cfg: SimConfig) -> None:
        """Keyword-spotting names: dataset, model, front-end and partition are registered.

        Dual-path training (``--augment`` other than ``none``) shares updates, takes a
        gradient aligner (not RoGA, whose domains are the detectors' attacks and speakers)
        and no proximal term; ``--alignment`` and ``--optimizer`` mean nothing without it.
        """
        super().validate(cfg)
        DATASETS.get(cfg.dataset)
        FRONTENDS.get(cfg.frontend)
        build_augmentation(cfg.augment)
        LOCAL_TRAINERS.get(cfg.alignment)
        OPTIMIZERS.get(cfg.optimizer)
        if cfg.augment == "none":
            keys = ("alignment", "optimizer", "weight_decay")
            stray = [f"--{k.replace('_', '-')}" for k in keys if k in cfg.explicit]
            if stray:
                raise ConfigError(
                    f"{' and '.join(stray)} need --augment with --task kws (without a second "
                    "path, clients run plain local SGD)"
                )
            return
        if cfg.share != "update":
            raise ConfigError("dual-path training (--augment) shares updates; use --share update")
        if cfg.alignment == ROGA:
            raise ConfigError(
                "--alignment roga is for --task sdd (its domains are attacks and speakers); "
                "use none, pcgrad, gradvac, cagrad or upgrad"
            )
        if cfg.strategy == "fedprox":
            raise ConfigError("--strategy fedprox has no dual-path step; use fedavg or fedadam")

    def prepare(self, cfg: SimConfig, run_dir: Path | None = None) -> RunData:
        """:func:`prepare_kws_run`."""
        return prepare_kws_run(cfg, run_dir)

    def model_kwargs(self, cfg: SimConfig, data: RunData) -> dict[str, Any]:
        """Classes, the feature shape and the activation."""
        return {
            "num_classes": len(data.classes),
            "input_shape": list(data.input_shape),
            "activation": cfg.activation,
        }

    def client_config(self, cfg: SimConfig) -> dict[str, Any]:
        """The gradient-norm bound of local SGD; the dual-path settings."""
        return {
            "clip-norm": cfg.clip_norm,
            "frontend": cfg.frontend,
            "augment": cfg.augment,
            "alignment": cfg.alignment,
            "optimizer": cfg.optimizer,
            "weight-decay": cfg.weight_decay,
        }

    def training_meta(self, cfg: SimConfig) -> dict[str, Any]:
        """The gradient-norm bound of local SGD (a shared gradient is never clipped); the
        dual-path settings when there is a second path (plain runs' captures unchanged)."""
        meta: dict[str, Any] = {"clip_norm": cfg.clip_norm}
        if cfg.augment != "none":
            meta.update(
                augment=cfg.augment,
                alignment=cfg.alignment,
                optimizer=cfg.optimizer,
                weight_decay=cfg.weight_decay,
            )
        return meta

    def capture_frontend(self, cfg: SimConfig) -> str:
        """``--frontend``: the model reads its features."""
        return cfg.frontend

    def train(
        self,
        model: nn.Module,
        features: np.ndarray,
        labels: np.ndarray,
        batches: list[np.ndarray],
        settings: Mapping[str, Any],
        client_id: int,
    ) -> ClientResult:
        """Local SGD (``share=update``), or one batch's gradient (``share=gradient``)."""
        if str(settings["share"]) == "gradient":
            batch = batches[0]
            x = torch.from_numpy(np.ascontiguousarray(features[batch]))
            y = torch.from_numpy(np.ascontiguousarray(labels[batch]))
            grads, loss = gradient_and_loss(model, x, y)
            return ClientResult(arrays=grads, num_examples=len(batch), loss=loss)
        defense = Defense.from_meta(json.loads(str(settings.get("defense", "{}"))))
        if str(settings.get("augment", "none")) != "none":
            return self._train_dual_path(model, features, labels, batches, settings, client_id)
        if defense.dp == "sgd":
            assert defense.clip is not None  # SimConfig.validate
            # DP-SGD clips each sample's gradient: --clip-norm's per-step bound is moot.
            # Deferred: Opacus takes 1.5 s to import, which other runs need not pay.
            from fedspeech.training.dp_sgd import train_dp_sgd

            res = train_dp_sgd(
                model,
                features,
                labels,
                batches,
                lr=float(settings["lr"]),
                clip=defense.clip,
                noise=defense.noise,
                momentum=float(settings["momentum"]),
            )
            return ClientResult(model.state_dict(), num_examples=res.num_examples, loss=res.loss)
        res = train_local(
            model,
            features,
            labels,
            batches,
            lr=float(settings["lr"]),
            momentum=float(settings["momentum"]),
            proximal_mu=float(settings.get("proximal-mu", 0.0)),
            clip_norm=float(settings["clip-norm"]),
        )
        return ClientResult(model.state_dict(), num_examples=res.num_examples, loss=res.loss)

    def _train_dual_path(
        self,
        model: nn.Module,
        features: np.ndarray,
        labels: np.ndarray,
        batches: list[np.ndarray],
        settings: Mapping[str, Any],
        client_id: int,
    ) -> ClientResult:
        """The detectors' local trainer (:func:`~fedspeech.training.sdd.train_sdd`) on keywords.

        SpecAugment masks the features; a waveform augmentation (RawBoost, noise) acts on the
        clips before the front-end, so the network trained is the front-end (no parameters)
        followed by the model, whose weights are shared.
        """
        aug = build_augmentation(str(settings["augment"]))
        seed = (int(settings["seed"]), int(settings["server-round"]), client_id)
        net: nn.Module = model
        inputs = features
        if aug.domain == "wave":
            inputs = open_waveforms(str(settings["features-path"]))
            net = nn.Sequential(build_frontend(str(settings["frontend"])), model)
        defense = Defense.from_meta(json.loads(str(settings.get("defense", "{}"))))
        if defense.dp == "sgd":
            return private_dual_path(net, model, inputs, labels, batches, settings, client_id)
        out = train_sdd(
            net,
            inputs,
            labels,
            batches,
            augment=aug,
            alignment=str(settings["alignment"]),
            lr=float(settings["lr"]),
            momentum=float(settings["momentum"]),
            weight_decay=float(settings.get("weight-decay", 0.0)),
            optimizer=str(settings["optimizer"]),
            seed=seed,
        )
        return ClientResult(
            model.state_dict(),
            num_examples=out.num_examples,
            loss=out.loss,
            metrics={"conflict-rate": out.conflict_rate},
        )


KWS = TASKS.register("kws")(KeywordSpotting())

__all__ = ["KWS", "KeywordSpotting", "prepare_kws_run", "resolve_corpus"]
