"""The global model after the last completed round, for ``fedspeech simulate --resume``.

After every round the server writes ``<run>/state/global.safetensors`` atomically: the
global weights with the round number in the file's metadata. A resumed run starts from it,
and since sampling, client seeds and ground truth depend only on the seed and the round
number, it continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from fedspeech.errors import FedspeechError
from fedspeech.fileio import atomic_write_bytes

#: The global model of a run's last completed round, relative to the run folder.
STATE_FILE = Path("state") / "global.safetensors"


def save_global(run_dir: Path, weights: dict[str, torch.Tensor], server_round: int) -> Path:
    """Write the global ``weights`` after ``server_round`` to the run's :data:`STATE_FILE`."""
    path = Path(run_dir) / STATE_FILE
    tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    atomic_write_bytes(path, save(tensors, metadata={"round": str(server_round)}))
    return path


def load_global(run_dir: Path) -> tuple[dict[str, torch.Tensor], int]:
    """The saved global weights of a run and the round after which they were saved.

    Raises
    ------
    FedspeechError
        The run folder has no saved model, or an unreadable one.
    """
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise FedspeechError(
            f"--resume {run_dir}: no saved model ({STATE_FILE}): the run stopped before "
            "its first round ended"
        )
    try:
        data = path.read_bytes()
        weights = load(data)
        server_round = _round_of(data)
    except (OSError, SafetensorError, ValueError, KeyError) as exc:
        raise FedspeechError(f"--resume {run_dir}: cannot read {path}: {exc}") from None
    return weights, server_round


def _round_of(data: bytes) -> int:
    """The ``round`` of a safetensors file's metadata (header: 8-byte length, JSON)."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    return int(header.get("__metadata__", {})["round"])
