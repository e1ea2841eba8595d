"""``python -m fedspeech``."""

from fedspeech.cli import run

run()
