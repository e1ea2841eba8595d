"""The task plugin interface and its registry.

A task (keyword spotting, speech-deepfake detection) owns everything that differs between
tasks: the validation of its settings, how a run is prepared, the keys its clients are sent,
how a client trains, and how the server evaluates the global model. The Flower apps
(:mod:`fedspeech.federation`) only dispatch through ``TASKS.get(cfg.task)``; they never
branch on the task's name.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedspeech.augment import build_augmentation
from fedspeech.config import SimConfig
from fedspeech.data.partition import PARTITIONS
from fedspeech.models import MODELS, build_model
from fedspeech.models.weights import check_weights_file, load_weights
from fedspeech.registry import Registry
from fedspeech.tasks.prepare import RunData
from fedspeech.training.defense import Defense
from fedspeech.training.sdd import augment_fn


@dataclass
class ClientResult:
    """What a client's local work gives back to the server.

    Attributes
    ----------
    arrays : dict[str, torch.Tensor]
        What the client shares: its updated weights (a state dict) or one gradient.
    num_examples : int
        Examples it trained on (FedAvg's weight).
    loss : float
        Its training loss.
    metrics : dict[str, float]
        Task-specific metrics sent with the reply (e.g. ``conflict-rate``).
    """

    arrays: dict[str, torch.Tensor]
    num_examples: int
    loss: float
    metrics: dict[str, float] = field(default_factory=dict)


class Task(ABC):
    """One federated task, registered in :data:`TASKS` under its ``--task`` name."""

    @abstractmethod
    def validate(self, cfg: SimConfig) -> None:
        """Raise :class:`~fedspeech.errors.ConfigError` on names no run of any task could use.

        Subclasses add their own checks and call this one: the model and the partition are
        registered names.
        """
        MODELS.get(cfg.model)
        PARTITIONS.get(cfg.partition)
        if cfg.init_weights:
            check_weights_file(cfg.init_weights, cfg.model)

    def initial_weights(self, cfg: SimConfig, data: RunData) -> dict[str, torch.Tensor]:
        """The model built for ``data`` and filled from ``--init-weights``, as a state dict.

        Raises
        ------
        ConfigError, DataError
            The file does not fit the model (a key or shape named), or cannot be read.
        """
        assert cfg.init_weights is not None
        model = build_model(cfg.model, **self.model_kwargs(cfg, data))
        load_weights(model, cfg.model, cfg.init_weights)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    @abstractmethod
    def prepare(self, cfg: SimConfig, run_dir: Path | None = None) -> RunData:
        """Load the data, partition the clients and write ``run_dir/data`` (see RunData).

        Raises
        ------
        ConfigError, DataError
            Unknown names, missing data, impossible partitions, and similar bad input.
        """

    @abstractmethod
    def model_kwargs(self, cfg: SimConfig, data: RunData) -> dict[str, Any]:
        """Keyword arguments that rebuild the run's model (stored in every capture)."""

    @abstractmethod
    def capture_frontend(self, cfg: SimConfig) -> str:
        """The front-end name stored in captures (what turns a waveform into model input)."""

    def client_config(self, cfg: SimConfig) -> dict[str, Any]:
        """Keys this task's clients are sent besides the shared ones (none by default)."""
        return {}

    def training_meta(self, cfg: SimConfig) -> dict[str, Any]:
        """Local-training settings added to every capture's metadata (none by default)."""
        return {}

    @abstractmethod
    def train(
        self,
        model: nn.Module,
        features: np.ndarray,
        labels: np.ndarray,
        batches: list[np.ndarray],
        settings: Mapping[str, Any],
        client_id: int,
    ) -> ClientResult:
        """One client's local work in a round.

        Parameters
        ----------
        model : nn.Module
            At the global weights; trained in place.
        features, labels : np.ndarray
            The run's ``(N, ...)`` inputs (memory-mapped) and ``(N,)`` labels.
        batches : list[np.ndarray]
            The round's mini-batches (corpus positions), from
            :func:`~fedspeech.training.local.local_batches`.
        settings : Mapping[str, Any]
            The server's train config (hyphenated keys: ``lr``, ``share``, ``seed``,
            ``server-round``, and the keys of :meth:`client_config`).
        client_id : int
            The client's partition id.
        """

    def evaluate(self, logits: torch.Tensor, labels: np.ndarray, data: RunData) -> dict[str, float]:
        """Metrics of the global model beyond accuracy and loss, from its test ``logits``.

        NaN marks a metric that is undefined this round. None by default.
        """
        return {}


TASKS: Registry[Task] = Registry("task")

__all__ = ["TASKS", "ClientResult", "Task", "defense_of", "private_dual_path"]


def defense_of(cfg: SimConfig) -> Defense:
    """The run's defense settings (``--dp``, ``--prune-ratio``, ...)."""
    return Defense(
        dp=cfg.dp,
        clip=cfg.dp_clip,
        noise=cfg.dp_noise if cfg.dp != "none" else 0.0,
        prune_ratio=cfg.prune_ratio,
        quantize_bits=cfg.quantize_bits,
        secagg=cfg.secagg,
        delta=cfg.dp_delta,
    )


def private_dual_path(
    net: nn.Module,
    model: nn.Module,
    inputs: np.ndarray,
    labels: np.ndarray,
    batches: list[np.ndarray],
    settings: Mapping[str, Any],
    client_id: int,
) -> ClientResult:
    """DP-SGD of the dual-path step (:func:`~fedspeech.training.dp_sgd.train_dp_dual_path`).

    ``net`` is what trains (``model`` itself, or a front-end followed by it); ``model``'s
    weights are the reply. No conflict rate is sent: the privacy analysis does not cover it.
    """
    # Deferred: Opacus takes 1.5 s to import, which other runs need not pay.
    from fedspeech.training.dp_sgd import train_dp_dual_path

    defense = Defense.from_meta(json.loads(str(settings.get("defense", "{}"))))
    assert defense.clip is not None  # SimConfig.validate
    seed = (int(settings["seed"]), int(settings["server-round"]), client_id)
    aug = build_augmentation(str(settings["augment"]))
    res = train_dp_dual_path(
        net,
        inputs,
        labels,
        batches,
        augment=augment_fn(aug, np.random.default_rng(seed)),
        alignment=str(settings["alignment"]),
        lr=float(settings["lr"]),
        optimizer=str(settings["optimizer"]),
        clip=defense.clip,
        noise=defense.noise,
        weight_decay=float(settings.get("weight-decay", 0.0)),
    )
    return ClientResult(model.state_dict(), num_examples=res.num_examples, loss=res.loss)
