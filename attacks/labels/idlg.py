"""Single-sample label recovery (Zhao, Mopuri, Bilen, "iDLG", 2020)."""

from __future__ import annotations

import torch

from attacks.labels.lastlayer import last_linear
from attacks.target import AttackTarget
from fedspeech.errors import FedspeechError

__all__ = ["idlg_label"]


def idlg_label(target: AttackTarget) -> torch.Tensor:
    """The label of a one-sample gradient, read off the last layer.

    With cross-entropy, the last layer's bias gradient is ``p - onehot(y)``: only the true
    class is negative. Without a bias, row ``j`` of the weight gradient is ``(p_j - y_j) h``
    and, when the layer input ``h`` is non-negative (after ReLU or sigmoid), only the true
    class's row has a negative sum (iDLG's argument).

    Parameters
    ----------
    target : AttackTarget
        Must have ``batch_size == 1``.

    Returns
    -------
    torch.Tensor
        ``(1,)`` int64 label.

    Raises
    ------
    FedspeechError
        If the gradient comes from more than one sample.
    """
    if target.batch_size != 1:
        raise FedspeechError(
            f"label method 'idlg' needs a one-sample gradient, capture {target.capture_id} has "
            f"{target.batch_size} samples; use 'count'"
        )
    weight, bias = last_linear(target.grads)
    score = target.grads[bias] if bias is not None else target.grads[weight].sum(dim=1)
    return score.detach().argmin().reshape(1).to(torch.long).cpu()
