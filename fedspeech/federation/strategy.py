"""The honest-but-curious server: a strategy wrapper that keeps what clients send.

It follows the protocol exactly (an inner Flower strategy builds the messages and does the
real aggregation) and, on the side, writes the chosen clients' replies, byte for byte as
received, with the global weights they were computed from. With ``share="gradient"`` it
also turns each gradient ``g`` into the weights ``w − lr·g`` before the inner strategy sees
it, so FedAvg over them is FedSGD and FedAdam/FedProx work unchanged.

So that a run repeats exactly, the wrapper, not the inner strategy, chooses who trains: it
maps Flower's random node ids to client ids once (:mod:`fedspeech.federation.nodes`),
samples client ids with a generator seeded by ``(seed, round)``, and hands the inner
strategy the replies sorted by client id rather than in order of arrival. Replies that fail
(an error, no answer within the round's timeout, a malformed reply, a client claiming
another's id) are left out of the aggregate and reported; after a round in which every
sampled client failed the run stops.

A capture's ground truth (``truth/``) is written after the capture itself is on disk, by the
same background writer, so a truth file never exists without its capture. A run resumed
after round ``start_round`` (``fedspeech simulate --resume``) numbers its rounds from
``start_round + 1``: Flower counts from 1, the wrapper adds the offset everywhere (sampling,
messages, captures, truth, evaluation). Setting the ``stop`` event (on SIGINT or SIGTERM)
ends the run at its next wait for replies.

With ``secagg`` the server learns only the round's aggregate (secure aggregation, Bonawitz
et al., CCS 2017): the wrapper then captures that aggregate, the ``num_examples``-weighted
mean of the replies, once per round, instead of any single reply. Flower's SecAgg+ cannot
run here (its workflow needs the legacy strategies and a ``LegacyContext``, this wrapper is
a message-API strategy), so the view is emulated without the cryptography: the aggregate
is what SecAgg+ would reveal, computed in the clear.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fedspeech.capture import Capture, capture_name, save_capture
from fedspeech.errors import DivergedError
from fedspeech.federation.nodes import NodeMap, query_client_ids, reported_client_id
from fedspeech.training import apply_gradient

#: ``truth_writer(round, client_ids, path)``: the clips behind a capture (one client's, or
#: the union of the clients in a secure aggregate).
TruthWriter = Callable[[int, list[int], Path], None]
#: ``batch_order(round, client_id)``: the client's local batches as slots numbered by first
#: visit (see :func:`fedspeech.training.local.batch_slots`), or None.
BatchOrder = Callable[[int, int], list[list[int]] | None]
#: ``on_round(round, clients, seconds, failures)``: per-client results and failures.
RoundCallback = Callable[[int, list[dict[str, Any]], float, list[dict[str, Any]]], None]
EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]

# Longest error message kept per failed client (metrics.json, the terminal).
_MAX_ERROR = 300


def _int(value: object) -> int:
    return int(cast(int, value))


def sample_clients(seed: int, server_round: int, num_clients: int, count: int) -> list[int]:
    """The clients that train in ``server_round``: ``count`` of ``0 .. num_clients - 1``.

    A pure function of its arguments (sorted), so the same seed gives the same clients in
    every round whatever node ids Flower drew.

    Examples
    --------
    >>> sample_clients(0, 1, 6, 2) == sample_clients(0, 1, 6, 2)
    True
    >>> sample_clients(0, 1, 3, 3)
    [0, 1, 2]
    """
    rng = np.random.default_rng([seed, server_round, 11])
    return sorted(int(c) for c in rng.choice(num_clients, size=count, replace=False))


def one_line(reason: str) -> str:
    """An error message on one line, without Flower's exception wrapper, shortened.

    Examples
    --------
    >>> one_line("<class 'X'>:<'\\nException ClientAppException occurred. Message: boom'>")
    'boom'
    """
    text = " ".join(reason.split())
    wrapped = re.search(r"Exception ClientAppException occurred\. Message: (.*)'>$", text)
    if wrapped:
        text = wrapped.group(1)
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 3] + "..."


def reply_problem(msg: Message, client_id: int) -> str | None:
    """Why a training reply from ``client_id``'s node cannot be used; None if it can.

    Parameters
    ----------
    msg : Message
        The reply.
    client_id : int
        The client the server sent the message to (by its node map).
    """
    if msg.has_error():
        return one_line(msg.error.reason or f"error code {msg.error.code}")
    try:
        reported = reported_client_id(msg)
        metrics = msg.content.metric_records["metrics"]
        for key in ("num-examples", "train-loss"):  # what the recorder and FedAvg read
            float(cast(float, metrics[key]))
        if "arrays" not in msg.content.array_records:
            raise KeyError("arrays")
    except (KeyError, TypeError, ValueError) as exc:
        return one_line(f"malformed reply: {exc}")
    if reported != client_id:
        return f"client id mismatch: reply claims client {reported}"
    return None


class _AllClientsFailed(Exception):
    """Ends Flower's round loop after a round that had no usable reply."""


