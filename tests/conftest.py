"""Shared fixtures (paths and helpers are in :mod:`tests.helpers`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fedspeech.data.corpus import SAMPLE_RATE
from fedspeech.data.spoof import build_spoof_corpus


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder shared by the tests that build the small synthetic corpus."""
    return tmp_path_factory.mktemp("fedspeech-cache")


@pytest.fixture(scope="module")
def tiny_spoof_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny built-in spoof corpus: 6 speakers × 2 utterances of crude voiced sound.

    With the default attacks; ``FEDSPEECH_CACHE`` points at a fresh cache while a test
    module uses it (the sdd simulations of several test files build one each).
    """
    bona = tmp_path_factory.mktemp("bona")
    rng = np.random.default_rng(0)
    t = np.arange(SAMPLE_RATE // 2) / SAMPLE_RATE
    for s in range(6):
        for u in range(2):
            f0 = rng.uniform(90, 220)
            x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 10))
            y = 0.2 * np.asarray(x) + 0.003 * rng.standard_normal(t.shape)
            path = bona / f"spk{s}" / f"utt{u}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, y.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDSPEECH_CACHE", str(cache))
        yield build_spoof_corpus(bona, progress=False, workers=1)


@pytest.fixture
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What Flower sets in a ServerApp's process before messages can be made."""
    from flwr.supercore.task_identity import TaskIdentity

    for key, value in {"_run_id": 1, "_task_id": 1, "_node_id": 1}.items():
        monkeypatch.setattr(TaskIdentity, key, value)
