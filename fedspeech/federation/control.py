"""How the simulation driver steers the server thread: stop it, resume from a round.

Kept free of Flower imports, so that ``fedspeech simulate`` reports bad input before Flower
and Ray load.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from fedspeech.federation.strategy import HonestButCuriousStrategy


@dataclass
class ServerControl:
    """Shared by the driver (:func:`fedspeech.federation.simulate.simulate`) and the server.

    Attributes
    ----------
    stop : threading.Event
        Set on SIGINT or SIGTERM: the server ends at its next wait for replies.
    done : threading.Event
        Set by the server thread when :func:`~fedspeech.federation.server_app.run_server`
        returns (or raises).
    started : bool
        Whether the server thread has started.
    start_round : int
        Rounds already done (a resumed run).
    initial_weights : dict, optional
        The global weights to start from (a resumed run); None: fresh ones.
    strategy : HonestButCuriousStrategy, optional
        The capture wrapper, once built (the driver closes it when interrupted).
    """

    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    started: bool = False
    start_round: int = 0
    initial_weights: dict[str, torch.Tensor] | None = None
    strategy: HonestButCuriousStrategy | None = None
