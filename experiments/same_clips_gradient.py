"""Turn a run of shared updates into a run of gradients of the same clips, for comparison.

    python -m experiments.same_clips_gradient RUN OUT

For every capture of ``RUN`` (``--share update``), ``OUT`` gets a gradient capture of the
same name: the gradient of the mean loss over the distinct clips the client trained on (its
``truth/``), at the same global weights, with their true labels, as a FedSGD client with
that batch would have shared it. ``config.toml``, ``data/`` and ``truth/`` are copied (the
truth rewritten as one batch), so ``fedspeech audit OUT`` scores the same clips. This is the
"gradient of the same clips" column of docs/results/unrolled.md: what the attack would get
if the client had shared one gradient instead of several local steps.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from fedspeech.capture import Capture, load_capture, load_truth, save_capture, save_truth
from fedspeech.models import build_model
from fedspeech.training import compute_gradient


def convert(run: Path, out: Path) -> int:
    """Write ``out`` from ``run``; return the number of captures converted."""
    if out.exists():
        raise SystemExit(f"same_clips_gradient: {out} exists; remove it first")
    features = np.load(run / "data" / "features.npy", mmap_mode="r", allow_pickle=False)
    labels = np.load(run / "data" / "labels.npy", allow_pickle=False)
    (out / "captures").mkdir(parents=True)
    (out / "truth").mkdir()
    shutil.copy2(run / "config.toml", out / "config.toml")
    shutil.copytree(run / "data", out / "data")
    done = 0
    for path in sorted((run / "captures").glob("*.safetensors")):
        cap = load_capture(path)
        truth = load_truth(run / "truth" / f"{path.stem}.json")
        first: dict[int, dict[str, object]] = {}
        for batch in truth["batches"]:
            for k, pos in enumerate(batch["positions"]):
                first.setdefault(int(pos), {key: batch[key][k] for key in batch})
        pos = list(first)
        model = build_model(cap.model, **cap.model_kwargs)
        model.load_state_dict(cap.global_weights)
        x = torch.from_numpy(np.ascontiguousarray(features[pos]))
        y = torch.from_numpy(labels[pos].astype(np.int64))
        grads = compute_gradient(model, x, y)
        save_capture(
            Capture(
                kind="gradient",
                server_round=cap.server_round,
                client_id=cap.client_id,
                num_examples=len(pos),
                global_weights=cap.global_weights,
                shared=grads,
                model=cap.model,
                frontend=cap.frontend,
                model_kwargs=cap.model_kwargs,
                frontend_kwargs=cap.frontend_kwargs,
                training={k: v for k, v in cap.training.items() if k != "batch_order"},
            ),
            out / "captures" / path.name,
        )
        one = {key: [first[p][key] for p in pos] for key in truth["batches"][0]}
        save_truth(
            out / "truth" / f"{path.stem}.json", {**truth, "kind": "gradient", "batches": [one]}
        )
        done += 1
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run folder of shared updates")
    parser.add_argument("out", type=Path, help="the new run folder (must not exist)")
    args = parser.parse_args(argv)
    n = convert(args.run, args.out)
    print(f"{n} gradient captures of the same clips in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
