"""The names behind each registry a setting refers to (``registry=`` in :mod:`fedspeech.config`).

The settings schema sits below the layers that own these registries, so it names a registry
and this module, in the tasks layer, resolves the name.
"""

from __future__ import annotations

from collections.abc import Callable

from fedspeech.augment import AUGMENTATIONS
from fedspeech.data.loaders import DATASETS
from fedspeech.data.partition import PARTITIONS
from fedspeech.data.spoof_loaders import SPOOF_DATASETS
from fedspeech.frontends import FRONTENDS
from fedspeech.models import MODELS
from fedspeech.training.aligners import ALIGNERS
from fedspeech.training.dual_path import OPTIMIZERS

_NAMES: dict[str, Callable[[], list[str]]] = {
    "task": lambda: ["kws", "sdd"],
    "dataset": lambda: [*DATASETS.names(), *SPOOF_DATASETS.names()],
    "partition": PARTITIONS.names,
    "frontend": FRONTENDS.names,
    "model": MODELS.names,
    "augmentation": AUGMENTATIONS.names,
    "alignment": lambda: [*ALIGNERS.names(), "roga"],
    "optimizer": OPTIMIZERS.names,
    "roga-domains": lambda: ["attack", "speaker", "path"],
}


def known_names(registry: str) -> list[str]:
    """The names registered in ``registry`` (a ``registry=`` value of a setting)."""
    return _NAMES[registry]()
