"""What the honest-but-curious server keeps: captured updates as safetensors.

This package never imports ``flwr``, so :mod:`attacks` can read captures from anywhere.
"""

from fedspeech.capture.format import (
    WAVEFORM,
    Capture,
    CaptureFormatError,
    capture_name,
    load_capture,
    load_training,
    load_truth,
    reply_steps,
    save_capture,
    save_truth,
)

__all__ = [
    "WAVEFORM",
    "Capture",
    "CaptureFormatError",
    "capture_name",
    "load_capture",
    "load_training",
    "load_truth",
    "reply_steps",
    "save_capture",
    "save_truth",
]
