"""The configured channels, built once from ``OMNICHANNEL["CHANNELS"]`` (and rebuilt in tests)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from ..conf import app_settings
from ..exceptions import ConfigurationError
from ..profiles.models import Channel
from .base import BaseChannel

#: Channels built so far, by name (each is built on first use; dropped on setting_changed).
_built: dict[str, BaseChannel] = {}


def build_channel(name: str, config: Any) -> BaseChannel:
    """One channel from its settings entry; ConfigurationError names what is wrong."""
    where = f"OMNICHANNEL['CHANNELS'][{name!r}]"
    if not isinstance(config, dict) or "BACKEND" not in config:
        raise ConfigurationError(f"{where} must be a dict with a 'BACKEND' dotted path")
    unknown = set(config) - {"BACKEND", "COST", "OPTIONS"}
    if unknown:
        raise ConfigurationError(f"{where} has unknown keys {sorted(unknown)}")
    try:
        backend = import_string(config["BACKEND"])
    except ImportError as exc:
        raise ConfigurationError(f"{where}: cannot import {config['BACKEND']!r}: {exc}") from exc
    if not (isinstance(backend, type) and issubclass(backend, BaseChannel)):
        raise ConfigurationError(f"{where}: {config['BACKEND']!r} is not a BaseChannel subclass")
    if getattr(backend, "consent_channel", None) not in Channel.values:
        raise ConfigurationError(
            f"{where}: {backend.__name__}.consent_channel must be one of {Channel.values}"
        )
    try:
        cost = Decimal(str(config.get("COST", "0")))
    except InvalidOperation as exc:
        raise ConfigurationError(f"{where}['COST'] is not a number: {config['COST']!r}") from exc
    if cost < 0:
        raise ConfigurationError(f"{where}['COST'] must not be negative")
    options = config.get("OPTIONS", {})
    if not isinstance(options, dict):
        raise ConfigurationError(f"{where}['OPTIONS'] must be a dict")
    return backend(name, cost=cost, currency=app_settings.COST_CURRENCY, options=options)


def _configured() -> dict[str, Any]:
    configured = app_settings.CHANNELS
    if not isinstance(configured, dict):
        raise ConfigurationError("OMNICHANNEL['CHANNELS'] must be a dict of name -> config")
    return configured


def get_channel(name: str) -> BaseChannel:
    """The channel configured under ``name``; ConfigurationError if there is none."""
    if name not in _built:
        configured = _configured()
        if name not in configured:
            raise ConfigurationError(
                f"no channel {name!r} in OMNICHANNEL['CHANNELS'] (configured: {sorted(configured)})"
            )
        _built[name] = build_channel(name, configured[name])
    return _built[name]


def get_channels() -> dict[str, BaseChannel]:
    """All configured channels by name, in settings order."""
    return {name: get_channel(name) for name in _configured()}


def channel_choices() -> list[tuple[str, str]]:
    return [(name, channel.label or name) for name, channel in get_channels().items()]


@receiver(setting_changed)
def _drop_channels(*, setting: str, **kwargs: Any) -> None:
    if setting == "OMNICHANNEL":
        _built.clear()
