"""The honest-but-curious server's attack stages and leakage scoring, as a library.

It works on any captured update and stands alone: of fedspeech it imports only
:mod:`fedspeech.capture`, :mod:`fedspeech.models`, :mod:`fedspeech.frontends`,
:mod:`fedspeech.registry`, :mod:`fedspeech.errors` and :mod:`fedspeech.metrics`, and never
``flwr``. Whatever needs a corpus or a run's configuration (the truth side, the judges'
training clips, public speech for the CMVN prior) is passed in by the caller; the privacy
audit of a run folder that does so is :mod:`fedspeech.audit` (``tests/test_architecture.py``
checks these arrows).
"""
