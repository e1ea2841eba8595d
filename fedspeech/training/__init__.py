"""Plain-PyTorch local training (no Flower imports), called by the Flower apps."""

from fedspeech.training.local import (
    LocalResult,
    apply_gradient,
    compute_gradient,
    evaluate,
    gradient_and_loss,
    local_batches,
    loss_and_accuracy,
    predict,
    train_local,
)

__all__ = [
    "LocalResult",
    "apply_gradient",
    "compute_gradient",
    "evaluate",
    "loss_and_accuracy",
    "predict",
    "gradient_and_loss",
    "local_batches",
    "train_local",
]
# Dual-path alignment (fedspeech.training.dual_path, .aligners) and RoGA
# (fedspeech.training.roga) import torchjd; they are imported where used, so keyword
# spotting clients do not pay for it.
