"""Flower ServerApp: Flower's strategy inside the honest-but-curious capture wrapper.

``fedspeech simulate`` builds the app around an already prepared run (:func:`make_server_app`);
``flwr run .`` uses the module-level ``app``, which reads the same keys from the run config
(``[tool.flwr.app.config]`` in ``pyproject.toml``) and prepares the run itself.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    FedAdam,
    FedAvg,
    FedProx,
    Strategy,
)

from fedspeech.audit import audit_rounds, leakage_means
from fedspeech.capture import reply_steps, save_truth
from fedspeech.config import SimConfig
from fedspeech.errors import RunFailed
from fedspeech.federation.checkpoint import save_global
from fedspeech.federation.control import ServerControl
from fedspeech.federation.strategy import HonestButCuriousStrategy
from fedspeech.fileio import atomic_write_text
from fedspeech.models import build_model
from fedspeech.report import RunRecorder
from fedspeech.report.recorder import privacy_ledger
from fedspeech.tasks import TASKS, defense_of, prepare_run
from fedspeech.tasks.prepare import RunData, open_features
from fedspeech.training import batch_slots, local_batches, loss_and_accuracy, predict


def model_kwargs(cfg: SimConfig, data: RunData) -> dict[str, Any]:
    """Keyword arguments that rebuild the run's model (stored in every capture)."""
    return TASKS.get(cfg.task).model_kwargs(cfg, data)


def build_strategy(cfg: SimConfig, *, address_all: bool = False) -> Strategy:
    """The Flower strategy named by ``cfg.strategy``.

    On its own it samples :meth:`SimConfig.clients_per_round` nodes itself, with Python's
    ``random``. With ``address_all`` it builds a message for every node: the capture
    wrapper then samples the round's clients by client id and sends theirs.

    With ``--dp central`` it is wrapped in Flower's
    ``DifferentialPrivacyClientSideFixedClipping``: the clients clip their updates to
    ``C`` (:mod:`fedspeech.training.defense`) and the wrapper adds Gaussian noise of
    standard deviation ``Z * C / n`` to the aggregate of the ``n`` sampled clients. The
    honest-but-curious server captures each clipped update before that noise.
    """
    inner = _flower_strategy(cfg, address_all)
    if cfg.dp == "central":
        assert cfg.dp_clip is not None  # SimConfig.validate
        return DifferentialPrivacyClientSideFixedClipping(
            inner,
            noise_multiplier=cfg.dp_noise,
            clipping_norm=cfg.dp_clip,
            num_sampled_clients=cfg.clients_per_round(),
        )
    return inner


def _flower_strategy(cfg: SimConfig, address_all: bool) -> Strategy:
    common: dict[str, Any] = {
        "fraction_train": 1.0 if address_all else cfg.fraction,
        "fraction_evaluate": 0.0,
        "min_train_nodes": cfg.clients if address_all else cfg.clients_per_round(),
        "min_evaluate_nodes": 1,
        "min_available_nodes": cfg.clients,
    }
    if cfg.strategy == "fedprox":
        return FedProx(proximal_mu=cfg.proximal_mu, **common)
    if cfg.strategy == "fedadam":
        return FedAdam(eta=cfg.server_lr, **common)
    return FedAvg(**common)


def train_config(cfg: SimConfig, data: RunData) -> ConfigRecord:
    """What every client is told each round (besides the global weights)."""
    return ConfigRecord(
        {
            "features-path": str(data.features_path.resolve()),
            "labels-path": str(data.labels_path.resolve()),
            "partition-path": str(data.partition_path.resolve()),
            "model": cfg.model,
            "model-kwargs": json.dumps(model_kwargs(cfg, data)),
            "share": cfg.share,
            "lr": cfg.lr,
            "lr-schedule": cfg.lr_schedule,
            "lr-min": cfg.lr_min,
            "rounds": cfg.rounds,
            "momentum": cfg.momentum,
            "batch-size": cfg.batch_size,
            "local-epochs": cfg.local_epochs,
            "local-steps": cfg.local_steps,
            "seed": cfg.seed,
            "task": cfg.task,
            "defense": json.dumps(defense_of(cfg).as_meta()),
            **TASKS.get(cfg.task).client_config(cfg),
        }
    )


def training_meta(cfg: SimConfig) -> dict[str, Any]:
    """Local-training settings stored in every capture."""
    meta: dict[str, Any] = {
        "lr": cfg.lr,
        "momentum": cfg.momentum,
        "batch_size": cfg.batch_size,
        "local_epochs": cfg.local_epochs,
        "local_steps": reply_steps(cfg.share, cfg.local_steps),
        "strategy": cfg.strategy,
        # FedProx adds its proximal term to each local step's loss (the audit replays it).
        "proximal_mu": cfg.proximal_mu if cfg.strategy == "fedprox" else 0.0,
        "defense": defense_of(cfg).as_meta(),
    }
    if cfg.lr_schedule != "constant":  # Capture.learning_rate() reads the round's rate
        meta.update(lr_schedule=cfg.lr_schedule, lr_min=cfg.lr_min, rounds=cfg.rounds)
    meta.update(TASKS.get(cfg.task).training_meta(cfg))
    return meta


