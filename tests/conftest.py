"""Shared fixtures: paths to the read-only real data and a tiny built-in corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
FSDD = SHARED_DATA / "fsdd"

needs_fsdd = pytest.mark.skipif(
    not (FSDD / "recordings").is_dir(),
    reason=f"real FSDD data not found at {FSDD} (only present on developer and CI machines)",
)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder shared by the tests that build the small synthetic corpus."""
    return tmp_path_factory.mktemp("fedspeech-cache")
