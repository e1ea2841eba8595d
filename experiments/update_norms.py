"""The L2 norms of the captured updates of run folders, and the share of exact zeros.

What ``experiments/defenses.toml`` chose its clip bound from: a capture's update is
``shared - global`` (weights); a gradient capture's is ``-lr * gradient``. Run from the
repository root:

    python -m experiments.update_norms RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from fedspeech.capture import load_capture


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dirs", nargs="+", type=Path)
    args = ap.parse_args()
    for run in args.run_dirs:
        norms, zeros, entries = [], 0, 0
        for path in sorted((run / "captures").glob("*.safetensors")):
            cap = load_capture(path)
            lr = float(cap.training.get("lr", 1.0))
            total = 0.0
            for name, shared in cap.shared.items():
                if cap.kind == "gradient":
                    update = -lr * shared.double()
                else:
                    update = shared.double() - cap.global_weights[name].double()
                total += float(update.square().sum())
                zeros += int((update == 0).sum())
                entries += update.numel()
            norms.append(total**0.5)
        if not norms:
            print(f"{run}: no captures")
            continue
        print(
            f"{run}: {len(norms)} updates, norm {min(norms):.2f}-{max(norms):.2f}, median "
            f"{statistics.median(norms):.2f}; exact zeros {100 * zeros / entries:.1f} %"
        )


if __name__ == "__main__":
    main()
