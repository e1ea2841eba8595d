"""The capture wrapper without Ray: node map, seeded sampling, sorted aggregation, failures.

A fake grid stands in for Flower's: it gives its nodes random ids (as Flower does), answers
the id query, and replies to train messages in a chosen order, with chosen faults.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from fedspeech.capture import load_capture
from fedspeech.errors import DivergedError
from fedspeech.federation.nodes import node_map
from fedspeech.federation.strategy import HonestButCuriousStrategy, one_line, sample_clients


@pytest.fixture(autouse=True)
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What Flower sets in a ServerApp's process before messages can be made."""
    for key, value in {"_run_id": 1, "_task_id": 1, "_node_id": 1}.items():
        monkeypatch.setattr(TaskIdentity, key, value)


class FakeGrid:
    """``num_clients`` nodes with random ids; client ``c`` owns ``weights[c]``.

    ``faults[(client, round)]`` is ``"raise"`` (an error reply), ``"lie"`` (claims client
    0's id), ``"hang"`` (no reply) or ``"malformed"`` (no weights, no metrics).
    ``arrival_seed`` shuffles the replies of every round.
    """

    def __init__(
        self,
        num_clients: int,
        faults: dict[tuple[int, int], str] | None = None,
        arrival_seed: int = 1,
    ) -> None:
        self.client_of = {int.from_bytes(os.urandom(8), "little"): c for c in range(num_clients)}
        self.faults = faults or {}
        self.shuffle = random.Random(arrival_seed)
        gen = torch.Generator().manual_seed(0)
        self.weights = [torch.randn(1000, generator=gen) for _ in range(num_clients)]
        self.examples = [3 + 2 * c for c in range(num_clients)]

    def get_node_ids(self) -> Iterable[int]:
        return list(self.client_of)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float) -> list[Message]:
        replies = [r for m in messages if (r := self._reply(m)) is not None]
        self.shuffle.shuffle(replies)  # the order of arrival is anyone's guess
        return replies

    def _reply(self, msg: Message) -> Message | None:
        client = self.client_of[msg.metadata.dst_node_id]
        if msg.metadata.message_type == MessageType.QUERY:
            return Message(
                RecordDict({"client": ConfigRecord({"client-id": client})}), reply_to=msg
            )
        rnd = int(cast(int, msg.content.config_records["config"]["server-round"]))
        fault = self.faults.get((client, rnd))
        if fault == "hang":
            return None
        if fault == "raise":
            return Message(Error(code=0, reason=f"boom {client}"), reply_to=msg)
        if fault == "malformed":
            return Message(
                RecordDict({"client": ConfigRecord({"client-id": client})}), reply_to=msg
            )
        content = RecordDict(
            {
                "arrays": ArrayRecord({"w": self.weights[client] * rnd}),
                "metrics": MetricRecord({"num-examples": self.examples[client], "train-loss": 1.0}),
                "client": ConfigRecord({"client-id": 0 if fault == "lie" else client}),
            }
        )
        return Message(content, reply_to=msg)


def run(
    tmp: Path,
    grid: FakeGrid,
    *,
    rounds: int = 1,
    per_round: int | None = None,
    background: bool = False,
    diverge_after: int | None = None,
) -> tuple[HonestButCuriousStrategy, dict[int, torch.Tensor], list[tuple[Any, ...]]]:
    """The wrapper around FedAvg over ``grid``: (strategy, global weights by round, on_round).

    ``background`` evaluates in the background; ``diverge_after`` makes the evaluation of
    that round raise :class:`DivergedError` (after recording it), as the recorder does.
    """
    n = len(grid.weights)
    calls: list[tuple[Any, ...]] = []
    strategy = HonestButCuriousStrategy(
        FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=n),
        share="update",
        lr=0.1,
        run_dir=tmp,
        capture_count=None,
        capture_meta={"model": "m", "frontend": "f"},
        num_clients=n,
        clients_per_round=per_round or n,
        on_round=lambda *args: calls.append(args),
        seed=0,
        evaluate_in_background=background,
    )
    seen: dict[int, torch.Tensor] = {}

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        time.sleep(0.05)  # a round's replies may come first: they must wait for this
        seen[server_round] = arrays.to_torch_state_dict()["w"]
        if server_round == diverge_after:
            raise DivergedError(f"training diverged in round {server_round}")
        return MetricRecord({})

    strategy.start(
        cast(Grid, grid),
        ArrayRecord({"w": torch.zeros(1000)}),
        num_rounds=rounds,
        timeout=5.0,
        train_config=ConfigRecord({}),
        evaluate_fn=evaluate,
    )
    strategy.flush()
    return strategy, seen, calls


def test_sampling_is_seeded_by_client_id() -> None:
    picks = [sample_clients(3, r, 10, 4) for r in range(1, 6)]
    assert picks == [sample_clients(3, r, 10, 4) for r in range(1, 6)]
    assert all(len(set(p)) == 4 and p == sorted(p) and max(p) < 10 for p in picks)
    assert len({tuple(p) for p in picks}) > 1  # rounds differ


