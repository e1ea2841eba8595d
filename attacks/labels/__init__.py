"""Label recovery from a shared gradient, by name.

``idlg`` reads the one label of a single-sample gradient (Zhao et al., iDLG, 2020);
``count`` estimates the label multiset of a batch (Geng et al., 2021).

Examples
--------
>>> LABEL_METHODS.names()
['count', 'idlg']
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from attacks.labels.count import count_labels, counts_from_bias
from attacks.labels.idlg import idlg_label
from attacks.labels.lastlayer import last_linear
from attacks.target import AttackTarget
from fedspeech.registry import Registry

__all__ = [
    "LABEL_METHODS",
    "count_labels",
    "counts_from_bias",
    "idlg_label",
    "last_linear",
    "recover_labels",
]

LABEL_METHODS: Registry[Callable[[AttackTarget], torch.Tensor]] = Registry("label method")
LABEL_METHODS.register("idlg")(idlg_label)
LABEL_METHODS.register("count")(count_labels)


def recover_labels(target: AttackTarget, method: str = "auto") -> torch.Tensor:
    """Labels behind ``target``'s gradient.

    Parameters
    ----------
    target : AttackTarget
        The shared gradient and model.
    method : str
        A name in :data:`LABEL_METHODS`, or ``"auto"``: ``idlg`` for one sample, ``count``
        otherwise.

    Returns
    -------
    torch.LongTensor
        ``(B,)`` labels; for batches, the multiset in ascending order.

    Raises
    ------
    fedspeech.errors.ConfigError
        Unknown method (the message lists the known ones).
    """
    if method == "auto":
        method = "idlg" if target.batch_size == 1 else "count"
    return LABEL_METHODS.get(method)(target)
