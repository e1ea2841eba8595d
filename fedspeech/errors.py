"""User-facing errors.

Anything raised as :class:`FedspeechError` is bad input: the CLI prints its message on one
line and exits with code 2, without a traceback.
"""

from __future__ import annotations


class FedspeechError(Exception):
    """Bad input or configuration, reported to the user as one line (exit code 2)."""


class DataError(FedspeechError):
    """A dataset is missing, empty or malformed."""


class ConfigError(FedspeechError):
    """A configuration key or value is invalid."""


class DivergedError(FedspeechError):
    """Training diverged: a loss became NaN or infinite, so the run stops (exit code 2)."""