def client_batches(
    cfg: SimConfig, data: RunData, server_round: int, client_id: int
) -> list[np.ndarray]:
    """The batches (corpus positions) client ``client_id`` trains on in ``server_round``:
    its seeded shuffle replayed, as the client draws it (:func:`local_batches`)."""
    return local_batches(
        data.partitions[client_id],
        seed=cfg.seed,
        server_round=server_round,
        client_id=client_id,
        batch_size=cfg.batch_size,
        epochs=cfg.local_epochs,
        steps=reply_steps(cfg.share, cfg.local_steps),
    )


#: Most clip visits a recorded batch order holds (3 epochs of 16,000 clips).
MAX_ORDER_ENTRIES = 48_000


def make_batch_order(cfg: SimConfig, data: RunData) -> Any:
    """``order(round, client_id)``: the client's seeded batches as slots (no clip identities).

    The server replays the client's shuffle (seeded by the run's seed, the round and the
    client) as the truth writer does; the slots say which clips shared a step and which came
    back in later epochs, so that the audit can replay the local steps in the client's order.
    """

    def order(server_round: int, client_id: int) -> list[list[int]] | None:
        slots = batch_slots(client_batches(cfg, data, server_round, client_id))
        # Within the capture's metadata bound (a few hundred KB at most); beyond it the audit
        # assumes an order, as for a capture from elsewhere.
        return slots if sum(len(b) for b in slots) <= MAX_ORDER_ENTRIES else None

    return order


def make_truth_writer(cfg: SimConfig, data: RunData) -> Any:
    """A function writing the ground truth of one captured reply.

    The server replays the client's seeded batch order (it never asks the client), and
    writes which clips, labels and speakers went into the captured gradient or update; for
    a secure aggregate, the batches of every client in it, client after client.
    """
    labels = np.load(data.labels_path, allow_pickle=False)
    clip_ids = data.corpus_meta["clip_ids"]
    speakers = data.corpus_meta["speakers"]
    attacks = data.corpus_meta.get("attacks")

    def write(server_round: int, client_ids: list[int], path: Path) -> None:
        batches = [
            batch
            for client_id in client_ids
            for batch in client_batches(cfg, data, server_round, client_id)
        ]
        truth = {
            "round": server_round,
            "client_id": client_ids[0],
            **({"clients": client_ids} if len(client_ids) > 1 else {}),
            "kind": cfg.share,
            "classes": data.classes,
            "batches": [
                {
                    "positions": [int(i) for i in b],
                    "clip_ids": [clip_ids[i] for i in b],
                    "labels": [int(labels[i]) for i in b],
                    "speakers": [speakers[i] for i in b],
                    **({"attacks": [attacks[i] for i in b]} if attacks is not None else {}),
                }
                for b in batches
            ],
        }
        save_truth(path, truth)

    return write


def run_server(
    grid: Grid,
    cfg: SimConfig,
    data: RunData,
    recorder: RunRecorder,
    *,
    plain: bool = False,
    control: ServerControl | None = None,
) -> None:
    """Run ``cfg.rounds`` rounds of federated training with capture.

    ``plain=True`` runs Flower's strategy alone, without the capture wrapper (the
    baseline of ``benchmarks/bench_federation.py``); it needs ``share="update"``.
    ``control`` resumes a run after ``control.start_round`` and stops it on a signal.
    After every round the global model is saved to ``model.safetensors``
    (:mod:`fedspeech.federation.checkpoint`).
    """
    control = control if control is not None else ServerControl()
    control.started = True
    try:
        _run_server(grid, cfg, data, recorder, plain, control)
    finally:
        control.done.set()


