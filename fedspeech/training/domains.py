"""What RoGA's domains are in speech-deepfake detection (``--roga-domains``).

RoGA (Qiu et al., ICME 2025, arXiv:2505.20653; :mod:`fedspeech.training.roga`) perturbs and
aligns the gradients of the domains of a batch. :data:`ROGA_DOMAINS` names the kinds of
domain a run can use; the settings schema refers to this registry by name. The batch
``[x; augment(x)]`` of :func:`~fedspeech.training.sdd.train_sdd` gets:

* ``attack`` (the default of ``--roga-domains``): each clip's attack id (spoofing method), bona fide
  clips forming their own domain; the augmented copy of a clip stays in its clip's domain;
* ``speaker``: each clip's speaker, likewise;
* ``path``: domain 0 for the clean half and 1 for the augmented half.

Kept free of heavy imports: it is read where runs are prepared and validated.

Examples
--------
>>> ROGA_DOMAINS.names()
['attack', 'path', 'speaker']
>>> ROGA_DOMAINS.get("speaker").attribute
'speakers'
"""

from __future__ import annotations

from dataclasses import dataclass

from fedspeech.registry import Registry


@dataclass(frozen=True)
class DomainKind:
    """One kind of RoGA domain.

    Attributes
    ----------
    attribute : str or None
        The per-clip attribute of a :class:`~fedspeech.data.spoof.SpoofCorpus` whose distinct
        values number the domains (``"attacks"``, ``"speakers"``); ``None`` when the domains
        are the clean and augmented halves of the batch, not a property of the clips.
    description : str
        One line for messages and documentation.
    """

    attribute: str | None
    description: str


ROGA_DOMAINS: Registry[DomainKind] = Registry("--roga-domains")

ROGA_DOMAINS.register("attack")(DomainKind("attacks", "each clip's attack id, bona fide as one"))
ROGA_DOMAINS.register("speaker")(DomainKind("speakers", "each clip's speaker"))
ROGA_DOMAINS.register("path")(DomainKind(None, "the clean and the augmented half of the batch"))

__all__ = ["ROGA_DOMAINS", "DomainKind"]
