"""What the honest-but-curious server keeps: captured updates as safetensors.

This package never imports ``flwr``, so :mod:`attacks` can read captures from anywhere.
"""

from fedspeech.capture.format import (
    LR_SCHEDULES,
    WAVEFORM,
    Capture,
    CaptureFormatError,
    capture_name,
    load_capture,
    load_training,
    load_truth,
    reply_steps,
    round_lr,
    save_capture,
    save_truth,
)

__all__ = [
    "LR_SCHEDULES",
    "WAVEFORM",
    "Capture",
    "CaptureFormatError",
    "capture_name",
    "load_capture",
    "load_training",
    "load_truth",
    "reply_steps",
    "round_lr",
    "save_capture",
    "save_truth",
]
