"""The trigger registry: key -> trigger instance. Shop developers register their own.

::

    from omnichannel.campaigns.triggers import Trigger, registry

    @registry.register
    class LoyaltyTierReached(Trigger):
        key = "loyalty_tier"
        ...
"""

from __future__ import annotations

from collections.abc import Iterator

from ...exceptions import ConfigurationError
from .base import Trigger


class TriggerRegistry:
    """A mapping of keys to trigger instances, filled by ``register``."""

    def __init__(self) -> None:
        self._triggers: dict[str, Trigger] = {}

    def register(self, trigger_class: type[Trigger]) -> type[Trigger]:
        """Register a Trigger subclass under its ``key`` (usable as a class decorator).

        Registering a key again replaces the earlier trigger: a shop's subclass of a built-in
        trigger can take its key.
        """
        key = getattr(trigger_class, "key", "")
        if not key or not isinstance(key, str):
            raise ConfigurationError(f"{trigger_class.__name__} needs a string `key`")
        self._triggers[key] = trigger_class()
        return trigger_class

    def unregister(self, key: str) -> None:
        self._triggers.pop(key, None)

    def __getitem__(self, key: str) -> Trigger:
        try:
            return self._triggers[key]
        except KeyError:
            raise ConfigurationError(
                f"unknown trigger {key!r}; registered: {', '.join(sorted(self._triggers))}"
            ) from None

    def __contains__(self, key: object) -> bool:
        return key in self._triggers

    def __iter__(self) -> Iterator[str]:
        return iter(self._triggers)

    def __len__(self) -> int:
        return len(self._triggers)

    def choices(self) -> list[tuple[str, str]]:
        """(key, label) pairs for forms, sorted by label."""
        return sorted(
            ((key, str(t.label or key)) for key, t in self._triggers.items()), key=lambda c: c[1]
        )


registry = TriggerRegistry()
