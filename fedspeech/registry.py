"""Name registries: one small class or function behind each name.

Examples
--------
>>> reg: Registry[int] = Registry("toy")
>>> @reg.register("one")
... def one() -> int:
...     return 1
>>> reg.get("one")()
1
>>> reg.get("two")
Traceback (most recent call last):
...
fedspeech.errors.ConfigError: unknown toy 'two'; known: one
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from fedspeech.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Map names to factories; unknown names raise an error listing the known ones.

    Parameters
    ----------
    kind : str
        What the registry holds ("model", "front-end", ...), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """Return the object registered as ``name``."""
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
