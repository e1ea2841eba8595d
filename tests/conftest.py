"""Shared fixtures (paths and helpers are in :mod:`tests.helpers`)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder shared by the tests that build the small synthetic corpus."""
    return tmp_path_factory.mktemp("fedspeech-cache")
