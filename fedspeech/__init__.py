"""fedspeech: federated speech training on Flower, with an honest-but-curious audit.

Importing this package does not import Flower; only :mod:`fedspeech.federation` does.
"""

__version__ = "0.1.0"
