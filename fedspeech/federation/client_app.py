"""Flower ClientApp: one client's local work, delegated to :mod:`fedspeech.training`.

The server's train message carries the global weights and a config naming the run's data
files; the client reads its own partition (``partition-id`` from the node config), trains or
takes one gradient step, and replies with what it shares.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedspeech.config import ROGA, ROGA_DOMAINS
from fedspeech.models import build_model
from fedspeech.prepare import open_features, open_partition
from fedspeech.training import gradient_and_loss, local_batches, train_local

app = ClientApp()


def _get(cfg: ConfigRecord, key: str, default: Any = None) -> Any:
    # ConfigRecord values are a wide union; the server wrote scalars of known types.
    return cfg.get(key, default)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training (``share=update``) or one gradient step (``share=gradient``)."""
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
        steps=1 if share == "gradient" else int(_get(cfg, "local-steps")),
    )
    extra: dict[str, float] = {}
    if str(_get(cfg, "task", "kws")) == "sdd":
        from fedspeech.training.sdd import select_roga_domains, train_sdd

        alignment = str(_get(cfg, "alignment"))
        domains = None
        if alignment == ROGA:
            # A config without the key means the option's default.
            kind = str(_get(cfg, "roga-domains", ROGA_DOMAINS[0]))
            domains = select_roga_domains(kind, str(_get(cfg, "features-path")))
        sdd = train_sdd(
            model,
            feats,
            labels,
            batches,
            augment=str(_get(cfg, "augment")),
            alignment=alignment,
            lr=float(_get(cfg, "lr")),
            optimizer=str(_get(cfg, "optimizer")),
            seed=(int(_get(cfg, "seed")), int(_get(cfg, "server-round")), client_id),
            roga_rho=float(_get(cfg, "roga-rho")),
            roga_alpha=float(_get(cfg, "roga-alpha")),
            roga_domains=domains,
        )
        arrays = ArrayRecord(model.state_dict())
        num_examples, loss = sdd.num_examples, sdd.loss
        extra = {"conflict-rate": sdd.conflict_rate}
    elif share == "gradient":
        batch = batches[0]
        x = torch.from_numpy(np.ascontiguousarray(feats[batch]))
        y = torch.from_numpy(np.ascontiguousarray(labels[batch]))
        grads, loss = gradient_and_loss(model, x, y)
        arrays = ArrayRecord(grads)
        num_examples = len(batch)
    else:
        res = train_local(
            model,
            feats,
            labels,
            batches,
            lr=float(_get(cfg, "lr")),
            momentum=float(_get(cfg, "momentum")),
            proximal_mu=float(_get(cfg, "proximal-mu", 0.0)),
        )
        arrays = ArrayRecord(model.state_dict())
        num_examples, loss = res.num_examples, res.loss

    content = RecordDict(
        {
            "arrays": arrays,
            "metrics": MetricRecord({"num-examples": num_examples, "train-loss": loss, **extra}),
            "client": ConfigRecord({"client-id": client_id}),
        }
    )
    return Message(content=content, reply_to=msg)
