"""The Flower apps: thin wrappers over :mod:`fedspeech.training` and the capture format."""