def _run_server(
    grid: Grid,
    cfg: SimConfig,
    data: RunData,
    recorder: RunRecorder,
    plain: bool,
    control: ServerControl,
) -> None:
    task = TASKS.get(cfg.task)
    # The capture wrapper samples clients itself; Flower's own sampling (``plain``) uses
    # the ``random`` module.
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(1)
    kwargs = model_kwargs(cfg, data)
    model = build_model(cfg.model, **kwargs)
    if control.initial_weights is not None:
        model.load_state_dict(control.initial_weights)
    # What model.safetensors says of itself: enough to rebuild, score or fine-tune it.
    model_meta = {
        "model": cfg.model,
        "model_kwargs": kwargs,
        "task": cfg.task,
        "classes": list(data.classes),
        "settings": cfg.to_dict(),
    }
    feats, labels = open_features(str(data.features_path), str(data.labels_path))
    test_x = np.ascontiguousarray(feats[data.test_indices])
    test_y = labels[data.test_indices]
    eval_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1

    capture = HonestButCuriousStrategy(
        build_strategy(cfg, address_all=True),
        share=cfg.share,
        lr=cfg.lr,
        run_dir=data.run_dir,
        capture_count=cfg.capture_count(),
        capture_meta={
            "model": cfg.model,
            "model_kwargs": kwargs,
            "frontend": task.capture_frontend(cfg),
            "frontend_kwargs": {},
            "training": training_meta(cfg),
        },
        num_clients=cfg.clients,
        clients_per_round=cfg.clients_per_round(),
        truth_writer=make_truth_writer(cfg, data),
        batch_order=make_batch_order(cfg, data),
        on_round=recorder.client_round,
        seed=cfg.seed,
        start_round=control.start_round,
        stop=control.stop,
        # The audit of a round needs the cores to itself.
        evaluate_in_background=not cfg.audit,
        secagg=cfg.secagg,
    )
    strategy: Strategy = capture
    control.strategy = capture
    if plain:
        strategy = build_strategy(cfg)
    round_start = time.perf_counter()
    # The audit's truth side (corpus, speaker verifier, content classifier), built once.
    scorers: dict[str, Any] = {}

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        nonlocal round_start
        model.load_state_dict(arrays.to_torch_state_dict())
        # One forward pass over the test set gives accuracy, loss and the task's metrics.
        # The clients are idle meanwhile: one thread per core (same logits as one thread).
        logits = predict(model, test_x, workers=eval_workers)
        loss, acc = loss_and_accuracy(logits, test_y)
        extra = task.evaluate(logits, test_y, data)
        now = time.perf_counter()
        # A round's seconds run from the previous round's evaluation to this one's, so
        # that the rounds tile the run's wall time (the audit's time aside).
        seconds, round_start = now - round_start, now
        recorder.evaluated(server_round, acc, loss, seconds, extra=extra)
        if server_round > 0 and not plain:
            # After metrics.json: a resumed run drops rounds recorded after this file's.
            save_global(data.run_dir, arrays.to_torch_state_dict(), server_round, model_meta)
        if cfg.audit and server_round > 0 and isinstance(strategy, HonestButCuriousStrategy):
            # The captures of this round are written by a background thread.
            strategy.flush()
            summary = audit_rounds(cfg, data.run_dir, [server_round], scorers)
            recorder.add_leakage(server_round, leakage_means(summary))
            torch.set_num_threads(1)
            round_start = time.perf_counter()
        finite = {k: v for k, v in extra.items() if v == v}  # NaN: undefined, not sent
        return MetricRecord({"accuracy": acc, "loss": loss, **finite})

    try:
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=cfg.rounds - control.start_round,
            timeout=cfg.round_timeout,
            train_config=train_config(cfg, data),
            evaluate_fn=evaluate_fn,
        )
    finally:
        if isinstance(strategy, HonestButCuriousStrategy):
            strategy.flush()


def make_server_app(
    cfg: SimConfig,
    data: RunData,
    recorder: RunRecorder,
    *,
    plain: bool = False,
    control: ServerControl | None = None,
) -> ServerApp:
    """A ServerApp bound to a prepared run."""
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        run_server(grid, cfg, data, recorder, plain=plain, control=control)

    return server


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for ``flwr run .``: the run config holds the simulate keys."""
    cfg = SimConfig.from_mapping(dict(context.run_config), "the Flower run config")
    data = prepare_run(cfg)
    atomic_write_text(data.run_dir / "config.toml", cfg.to_toml())
    recorder = RunRecorder(
        data.run_dir,
        cfg.rounds,
        privacy=privacy_ledger(cfg, [len(p) for p in data.partitions]),
        defense=defense_of(cfg).as_meta() if defense_of(cfg).active else None,
    )
    run_server(grid, cfg, data, recorder)
    recorder.plot()
    recorder.plot_eer()
    failed = stopped_early(recorder)
    if failed is not None:
        raise RunFailed(failed)


def stopped_early(recorder: RunRecorder) -> str | None:
    """Why the run stopped before its last round, or None.

    One line: the diverged loss (round, which loss, its value), or the round in which every
    sampled client failed, how many and the first error.
    """
    if recorder.diverged is not None:
        d = recorder.diverged
        return (
            f"training diverged in round {d['round']}: {d['metric']} is {d['value']} "
            f"(a smaller --lr may help); the run stopped, its results so far are in "
            f"{recorder.run_dir}"
        )
    if not recorder.rounds or not recorder.rounds[-1].get("all_failed"):
        return None
    last = recorder.rounds[-1]
    first = last["failures"][0]
    return (
        f"round {last['round']}: all {len(last['failures'])} sampled clients failed "
        f"(client {first['client_id']}: {first['error']}); the run stopped, its results so "
        f"far are in {recorder.run_dir}"
    )
