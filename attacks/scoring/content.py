"""Content leakage: is the spoken word still recognisable in the reconstruction?

A keyword classifier trained centrally on the original clips plays the listener: it hears
the reconstructed *waveform* through the front-end, as a person or an ASR system would,
not the recovered features.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Self

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedspeech.errors import ConfigError
from fedspeech.frontends import build_frontend
from fedspeech.models import build_model

__all__ = ["ContentClassifier"]


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _peak_normalize(waves: np.ndarray, peak: float) -> np.ndarray:
    """Each row of ``(N, samples)`` scaled to ``max |x| = peak`` (silent rows unchanged)."""
    peaks = np.abs(waves).max(axis=1, keepdims=True)
    gain = np.where(peaks > 1e-6, peak / np.maximum(peaks, 1e-6), 1.0)
    return (waves * gain).astype(np.float32)


class ContentClassifier:
    """Central keyword classifier on the study's CNN, used to score what a listener hears.

    ``fit`` trains ``fedspeech.models.build_model(model, num_classes=C)`` with plain SGD on
    the front-end features of peak-normalised clips (the level fedspeech's clients train at).

    Parameters
    ----------
    model : str
        Model name in ``fedspeech.models.MODELS`` ("kws-cnn").
    epochs : int
        Passes over the training clips.
    lr : float
        SGD learning rate (0.05, as the federated clients).
    batch_size : int
        Clips per step.
    peak : float
        Peak level every clip is normalised to before the front-end (0.9).
    seed : int
        Seeds initialisation and shuffling.
    threads : int or None
        ``torch.set_num_threads`` while fitting and predicting; None leaves it.

    Attributes
    ----------
    model_ : nn.Module
        The trained network (after :meth:`fit`).
    frontend_ : nn.Module
        The front-end it was trained on.
    train_accuracy_ : float
        Accuracy on the training clips after the last epoch.
    """

    def __init__(
        self,
        *,
        model: str = "kws-cnn",
        epochs: int = 10,
        lr: float = 0.05,
        batch_size: int = 32,
        peak: float = 0.9,
        seed: int = 0,
        threads: int | None = None,
    ) -> None:
        if epochs < 1 or batch_size < 1 or lr <= 0:
            raise ConfigError("ContentClassifier needs epochs >= 1, batch_size >= 1, lr > 0")
        self.model_name = model
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.peak = float(peak)
        self.seed = int(seed)
        self.threads = threads
        self.model_: nn.Module | None = None
        self.frontend_: nn.Module | None = None
        self.train_accuracy_ = float("nan")

    def _features(self, waves: np.ndarray, frontend: nn.Module) -> torch.Tensor:
        x = np.asarray(waves, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2:
            raise ValueError(f"expected waveforms (N, samples), got shape {x.shape}")
        x = _peak_normalize(x, self.peak)
        with torch.no_grad():
            return torch.cat(
                [frontend(torch.from_numpy(x[s : s + 256])) for s in range(0, len(x), 256)]
            )

    def fit(self, waves: np.ndarray, labels: np.ndarray, frontend: nn.Module | str) -> Self:
        """Train on original clips.

        Parameters
        ----------
        waves : np.ndarray
            ``(N, samples)`` float waveforms (16 000 samples at 16 kHz in the study).
        labels : np.ndarray
            ``(N,)`` int class indices; the class count is ``max(labels) + 1``.
        frontend : nn.Module or str
            Front-end module or name ("mel", "mfcc").
        """
        fe = build_frontend(frontend) if isinstance(frontend, str) else frontend
        y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        if y.ndim != 1 or len(y) != len(waves) or len(y) == 0:
            raise ConfigError(f"need one label per clip, got {len(y)} labels for {len(waves)}")
        gen = torch.Generator().manual_seed(self.seed)
        with _threads(self.threads):
            x = self._features(waves, fe)
            torch.manual_seed(self.seed)
            net = build_model(
                self.model_name,
                num_classes=int(y.max()) + 1,
                input_shape=(int(x.shape[1]), int(x.shape[2])),
            )
            opt = torch.optim.SGD(net.parameters(), lr=self.lr)
            net.train()
            for _ in range(self.epochs):
                order = torch.randperm(len(y), generator=gen)
                for start in range(0, len(y), self.batch_size):
                    idx = order[start : start + self.batch_size]
                    opt.zero_grad(set_to_none=True)
                    F.cross_entropy(net(x[idx]), y[idx]).backward()
                    opt.step()
            net.eval()
            with torch.no_grad():
                pred = torch.cat([net(x[s : s + 256]).argmax(1) for s in range(0, len(y), 256)])
        self.model_, self.frontend_ = net, fe
        self.train_accuracy_ = float((pred == y).float().mean())
        return self

    def predict(self, waves: np.ndarray) -> np.ndarray:
        """Predicted class ``(N,)`` int64 of waveforms ``(N, samples)`` (or one ``(samples,)``)."""
        if self.model_ is None or self.frontend_ is None:
            raise ConfigError("ContentClassifier.fit must run before predict")
        with _threads(self.threads):
            x = self._features(waves, self.frontend_)
            self.model_.eval()
            with torch.no_grad():
                logits = torch.cat([self.model_(x[s : s + 256]) for s in range(0, len(x), 256)])
        return logits.argmax(1).numpy().astype(np.int64)

    def content_rate(self, reconstructions: np.ndarray, true_labels: np.ndarray) -> float:
        """Fraction of reconstructions ``(N, samples)`` classified as the word really spoken."""
        pred = self.predict(reconstructions)
        truth = np.asarray(true_labels, dtype=np.int64).ravel()
        if truth.shape != pred.shape:
            raise ConfigError(f"{pred.shape[0]} reconstructions but {truth.shape[0]} labels")
        return float(np.mean(pred == truth)) if truth.size else float("nan")
