"""Plain-PyTorch local training (no Flower imports), called by the Flower apps."""

from fedspeech.training.domains import ROGA_DOMAINS
from fedspeech.training.local import (
    LocalResult,
    apply_gradient,
    batch_slots,
    compute_gradient,
    evaluate,
    gradient_and_loss,
    local_batches,
    local_step_count,
    loss_and_accuracy,
    predict,
    seed_torch,
    train_local,
)

__all__ = [
    "ROGA_DOMAINS",
    "LocalResult",
    "apply_gradient",
    "compute_gradient",
    "evaluate",
    "loss_and_accuracy",
    "predict",
    "gradient_and_loss",
    "batch_slots",
    "local_batches",
    "local_step_count",
    "seed_torch",
    "train_local",
]
# Dual-path alignment (fedspeech.training.dual_path, .aligners), RoGA
# (fedspeech.training.roga) and the sdd local trainers (fedspeech.training.sdd, LOCAL_TRAINERS)
# import torchjd; they are imported where used, so keyword spotting clients do not pay for it.
