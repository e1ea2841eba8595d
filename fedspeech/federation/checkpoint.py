"""The global model after the last completed round: ``<run>/model.safetensors``.

After every round the server writes the global weights atomically to the run's
:data:`~fedspeech.models.weights.MODEL_FILE`, with the round number, the model's name and
keyword arguments, the task, the class names and the run's settings in the file's metadata
(:func:`fedspeech.models.weights.save_model_file`). ``fedspeech simulate --resume`` starts
from it, and since sampling, client seeds and ground truth depend only on the seed and the
round number, it continues exactly as the uninterrupted run would have. The same file is
what ``fedspeech evaluate --init-weights RUN_DIR`` scores and what ``--init-weights``
starts another run from.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fedspeech.errors import FedspeechError
from fedspeech.models.weights import MODEL_FILE, read_model_file, save_model_file

#: The global model of a run's last completed round, relative to the run folder.
STATE_FILE = Path(MODEL_FILE)


def save_global(
    run_dir: Path,
    weights: dict[str, torch.Tensor],
    server_round: int,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write the global ``weights`` after ``server_round`` to the run's :data:`STATE_FILE`."""
    return save_model_file(
        Path(run_dir) / STATE_FILE, weights, {**(meta or {}), "round": str(server_round)}
    )


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
        weights, meta = read_model_file(path)
        server_round = int(meta["round"])
    except (FedspeechError, ValueError, KeyError) as exc:
        raise FedspeechError(f"--resume {run_dir}: cannot read {path}: {exc}") from None
    return weights, server_round