def test_same_clients_whatever_the_node_ids(tmp_path: Path) -> None:
    # Two federations with different random node ids train the same clients, and the
    # aggregate is the same to the last bit although replies arrive in another order.
    a_strategy, a, a_calls = run(tmp_path / "a", FakeGrid(6), rounds=3, per_round=3)
    b_grid = FakeGrid(6, arrival_seed=2)
    b_strategy, b, b_calls = run(tmp_path / "b", b_grid, rounds=3, per_round=3)
    assert [[c["client_id"] for c in call[1]] for call in a_calls] == [
        sample_clients(0, r, 6, 3) for r in (1, 2, 3)
    ]
    assert [call[1] for call in a_calls] == [call[1] for call in b_calls]
    for r in (1, 2, 3):
        assert torch.equal(a[r], b[r])


def test_failures_are_counted_and_left_out(tmp_path: Path) -> None:
    faults = {(1, 1): "raise", (2, 1): "lie", (3, 1): "hang", (5, 1): "malformed"}
    grid = FakeGrid(6, faults=faults)
    strategy, seen, calls = run(tmp_path, grid)
    ((_, clients, _, failures),) = calls
    assert [c["client_id"] for c in clients] == [0, 4]
    assert failures == [
        {"client_id": 1, "error": "boom 1"},
        {"client_id": 2, "error": "client id mismatch: reply claims client 0"},
        {"client_id": 3, "error": "no reply within 5 s"},
        {"client_id": 5, "error": "malformed reply: 'metrics'"},
    ]
    # FedAvg over the usable replies only: their example-weighted mean.
    n0, n4 = grid.examples[0], grid.examples[4]
    expected = (n0 * grid.weights[0] + n4 * grid.weights[4]) / (n0 + n4)
    torch.testing.assert_close(seen[1], expected)
    # Captures are named by the server's ids: the liar did not overwrite client 0's.
    names = sorted(p.stem for p in (tmp_path / "captures").glob("*.safetensors"))
    assert names == ["r001_c0000", "r001_c0004"]
    torch.testing.assert_close(
        load_capture(tmp_path / "captures" / "r001_c0000.safetensors").shared["w"],
        grid.weights[0],
    )
    assert strategy.failed_round is None


def test_a_round_where_every_client_fails_stops_the_run(tmp_path: Path) -> None:
    grid = FakeGrid(2, faults={(0, 2): "raise", (1, 2): "hang"})
    strategy, seen, calls = run(tmp_path, grid, rounds=4)
    assert strategy.failed_round == 2
    assert sorted(seen) == [0, 1, 2]  # the failed round is evaluated, then the run stops
    assert torch.equal(seen[2], seen[1])  # nothing to aggregate: the model is unchanged
    assert [len(call[3]) for call in calls] == [0, 2]


@pytest.mark.parametrize("background", [False, True])
def test_evaluation_in_the_background_changes_nothing_recorded(
    tmp_path: Path, background: bool
) -> None:
    strategy, seen, calls = run(tmp_path / "ok", FakeGrid(4), rounds=3, background=background)
    _, want, want_calls = run(tmp_path / "want", FakeGrid(4), rounds=3)
    assert sorted(seen) == [0, 1, 2, 3]  # the last round's evaluation is waited for
    assert all(torch.equal(seen[r], want[r]) for r in want)
    assert [c[1] for c in calls] == [c[1] for c in want_calls]
    # A diverged evaluation of round 2 stops the run before round 3 is recorded or captured.
    run_dir = tmp_path / "diverged"
    _, seen, calls = run(run_dir, FakeGrid(4), rounds=4, background=background, diverge_after=2)
    assert sorted(seen) == [0, 1, 2] and [c[0] for c in calls] == [1, 2]
    assert sorted(p.stem[:4] for p in (run_dir / "captures").glob("*.safetensors")) == (
        ["r001"] * 4 + ["r002"] * 4
    )


def test_node_map_trusts_no_duplicate_or_failed_answer() -> None:
    def query(node: int) -> Message:
        return Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY)

    def answer(node: int, client: int) -> Message:
        return Message(
            RecordDict({"client": ConfigRecord({"client-id": client})}), reply_to=query(node)
        )

    replies = [
        answer(11, 0),
        answer(12, 1),
        answer(13, 1),  # two nodes claim client 1
        answer(14, 9),  # out of range
        Message(Error(code=0, reason="x"), reply_to=query(15)),
    ]
    nodes = node_map(replies, 3)
    assert nodes.node_of == {0: 11}
    assert set(nodes.unmapped) == {1, 2} and "two nodes" in nodes.unmapped[1]


@pytest.mark.parametrize(
    ("reason", "line"),
    [
        (
            "<class 'X'>:<'\nException ClientAppException occurred. Message: bad\n thing'>",
            "bad thing",
        ),
        ("plain\nerror", "plain error"),
        ("x" * 1000, "x" * 297 + "..."),
    ],
)
def test_errors_are_one_line(reason: str, line: str) -> None:
    assert one_line(reason) == line


def test_numbers_do_not_depend_on_python_random_state() -> None:
    random.seed(123)
    a = sample_clients(0, 1, 20, 5)
    random.seed(456)
    assert sample_clients(0, 1, 20, 5) == a
    assert np.all(np.diff(a) > 0)
