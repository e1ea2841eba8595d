"""Which Flower node is which client: the server's own map from node ids to client ids.

Flower gives every node a random id (``os.urandom``), and only the node itself knows its
``partition-id``. Before the first round the server asks every node once, with a query
message, and keeps the answers. From then on it samples, addresses and names clients by
this map, never by what a training reply says about itself, so that the clients of a round,
the order of aggregation and the names of captures do not depend on Flower's node ids.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedspeech.errors import RunFailed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeMap:
    """The server's map between Flower node ids and client ids.

    Attributes
    ----------
    node_of : dict[int, int]
        Client id -> node id, for every client that answered the query unambiguously.
    unmapped : dict[int, str]
        Client id -> why it has no node (no answer, an error, two nodes claiming it).
    """

    node_of: dict[int, int]
    unmapped: dict[int, str] = field(default_factory=dict)

    def client_of(self) -> dict[int, int]:
        """Node id -> client id."""
        return {node: client for client, node in self.node_of.items()}


def wait_for_nodes(grid: Grid, count: int, timeout: float) -> list[int]:
    """The grid's node ids, once at least ``count`` nodes are connected.

    Raises
    ------
    RunFailed
        Fewer than ``count`` nodes connected within ``timeout`` seconds.
    """
    # Simulated nodes register after the ServerApp has started: wait as FedAvg does.
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise RunFailed(f"only {len(nodes)} of {count} clients connected within {timeout:g} s")
        time.sleep(0.1)
    return nodes


def query_client_ids(grid: Grid, num_clients: int, timeout: float) -> NodeMap:
    """Ask every node for its client id, and map the answers (see :func:`node_map`)."""
    nodes = wait_for_nodes(grid, num_clients, timeout)
    queries = [
        Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in nodes
    ]
    replies = list(grid.send_and_receive(queries, timeout=timeout))
    return node_map(replies, num_clients)


def reported_client_id(msg: Message) -> int:
    """The client id a reply states about itself (``client/client-id``).

    Raises
    ------
    KeyError, TypeError, ValueError
        The reply has no (integer) client id.
    """
    value = msg.content.config_records["client"]["client-id"]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"client id {value!r} is not an integer")
    return cast(int, value)


def node_map(replies: Iterable[Message], num_clients: int) -> NodeMap:
    """The map built from the answers to the id query.

    A client id claimed by two nodes is ambiguous and trusted for neither; answers that are
    errors or ids outside ``0 .. num_clients - 1`` are ignored. A client left without a
    node counts as failed whenever it is sampled (the reason is in :attr:`NodeMap.unmapped`).
    """
    claims: dict[int, int] = {}
    for msg in replies:
        if msg.has_error():
            log.warning("node %d: id query failed: %s", msg.metadata.src_node_id, msg.error.reason)
            continue
        try:
            client = reported_client_id(msg)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("node %d: no client id in its answer (%s)", msg.metadata.src_node_id, exc)
            continue
        if 0 <= client < num_clients:
            claims[msg.metadata.src_node_id] = client
    counts = Counter(claims.values())
    node_of = {client: node for node, client in claims.items() if counts[client] == 1}
    unmapped = {
        c: "two nodes claim this client id" if counts[c] > 1 else "no node answered as this client"
        for c in range(num_clients)
        if c not in node_of
    }
    return NodeMap(node_of=dict(sorted(node_of.items())), unmapped=unmapped)
