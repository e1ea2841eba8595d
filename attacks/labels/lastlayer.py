"""Locate the classifier's last linear layer in a gradient dictionary."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedspeech.errors import FedspeechError

__all__ = ["last_linear"]


def last_linear(tensors: Mapping[str, torch.Tensor]) -> tuple[str, str | None]:
    """Names of the last linear layer's weight and bias, in parameter order.

    The weight is the last 2-D tensor; its bias is the 1-D tensor of the same length that
    follows it (``None`` when the layer has none).

    Parameters
    ----------
    tensors : Mapping[str, torch.Tensor]
        Parameters or gradients by name, in the model's parameter order.

    Raises
    ------
    FedspeechError
        If there is no 2-D tensor.

    Examples
    --------
    >>> import torch
    >>> g = {"a.weight": torch.zeros(4, 3), "a.bias": torch.zeros(4), "b.weight": torch.zeros(2, 4)}
    >>> last_linear(g)
    ('b.weight', None)
    >>> last_linear({"a.weight": torch.zeros(4, 3), "a.bias": torch.zeros(4)})
    ('a.weight', 'a.bias')
    """
    names = list(tensors)
    for i in range(len(names) - 1, -1, -1):
        weight = tensors[names[i]]
        if weight.dim() != 2:
            continue
        if i + 1 < len(names):
            nxt = tensors[names[i + 1]]
            if nxt.dim() == 1 and nxt.shape[0] == weight.shape[0]:
                return names[i], names[i + 1]
        return names[i], None
    raise FedspeechError("the model has no 2-D weight, so no last linear layer to read labels from")