class _Stopped(Exception):
    """Ends Flower's round loop once the run's ``stop`` event is set (a signal)."""


class StoppableGrid:
    """A grid whose wait for replies ends (with :class:`_Stopped`) once ``stop`` is set.

    Everything else is delegated to ``grid``. Flower's own ``send_and_receive`` waits for
    the whole timeout when the simulation engine is gone; this one polls ``stop`` too.
    A grid without ``push_messages``/``pull_messages`` is asked as it is.
    """

    def __init__(self, grid: Grid, stop: threading.Event, poll: float = 0.05) -> None:
        self._grid = grid
        self._stop = stop
        self._poll = poll

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Send ``messages`` and collect the replies, as :meth:`Grid.send_and_receive`."""
        if self._stop.is_set():
            raise _Stopped
        grid = self._grid
        if not (hasattr(grid, "push_messages") and hasattr(grid, "pull_messages")):
            replies = list(grid.send_and_receive(messages, timeout=timeout))
        else:
            waiting = set(grid.push_messages(messages))
            end = time.monotonic() + (timeout if timeout is not None else 0.0)
            replies = []
            while waiting and not self._stop.is_set():
                got = list(grid.pull_messages(waiting))
                replies.extend(got)
                waiting -= {m.metadata.reply_to_message_id for m in got}
                if not waiting or (timeout is not None and time.monotonic() >= end):
                    break
                self._stop.wait(self._poll)
        if self._stop.is_set():
            raise _Stopped
        return replies


class HonestButCuriousStrategy(Strategy):
    """Wrap ``inner``; capture up to ``capture_count`` replies per round (``None``: all).

    Parameters
    ----------
    inner : Strategy
        Flower strategy that builds the train messages and aggregates (FedAvg, FedProx,
        FedAdam, ...). It must address every node (``fraction_train=1``): this wrapper
        keeps the messages of the round's sampled clients.
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
    num_clients : int
        Clients of the run (client ids ``0 .. num_clients - 1``).
    clients_per_round : int
        Clients sampled per round.
    truth_writer : callable, optional
        ``truth_writer(round, client_ids, path)`` writes the ground truth of a capture.
    batch_order : callable, optional
        ``batch_order(round, client_id)``: the order in which the client visited its clips
        (slots, no clip identities), stored in an update capture's
        ``training["batch_order"]`` so that the audit can replay its local steps. The
        simulator's clients shuffle with a seed the server sets; a server that did not
        know it would see no order (the audit then assumes one).
    on_round : callable, optional
        ``on_round(round, clients, seconds, failures)`` after aggregation: per-client
        metrics of the usable replies and ``{"client_id", "error"}`` of the failed ones.
    seed : int
        Seeds the sampling of clients and the choice of captured clients.
    start_round : int
        Rounds already done (a resumed run): Flower's round ``k`` is round
        ``start_round + k`` of the run, and the initial evaluation is skipped.
    stop : threading.Event, optional
        Once set, the run ends at its next wait for replies (:meth:`start` returns).
    secagg : bool
        Capture only the round's aggregate (see the module docstring), named after the
        smallest client id in it; its training metadata lists the clients
        (``secagg_clients``).
    evaluate_in_background : bool
        Run the centralized evaluation of round ``r`` in a background thread while round
        ``r + 1`` trains, instead of leaving the clients idle meanwhile. Round ``r + 1``'s
        replies are screened only once it is done, so what is recorded, captured and raised
        (a diverged loss) is the same as without it; only the wall time differs.
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
        num_clients: int,
        clients_per_round: int,
        truth_writer: TruthWriter | None = None,
        batch_order: BatchOrder | None = None,
        on_round: RoundCallback | None = None,
        seed: int = 0,
        start_round: int = 0,
        stop: threading.Event | None = None,
        evaluate_in_background: bool = False,
        secagg: bool = False,
    ) -> None:
        self.inner = inner
        self.secagg = secagg
        self.share = share
        self.lr = lr
        self.run_dir = Path(run_dir)
        self.capture_count = capture_count
        self.capture_meta = capture_meta
        self.num_clients = num_clients
        self.clients_per_round = clients_per_round
        self.truth_writer = truth_writer
        self.batch_order = batch_order
        self.on_round = on_round
        self.seed = seed
        self.start_round = start_round
        self.stop = stop if stop is not None else threading.Event()
        #: Whether the run ended because :attr:`stop` was set.
        self.stopped = False
        #: The round after which the run stopped, every sampled client having failed.
        self.failed_round: int | None = None
        self.nodes = NodeMap(node_of={})
        self._timeout = 0.0
        self._sampled: list[int] = []
        self._sent: dict[int, int] = {}  # node id -> client id, this round
        self._global: ArrayRecord | None = None
        self._global_torch: dict[str, Any] | None = None
        self._round_start = 0.0
        # Captures are written by one background thread so that disk I/O overlaps the next
        # round's training instead of delaying it; ``flush`` waits for them.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="capture")
        self._pending: list[Future[Path]] = []
        self._closed = False
        self._lock = threading.Lock()
        self.evaluate_in_background = evaluate_in_background
        self._evaluator = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evaluate")
        self._evaluation: Future[MetricRecord | None] | None = None

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: EvaluateFn | None = None,
    ) -> Result:
        """Map nodes to clients, then run Flower's rounds (:meth:`Strategy.start`).

        ``timeout`` bounds the id query and every round's wait for replies. After a round
        in which every sampled client failed, the round is evaluated (``evaluate_fn``) and
        the run stops: :attr:`failed_round` says which round, and the result is empty
        (what the rounds gave is in the recorder). ``num_rounds`` counts the rounds still
        to run (after :attr:`start_round`). Once :attr:`stop` is set, the run ends at its
        next wait for replies: :attr:`stopped` is true and the result is empty.
        """
        self._timeout = timeout
        stoppable = cast(Grid, StoppableGrid(grid, self.stop))
        try:
            self.nodes = query_client_ids(stoppable, self.num_clients, timeout)
            try:
                return super().start(
                    stoppable,
                    initial_arrays,
                    num_rounds=num_rounds,
                    timeout=timeout,
                    train_config=train_config,
                    evaluate_config=evaluate_config,
                    evaluate_fn=self._stop_after_failed_round(evaluate_fn),
                )
            finally:
                # The last round's evaluation, or the one running when the run stopped.
                self._finish_evaluation()
        except (_AllClientsFailed, DivergedError):
            # Diverged: the recorder saved metrics.json with "diverged" before raising.
            return Result()
        except _Stopped:
            self.stopped = True
            return Result()

    def _stop_after_failed_round(self, evaluate_fn: EvaluateFn | None) -> EvaluateFn:
        # Flower's round loop has no way out but an exception; it is raised after the
        # failed round was evaluated (and so recorded).
        def evaluate(flower_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            if flower_round == 0 and self.start_round > 0:
                return None  # a resumed run: its starting point was evaluated before
            server_round = flower_round + self.start_round
            self._finish_evaluation()
            if evaluate_fn is None:
                result = None
            elif (
                self.evaluate_in_background
                and flower_round > 0
                and server_round != self.failed_round
            ):
                # Waited for (and its exceptions raised) before the next round's replies
                # are screened: see _finish_evaluation in aggregate_train.
                self._evaluation = self._evaluator.submit(evaluate_fn, server_round, arrays)
                return None
            else:
                result = evaluate_fn(server_round, arrays)
            if server_round == self.failed_round:
                raise _AllClientsFailed
            return result

        return evaluate

    def _finish_evaluation(self) -> None:
        """Wait for the evaluation running in the background, re-raising what it raised."""
        running, self._evaluation = self._evaluation, None
        if running is not None:
            running.result()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample the round's clients; send them the message ``inner`` builds.

        The inner strategy builds one message per node (FedProx adds its ``proximal-mu``
        to the config, FedAdam remembers the weights it sent); the sampled clients' ones
        are sent, in client-id order. ``server_round`` is Flower's; the run's round is
        ``start_round`` more.
        """
        server_round += self.start_round
        self._round_start = time.perf_counter()
        self._global = arrays
        self._global_torch = None
        self._sampled = sample_clients(
            self.seed, server_round, self.num_clients, self.clients_per_round
        )
        by_node = {
            m.metadata.dst_node_id: m
            for m in self.inner.configure_train(server_round, arrays, config, grid)
        }
        send = [
            (self.nodes.node_of[c], c)
            for c in self._sampled
            if self.nodes.node_of.get(c) in by_node
        ]
        self._sent = {node: client for node, client in send}
        return [by_node[node] for node, _ in send]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen and sort the replies, capture the chosen ones, and delegate aggregation.

        Only usable replies reach the inner strategy, in client-id order, so its sums do
        not depend on the order of arrival.
        """
        server_round += self.start_round
        # The previous round is recorded (or has diverged) before this one is looked at.
        self._finish_evaluation()
        if self.stop.is_set():
            raise _Stopped  # the round is redone by a resumed run
        accepted, failures = self._screen(list(replies))
        if self.secagg:
            # One capture, the aggregate, which every accepted reply is part of.
            chosen = {cid for cid, _ in accepted} if self.capture_count != 0 else set()
        else:
            chosen = self._choose(server_round, [cid for cid, _ in accepted])
        clients: list[dict[str, Any]] = []
        for cid, msg in accepted:
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
            if cid in chosen and not self.secagg:
                self._capture(server_round, cid, msg)
        if self.secagg and chosen:
            self._capture_aggregate(server_round, accepted)
        if self.share == "gradient" and self._global is not None:
            glob = self._global_state()
            for _, msg in accepted:
                grads = msg.content.array_records["arrays"].to_torch_state_dict()
                msg.content["arrays"] = ArrayRecord(apply_gradient(glob, grads, self.lr))
        # Flower's central-DP wrapper draws its noise from numpy's global generator: seeded
        # by (seed, round) here, so a DP run repeats too.
        np.random.seed(np.random.SeedSequence([self.seed, server_round, 23]).generate_state(1)[0])
        result = self.inner.aggregate_train(server_round, [msg for _, msg in accepted])
        if not accepted:
            self.failed_round = server_round
        if self.on_round is not None:
            seconds = time.perf_counter() - self._round_start
            self.on_round(server_round, clients, seconds, failures)
        return result

    def _screen(
        self, replies: list[Message]
    ) -> tuple[list[tuple[int, Message]], list[dict[str, Any]]]:
        """Usable replies as ``(client id, reply)`` and failures, both by client id.

        Every sampled client is in one of the two: a client without a node, or whose node
        did not answer within the timeout, is a failure too.
        """
        accepted: list[tuple[int, Message]] = []
        failures: list[dict[str, Any]] = []
        answered: set[int] = set()
        for msg in replies:
            # The server's own id for the sender, never the one the reply states.
            cid = self._sent.get(msg.metadata.src_node_id)
            if cid is None:
                continue  # not from a node this round's messages went to
            answered.add(cid)
            problem = reply_problem(msg, cid)
            if problem is None:
                accepted.append((cid, msg))
            else:
                failures.append({"client_id": cid, "error": problem})
        sent = set(self._sent.values())
        for cid in self._sampled:
            if cid in answered:
                continue
            if cid in sent:
                error = f"no reply within {self._timeout:g} s"
            else:
                error = self.nodes.unmapped.get(cid, "no node for this client")
            failures.append({"client_id": cid, "error": error})
        accepted.sort(key=lambda item: item[0])
        failures.sort(key=lambda f: int(f["client_id"]))
        return accepted, failures

    def flush(self) -> None:
        """Wait until every capture of the run is on disk (re-raising a failed write)."""
        with self._lock:
            pending, self._pending = self._pending, []
        for fut in pending:
            fut.result()

    def close(self) -> None:
        """Write every capture received so far, then accept no more (idempotent).

        Called when the run is interrupted: a capture handed to the writer before is on
        disk with its truth when this returns; one arriving later is not written.
        """
        with self._lock:
            self._closed = True
        self._writer.shutdown(wait=True)
        self.flush()

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
        metrics = msg.content.metric_records["metrics"]
        shared = msg.content.array_records["arrays"].to_torch_state_dict()
        extra: dict[str, Any] = {}
        if self.share == "update" and self.batch_order is not None:
            order = self.batch_order(server_round, client_id)
            if order is not None:
                extra["batch_order"] = order
        self._submit(server_round, [client_id], _int(metrics["num-examples"]), shared, extra)

    def _capture_aggregate(self, server_round: int, accepted: list[tuple[int, Message]]) -> None:
        """Capture the ``num_examples``-weighted mean of the replies (secure aggregation)."""
        counts = [_int(m.content.metric_records["metrics"]["num-examples"]) for _, m in accepted]
        total = sum(counts)
        mean: dict[str, torch.Tensor] = {}
        for (_, msg), n in zip(accepted, counts, strict=True):
            for k, v in msg.content.array_records["arrays"].to_torch_state_dict().items():
                part = v.double() * (n / total)
                mean[k] = mean[k] + part if k in mean else part
        ids = [cid for cid, _ in accepted]
        first = accepted[0][1].content.array_records["arrays"].to_torch_state_dict()
        shared = {k: v.to(first[k].dtype) for k, v in mean.items()}
        self._submit(server_round, ids, total, shared, {"secagg_clients": ids})

    def _submit(
        self,
        server_round: int,
        client_ids: list[int],
        num_examples: int,
        shared: dict[str, torch.Tensor],
        extra_training: dict[str, Any],
    ) -> None:
        """Hand a capture (named after the first of ``client_ids``) to the writer thread."""
        assert self._global is not None
        client_id = client_ids[0]
        cap = Capture(
            kind=self.share,
            server_round=server_round,
            client_id=client_id,
            num_examples=num_examples,
            global_weights=self._global_state(),
            shared=shared,
            model=str(self.capture_meta["model"]),
            frontend=str(self.capture_meta["frontend"]),
            model_kwargs=dict(self.capture_meta.get("model_kwargs", {})),
            frontend_kwargs=dict(self.capture_meta.get("frontend_kwargs", {})),
            training={**self.capture_meta.get("training", {}), **extra_training},
        )
        name = capture_name(server_round, client_id)
        with self._lock:
            if self._closed:
                return
            self._pending = [f for f in self._pending if not f.done() or f.exception()]
            self._pending.append(
                self._writer.submit(self._write, cap, server_round, client_ids, name)
            )

    def _write(self, cap: Capture, server_round: int, client_ids: list[int], name: str) -> Path:
        """Save a capture, then its truth: a truth file never exists without its capture."""
        path = save_capture(cap, self.run_dir / "captures" / f"{name}.safetensors")
        if self.truth_writer is not None:
            self.truth_writer(server_round, client_ids, self.run_dir / "truth" / f"{name}.json")
        return path

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate to ``inner`` (with the run's round number)."""
        return self.inner.configure_evaluate(server_round + self.start_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Delegate to ``inner`` (with the run's round number)."""
        return self.inner.aggregate_evaluate(server_round + self.start_round, replies)

    def summary(self) -> None:
        """Delegate to ``inner``."""
        self.inner.summary()
