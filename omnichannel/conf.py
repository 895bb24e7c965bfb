"""All of the app's settings, read lazily from ``settings.OMNICHANNEL`` with defaults.

Usage::

    from omnichannel.conf import app_settings
    app_settings.DEFAULT_PHONE_REGION

Values are read at access time and the cache is dropped on ``setting_changed``, so
``override_settings(OMNICHANNEL={...})`` works in tests. An unknown key in the host's
``OMNICHANNEL`` dict is reported by the system check ``omnichannel.E001``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

DEFAULTS: dict[str, Any] = {
    # Region used to parse phone numbers written without a +country prefix (ISO 3166 alpha-2).
    # None means such numbers are rejected rather than guessed.
    "DEFAULT_PHONE_REGION": None,
    # Name of the cookie that keys an anonymous visitor's profile.
    "VISITOR_COOKIE_NAME": "omnichannel_vid",
    "VISITOR_COOKIE_AGE": 60 * 60 * 24 * 365 * 2,
    # Events folded into profiles per database transaction by the fold task.
    "EVENT_BATCH_SIZE": 1000,
    # Batches the fold task works through before it yields the worker to other tasks.
    "EVENT_MAX_BATCHES_PER_RUN": 50,
    # How often beat runs the fold task (seconds); read by omnichannel_setup_schedules.
    "EVENT_FOLD_INTERVAL": 10,
    # Record product_viewed events (one row per product page view).
    "RECORD_PRODUCT_VIEWS": True,
}


class AppSettings:
    """Attribute access to the OMNICHANNEL settings dict, falling back to DEFAULTS."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    @property
    def user_settings(self) -> dict[str, Any]:
        return getattr(settings, "OMNICHANNEL", None) or {}

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"Unknown omnichannel setting: {name!r}")
        if name not in self._cache:
            self._cache[name] = self.user_settings.get(name, DEFAULTS[name])
        return self._cache[name]

    def unknown_keys(self) -> list[str]:
        """Keys in the host's OMNICHANNEL dict that this version does not know."""
        return sorted(set(self.user_settings) - set(DEFAULTS))

    def reload(self) -> None:
        self._cache.clear()


app_settings = AppSettings()


@receiver(setting_changed)
def _reload_app_settings(*, setting: str, **kwargs: Any) -> None:
    if setting == "OMNICHANNEL":
        app_settings.reload()
