"""The honest-but-curious server: a strategy wrapper that keeps what clients send.

It follows the protocol exactly (an inner Flower strategy does the real aggregation) and,
on the side, writes the chosen clients' replies, byte for byte as received, with the global
weights they were computed from. With ``share="gradient"`` it also turns each gradient
``g`` into the weights ``w − lr·g`` before the inner strategy sees it, so FedAvg over them is
FedSGD and FedAdam/FedProx work unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedspeech.capture import Capture, capture_name, save_capture
from fedspeech.training import apply_gradient

TruthWriter = Callable[[int, int, Path], None]


def _int(value: object) -> int:
    return int(cast(int, value))


class HonestButCuriousStrategy(Strategy):
    """Wrap ``inner``; capture up to ``capture_count`` replies per round (``None``: all).

    Parameters
    ----------
    inner : Strategy
        Flower strategy that aggregates (FedAvg, FedProx, FedAdam, ...).
    share : str
        ``"update"`` (clients send trained weights) or ``"gradient"`` (one step's gradient).
    lr : float
        Client learning rate, used to turn gradients into weights for ``inner``.
    run_dir : Path
        Run folder; captures go to ``captures/``, ground truth to ``truth/``.
    capture_count : int | None
        Clients captured per round; ``None`` captures all, 0 none.
    capture_meta : dict
        Model/front-end names and settings stored in every capture.
    truth_writer : callable, optional
        ``truth_writer(round, client_id, path)`` writes the ground truth of a capture.
    on_round : callable, optional
        ``on_round(round, clients, seconds)`` after aggregation, with per-client metrics.
    seed : int
        Seeds the choice of captured clients.
    """

    def __init__(
        self,
        inner: Strategy,
        *,
        share: str,
        lr: float,
        run_dir: Path,
        capture_count: int | None,
        capture_meta: dict[str, Any],
        truth_writer: TruthWriter | None = None,
        on_round: Callable[[int, list[dict[str, Any]], float], None] | None = None,
        seed: int = 0,
    ) -> None:
        self.inner = inner
        self.share = share
        self.lr = lr
        self.run_dir = Path(run_dir)
        self.capture_count = capture_count
        self.capture_meta = capture_meta
        self.truth_writer = truth_writer
        self.on_round = on_round
        self.seed = seed
        self._global: ArrayRecord | None = None
        self._global_torch: dict[str, Any] | None = None
        self._round_start = 0.0
        # Captures are written by one background thread so that disk I/O overlaps the next
        # round's training instead of delaying it; ``flush`` waits for them.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="capture")
        self._pending: list[Future[Path]] = []

    # The protocol is the inner strategy's; only train replies are looked at.
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global weights sent this round, then let ``inner`` sample."""
        self._round_start = time.perf_counter()
        self._global = arrays
        self._global_torch = None
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Capture the chosen replies, convert gradients, and delegate aggregation."""
        replies = list(replies)
        ok = [m for m in replies if not m.has_error()]
        ids = [_int(m.content.config_records["client"]["client-id"]) for m in ok]
        chosen = self._choose(server_round, ids)
        clients: list[dict[str, Any]] = []
        for msg, cid in zip(ok, ids, strict=True):
            metrics = msg.content.metric_records["metrics"]
            info = {
                "client_id": cid,
                "num_examples": _int(metrics["num-examples"]),
                "train_loss": float(cast(float, metrics["train-loss"])),
                "captured": cid in chosen,
            }
            if "conflict-rate" in metrics:  # sdd clients: fraction of conflicting steps
                info["conflict_rate"] = float(cast(float, metrics["conflict-rate"]))
            clients.append(info)
            if cid in chosen:
                self._capture(server_round, cid, msg)
        if self.share == "gradient" and self._global is not None:
            glob = self._global_state()
            for msg in ok:
                grads = msg.content.array_records["arrays"].to_torch_state_dict()
                msg.content["arrays"] = ArrayRecord(apply_gradient(glob, grads, self.lr))
        result = self.inner.aggregate_train(server_round, replies)
        if self.on_round is not None:
            clients.sort(key=lambda c: c["client_id"])
            self.on_round(server_round, clients, time.perf_counter() - self._round_start)
        return result

    def flush(self) -> None:
        """Wait until every capture of the run is on disk (re-raising a failed write)."""
        pending, self._pending = self._pending, []
        for fut in pending:
            fut.result()

    def _global_state(self) -> dict[str, Any]:
        if self._global_torch is None:
            assert self._global is not None
            self._global_torch = self._global.to_torch_state_dict()
        return self._global_torch

    def _choose(self, server_round: int, ids: list[int]) -> set[int]:
        if self.capture_count is None:
            return set(ids)
        if self.capture_count == 0 or not ids:
            return set()
        rng = np.random.default_rng([self.seed, server_round, 7])
        k = min(self.capture_count, len(ids))
        return {int(i) for i in rng.choice(sorted(ids), size=k, replace=False)}

    def _capture(self, server_round: int, client_id: int, msg: Message) -> None:
        assert self._global is not None
        metrics = msg.content.metric_records["metrics"]
        cap = Capture(
            kind=self.share,
            server_round=server_round,
            client_id=client_id,
            num_examples=_int(metrics["num-examples"]),
            global_weights=self._global_state(),
            shared=msg.content.array_records["arrays"].to_torch_state_dict(),
            model=str(self.capture_meta["model"]),
            frontend=str(self.capture_meta["frontend"]),
            model_kwargs=dict(self.capture_meta.get("model_kwargs", {})),
            frontend_kwargs=dict(self.capture_meta.get("frontend_kwargs", {})),
            training=dict(self.capture_meta.get("training", {})),
        )
        name = capture_name(server_round, client_id)
        self._pending = [f for f in self._pending if not f.done() or f.exception()]
        self._pending.append(
            self._writer.submit(
                save_capture, cap, self.run_dir / "captures" / f"{name}.safetensors"
            )
        )
        if self.truth_writer is not None:
            self.truth_writer(server_round, client_id, self.run_dir / "truth" / f"{name}.json")

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate to ``inner``."""
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Delegate to ``inner``."""
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        """Delegate to ``inner``."""
        self.inner.summary()
