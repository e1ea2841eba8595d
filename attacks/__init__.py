"""The honest-but-curious server's attack stages and leakage scoring.

This package works on any captured update and never imports ``flwr``.
"""
