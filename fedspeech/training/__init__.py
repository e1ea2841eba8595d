"""Plain-PyTorch local training (no Flower imports), called by the Flower apps."""

from fedspeech.training.local import (
    LocalResult,
    apply_gradient,
    compute_gradient,
    evaluate,
    local_batches,
    train_local,
)

__all__ = [
    "LocalResult",
    "apply_gradient",
    "compute_gradient",
    "evaluate",
    "local_batches",
    "train_local",
]
