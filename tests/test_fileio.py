"""Atomic writes; JSON that every reader accepts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from fedspeech.fileio import atomic_write_json, clean_json


def test_clean_json_replaces_non_finite_numbers_everywhere() -> None:
    obj = {"a": math.nan, 1: [math.inf, (-math.inf, 2.5)], "n": np.float32("nan"), "i": np.int64(3)}
    assert clean_json(obj) == {"a": None, "1": [None, [None, 2.5]], "n": None, "i": 3}


def test_atomic_write_json_is_strict_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.json"
    atomic_write_json(path, {"loss": math.nan, "ok": True}, indent=1)
    text = path.read_text(encoding="utf-8")
    assert "NaN" not in text and text.endswith("\n")
    assert json.loads(text) == {"loss": None, "ok": True}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]
