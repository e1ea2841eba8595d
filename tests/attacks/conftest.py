"""Fixtures of the attack tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def torch_one_thread() -> Iterator[None]:
    """One torch thread for a module: steps this small are all overhead, and a second
    thread only adds contention (``pytestmark = pytest.mark.usefixtures(...)``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
