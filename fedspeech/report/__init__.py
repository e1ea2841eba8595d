"""Run reports: ``metrics.json``, plots and the terminal summary."""

from fedspeech.report.recorder import RunRecorder

__all__ = ["RunRecorder"]
