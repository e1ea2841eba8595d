"""Flower ClientApp: one client's local work, delegated to :mod:`fedspeech.training`.

The server's train message carries the global weights and a config naming the run's data
files and task; the client reads its own partition (``partition-id`` from the node config),
lets the task (:data:`fedspeech.tasks.TASKS`) train or take one gradient step, and replies
with what it shares. A query message asks the client for its partition id: the server maps
Flower's node ids (random) to client ids with it, once, before the first round.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from fedspeech.capture import reply_steps, round_lr
from fedspeech.models import build_model
from fedspeech.tasks import TASKS
from fedspeech.tasks.prepare import open_features, open_partition
from fedspeech.training import local_batches, seed_torch
from fedspeech.training.defense import Defense, defend_reply

app = ClientApp()

# TEST-ONLY fault injection, not a user setting: ``FEDSPEECH_TEST_FAIL="1:2,0:3:lie"`` makes
# client 1 raise in round 2 and client 0 claim another client's id in round 3 (the tests of
# tests/federation/test_reproducible.py inject faults through it; Ray workers inherit it).
TEST_FAIL_ENV = "FEDSPEECH_TEST_FAIL"


def _get(cfg: ConfigRecord, key: str, default: Any = None) -> Any:
    # ConfigRecord values are a wide union; the server wrote scalars of known types.
    return cfg.get(key, default)


def partition_id(context: Context) -> int:
    """The client's id: its partition in the run's ``partition.json``."""
    return int(context.node_config["partition-id"])


def injected_fault(client_id: int, server_round: int) -> str | None:
    """The fault :data:`TEST_FAIL_ENV` injects here: ``"raise"``, ``"lie"`` or None."""
    for item in os.environ.get(TEST_FAIL_ENV, "").split(","):
        parts = item.strip().split(":")
        if len(parts) >= 2 and (int(parts[0]), int(parts[1])) == (client_id, server_round):
            return parts[2] if len(parts) > 2 else "raise"
    return None


@lru_cache(maxsize=2)
def reusable_model(name: str, kwargs_json: str) -> nn.Module:
    """The model ``name`` built with ``kwargs_json`` once per process, then reused.

    A client loads the global weights into it (every parameter and buffer), so what it was
    initialised with or trained to before never reaches a reply; building a model for each
    call cost a few percent of a round (its random initialisation is thrown away).
    """
    return build_model(name, **json.loads(kwargs_json))


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Reply with the client's id (the server's node-id map is built from these replies)."""
    client = ConfigRecord({"client-id": partition_id(context)})
    return Message(content=RecordDict({"client": client}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training or one gradient step, by the run's task (:meth:`Task.train`)."""
    # Ray workers share the machine's cores; more than one thread per client thrashes.
    torch.set_num_threads(1)
    cfg = msg.content.config_records["config"]
    client_id = partition_id(context)
    seed, server_round = int(_get(cfg, "seed")), int(_get(cfg, "server-round"))
    fault = injected_fault(client_id, server_round)
    if fault == "raise":
        raise RuntimeError(f"injected test fault: client {client_id}, round {server_round}")
    feats, labels = open_features(str(_get(cfg, "features-path")), str(_get(cfg, "labels-path")))
    indices = open_partition(str(_get(cfg, "partition-path")))[client_id]
    model = reusable_model(str(_get(cfg, "model")), str(_get(cfg, "model-kwargs")))
    global_weights = msg.content.array_records["arrays"].to_torch_state_dict()
    model.load_state_dict(global_weights)
    model.zero_grad(set_to_none=True)  # nothing of the previous call carries over
    # Dropout masks and other torch draws: a function of (seed, round, client) only, seeded
    # after the model is at hand (a first build draws its initialisation, a reuse does not).
    seed_torch(seed, server_round, client_id)

    share = str(_get(cfg, "share"))
    batches = local_batches(
        indices,
        seed=seed,
        server_round=server_round,
        client_id=client_id,
        batch_size=int(_get(cfg, "batch-size")),
        epochs=int(_get(cfg, "local-epochs")),
        steps=reply_steps(share, int(_get(cfg, "local-steps"))),
    )
    task = TASKS.get(str(_get(cfg, "task", "kws")))
    lr = round_lr(
        float(_get(cfg, "lr")),
        server_round,
        int(_get(cfg, "rounds", 1)),
        str(_get(cfg, "lr-schedule", "constant")),
        float(_get(cfg, "lr-min", 0.0)),
    )
    settings = {**dict(cfg), "lr": lr}  # this round's learning rate (--lr-schedule)
    res = task.train(model, feats, labels, batches, settings, client_id)
    defense = Defense.from_meta(json.loads(str(_get(cfg, "defense", "{}"))))
    if defense.active:
        # Clipping, local noise, pruning, quantisation of what is sent (DP-SGD acted in
        # training, secure aggregation acts on the server).
        res.arrays = defend_reply(
            global_weights,
            res.arrays,
            share,
            lr,
            defense,
            seed=(seed, server_round, client_id),
        )
    reported = client_id
    if fault == "lie":  # claims another client's id (client 0's; client 0 claims 1's)
        reported = 1 if client_id == 0 else 0
    content = RecordDict(
        {
            "arrays": ArrayRecord(res.arrays),
            "metrics": MetricRecord(
                {"num-examples": res.num_examples, "train-loss": res.loss, **res.metrics}
            ),
            "client": ConfigRecord({"client-id": reported}),
        }
    )
    return Message(content=content, reply_to=msg)
