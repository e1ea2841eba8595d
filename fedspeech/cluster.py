"""Checks of a Ray cluster address before Ray is asked to join it.

``ray.init(address="HOST:PORT")`` on an address where nothing listens retries for a long
time, printing "Failed to connect to GCS" and ignoring SIGTERM; a TCP connection attempt
answers in seconds. Used by ``fedspeech simulate`` and ``fedspeech audit``.

Examples
--------
>>> parse_address("ray://10.0.0.5:10001")
('10.0.0.5', 10001)
>>> parse_address("auto") is None
True
>>> check_reachable("127.0.0.1:1", timeout=2.0)
Traceback (most recent call last):
...
fedspeech.errors.ConfigError: cannot reach the Ray cluster at '127.0.0.1:1' (connection refused)
"""

from __future__ import annotations

import errno
import socket

from fedspeech.errors import ConfigError

#: Seconds to wait for a TCP connection to a cluster's head.
CONNECT_TIMEOUT = 10.0


def parse_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``HOST:PORT`` or ``ray://HOST:PORT`` address; None for others.

    ``auto`` and ``local`` name no host: Ray finds (or starts) the cluster itself and fails
    fast when there is none.

    Raises
    ------
    ConfigError
        A ``HOST:PORT`` form whose port is not a number in 1..65535.
    """
    text = address.strip()
    if text in ("auto", "local", ""):
        return None
    text = text.removeprefix("ray://")
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(
            f"--ray-address {address!r} is not HOST:PORT, ray://HOST:PORT, auto or local"
        )
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 < number < 65536:
        raise ConfigError(f"--ray-address {address!r}: the port must be a number in 1..65535")
    return host.strip("[]"), number


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Raise :class:`ConfigError` naming ``address`` unless a TCP connection to it opens.

    Parameters
    ----------
    address : str
        A Ray address (see :func:`parse_address`); ``auto`` and ``local`` are not checked.
    timeout : float
        Seconds before an unanswered connection counts as unreachable.
    """
    target = parse_address(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            return
    except TimeoutError:
        reason = f"no answer within {timeout:g} s"
    except ConnectionRefusedError:
        reason = "connection refused"
    except socket.gaierror as exc:
        reason = f"unknown host: {exc.strerror}"
    except OSError as exc:
        reason = errno.errorcode.get(exc.errno or 0, str(exc)).lower()
    raise ConfigError(f"cannot reach the Ray cluster at {address!r} ({reason})")
