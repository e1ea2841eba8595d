"""AASIST and AASIST-L: forward + backward time against an earlier implementation, one run.

For each published model, a batch of 8 × 64,600-sample waveforms (about 4 s each, the
published input) goes forward and backward (cross-entropy, training mode) on one torch
thread, alternately through today's ``fedspeech.models.aasist`` and through the same file
as it was at ``--baseline REV`` (read with ``git show``, imported on its own), ``--repeat``
times each; the medians and their ratio are printed. The issue's target is a ratio of at
most 0.8. The script also loads the published checkpoints (``--weights``, the shared
folder's ``models/aasist``) and prints the largest difference of today's logits from the
authors' (``reference_outputs.json``).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_aasist.py                  # 3 repeats
    OMP_NUM_THREADS=1 python benchmarks/bench_aasist.py --repeat 5 --baseline HEAD~3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F

from fedspeech.models import build_model
from fedspeech.models.reference import load_reference_weights

REPO = Path(__file__).resolve().parents[1]
# The implementation before the published models were matched (the "today").
DEFAULT_BASELINE = "b18bc43"
MODELS = {"aasist-l": ("AASISTL", "AASIST-L"), "aasist": ("AASIST", "AASIST")}


def baseline_module(rev: str) -> ModuleType:
    """``fedspeech/models/aasist.py`` as it was at ``rev``, imported under another name."""
    src = subprocess.run(
        ["git", "show", f"{rev}:fedspeech/models/aasist.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "baseline_aasist.py"
    path.write_text(src, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("baseline_aasist", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_aasist"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def step_seconds(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """One forward and backward pass, in seconds."""
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    F.cross_entropy(model(x), y).backward()
    return time.perf_counter() - t0


def reference_inputs() -> torch.Tensor:
    """The four inputs of ``reference_outputs.json``'s recipe, ``(4, 64600)``."""
    noise = np.random.RandomState(0).standard_normal((2, 64600)) * 0.1
    t = np.arange(64600) / 16000
    sine = 0.5 * np.sin(2 * np.pi * 440 * t)
    chirp = 0.3 * np.sin(2 * np.pi * (100 * t + (4000 - 100) / (2 * t[-1]) * t**2))
    return torch.from_numpy(np.vstack([noise, sine, chirp]).astype(np.float32))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--baseline", default=DEFAULT_BASELINE, help="git revision to compare with")
    ap.add_argument("--weights", type=Path, default=REPO.parent / "shared" / "models" / "aasist")
    args = ap.parse_args()
    torch.set_num_threads(1)
    old = baseline_module(args.baseline)
    rng = np.random.default_rng(0)
    x = torch.from_numpy((0.1 * rng.standard_normal((args.batch, 64600))).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 2, args.batch))
    print(f"forward + backward, batch {args.batch} x 64,600 samples, one thread")
    head = f"{'model':10s} {'today s':>9s} {args.baseline + ' s':>14s} {'ratio':>7s}"
    print(f"{head} {'max |dlogit|':>13s}")
    for name, (cls, stem) in MODELS.items():
        torch.manual_seed(0)
        new = build_model(name, num_classes=2, num_samples=64600).train()
        torch.manual_seed(0)
        base = getattr(old, cls)(num_classes=2, num_samples=64600).train()
        step_seconds(new, x, y)  # warm-up
        step_seconds(base, x, y)
        now, before = [], []
        for _ in range(args.repeat):
            now.append(step_seconds(new, x, y))
            before.append(step_seconds(base, x, y))
        ratio = statistics.median(a / b for a, b in zip(now, before, strict=True))
        diff = "n/a"
        weights = args.weights / f"{stem}.pth"
        if weights.is_file():
            load_reference_weights(new, weights, name)
            new.eval()
            with torch.no_grad():
                logits = new(reference_inputs())
            ref = json.loads((args.weights / "reference_outputs.json").read_text())
            expected = torch.tensor(ref["models"][stem]["logits"])
            diff = f"{float((logits - expected).abs().max()):.1e}"
        print(
            f"{name:10s} {statistics.median(now):9.2f} {statistics.median(before):14.2f} "
            f"{ratio:7.2f} {diff:>13s}"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
