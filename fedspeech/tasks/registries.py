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
from fedspeech.tasks.base import TASKS
from fedspeech.training.domains import ROGA_DOMAINS
from fedspeech.training.dual_path import OPTIMIZERS
from fedspeech.training.sdd import LOCAL_TRAINERS

_NAMES: dict[str, Callable[[], list[str]]] = {
    "task": TASKS.names,
    "dataset": lambda: [*DATASETS.names(), *SPOOF_DATASETS.names()],
    "partition": PARTITIONS.names,
    "frontend": FRONTENDS.names,
    "model": MODELS.names,
    "augmentation": AUGMENTATIONS.names,
    "alignment": LOCAL_TRAINERS.names,
    "optimizer": OPTIMIZERS.names,
    "roga-domains": ROGA_DOMAINS.names,
}


def known_names(registry: str) -> list[str]:
    """The names registered in ``registry`` (a ``registry=`` value of a setting)."""
    return _NAMES[registry]()
