"""An unreachable Ray cluster: one line naming the address, in seconds, for both commands."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from fedspeech.cluster import check_reachable, parse_address
from fedspeech.errors import ConfigError
from tests.helpers import assert_one_line_error, run_cli


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.1.2.3:6379", ("10.1.2.3", 6379)),
        ("ray://head:10001", ("head", 10001)),
        ("[::1]:6379", ("::1", 6379)),
        ("auto", None),
        ("local", None),
    ],
)
def test_parse_address(address: str, expected: tuple[str, int] | None) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["nohost", "host:port", "host:0", "host:70000", ":6379"])
def test_malformed_address_is_named(address: str) -> None:
    with pytest.raises(ConfigError, match=f"--ray-address '{address}'"):
        parse_address(address)


def test_listening_port_is_reachable() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        check_reachable(f"127.0.0.1:{server.getsockname()[1]}")


@pytest.mark.parametrize("command", ["simulate", "audit"])
def test_unreachable_cluster_fails_within_30_s(command: str, tmp_path: Path) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    args = ["simulate", "--out", str(tmp_path / "run")]
    if command == "audit":
        args = ["audit", str(tmp_path)]
    start = time.monotonic()
    proc = run_cli(*args, "--ray-address", address)
    assert time.monotonic() - start < 30
    assert_one_line_error(proc, f"cannot reach the Ray cluster at '{address}'")
