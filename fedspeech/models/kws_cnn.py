"""The keyword CNN of the speech gradient-leakage study.

Li, Zhang and Liu, "Speech privacy leakage from shared gradients in distributed learning":
a small CNN on a 32×32 Mel or MFCC input, Conv3×3(32) → Conv3×3(64) → MaxPool 2 →
Dense 128 → Dense 10, about 1.6 M parameters.
"""

from __future__ import annotations

import torch
from torch import nn

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}


class KeywordCNN(nn.Module):
    """Keyword-spotting CNN on a (features × frames) input.

    Parameters
    ----------
    num_classes : int
        Output classes (10 for the ten-word task).
    input_shape : tuple[int, int]
        ``(n_features, n_frames)``, ``(32, 32)`` in the study.
    activation : str
        ``"relu"`` (default), ``"sigmoid"`` or ``"tanh"``. Smooth activations make the
        gradient-matching attack's second-order gradients non-zero everywhere.

    Examples
    --------
    >>> model = KeywordCNN()
    >>> sum(p.numel() for p in model.parameters())
    1625866
    >>> model(torch.zeros(4, 32, 32)).shape
    torch.Size([4, 10])
    """

    def __init__(
        self,
        num_classes: int = 10,
        input_shape: tuple[int, int] = (32, 32),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        act = _ACTIVATIONS[activation]
        h, w = input_shape
        # Two unpadded 3×3 convolutions shrink each side by 4, pooling halves it.
        flat = 64 * ((h - 4) // 2) * ((w - 4) // 2)
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3),
            act(),
            nn.Conv2d(32, 64, 3),
            act(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, 128),
            act(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` from features ``(B, F, T)`` or ``(B, 1, F, T)``."""
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return self.classifier(self.features(x))
