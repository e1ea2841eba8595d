"""Flower ClientApp: one client's local work, delegated to :mod:`fedspeech.training`.

The server's train message carries the global weights and a config naming the run's data
files and task; the client reads its own partition (``partition-id`` from the node config),
lets the task (:data:`fedspeech.tasks.TASKS`) train or take one gradient step, and replies
with what it shares.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedspeech.capture import reply_steps
from fedspeech.models import build_model
from fedspeech.tasks import TASKS
from fedspeech.tasks.prepare import open_features, open_partition
from fedspeech.training import local_batches

app = ClientApp()


def _get(cfg: ConfigRecord, key: str, default: Any = None) -> Any:
    # ConfigRecord values are a wide union; the server wrote scalars of known types.
    return cfg.get(key, default)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training or one gradient step, by the run's task (:meth:`Task.train`)."""
    # Ray workers share the machine's cores; more than one thread per client thrashes.
    torch.set_num_threads(1)
    cfg = msg.content.config_records["config"]
    client_id = int(context.node_config["partition-id"])
    feats, labels = open_features(str(_get(cfg, "features-path")), str(_get(cfg, "labels-path")))
    indices = open_partition(str(_get(cfg, "partition-path")))[client_id]
    model = build_model(str(_get(cfg, "model")), **json.loads(str(_get(cfg, "model-kwargs"))))
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())

    share = str(_get(cfg, "share"))
    batches = local_batches(
        indices,
        seed=int(_get(cfg, "seed")),
        server_round=int(_get(cfg, "server-round")),
        client_id=client_id,
        batch_size=int(_get(cfg, "batch-size")),
        epochs=int(_get(cfg, "local-epochs")),
        steps=reply_steps(share, int(_get(cfg, "local-steps"))),
    )
    task = TASKS.get(str(_get(cfg, "task", "kws")))
    res = task.train(model, feats, labels, batches, cfg, client_id)
    content = RecordDict(
        {
            "arrays": ArrayRecord(res.arrays),
            "metrics": MetricRecord(
                {"num-examples": res.num_examples, "train-loss": res.loss, **res.metrics}
            ),
            "client": ConfigRecord({"client-id": client_id}),
        }
    )
    return Message(content=content, reply_to=msg)
