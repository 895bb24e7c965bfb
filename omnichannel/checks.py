"""System checks for the host project's configuration."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Warning, register

from .conf import app_settings

MIDDLEWARE_PATH = "omnichannel.profiles.middleware.VisitorMiddleware"


@register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list:
    problems: list = []
    unknown = app_settings.unknown_keys()
    if unknown:
        problems.append(
            Error(
                f"Unknown OMNICHANNEL setting(s): {', '.join(unknown)}.",
                hint="See omnichannel/conf.py for the settings this version knows.",
                id="omnichannel.E001",
            )
        )
    region = app_settings.DEFAULT_PHONE_REGION
    if region is not None:
        import phonenumbers

        if region not in phonenumbers.SUPPORTED_REGIONS:
            problems.append(
                Error(
                    f"OMNICHANNEL['DEFAULT_PHONE_REGION'] = {region!r} is not a region "
                    "phonenumbers knows.",
                    hint="Use an ISO 3166-1 alpha-2 code such as 'GB' or 'US', or None.",
                    id="omnichannel.E002",
                )
            )
    problems.extend(_check_sqlite())
    problems.extend(_check_channels())
    from .analytics.checks import check_attribution_settings

    problems.extend(check_attribution_settings())
    if MIDDLEWARE_PATH not in getattr(settings, "MIDDLEWARE", []):
        problems.append(
            Warning(
                f"{MIDDLEWARE_PATH} is not in MIDDLEWARE: anonymous visitors get no profile "
                "and their baskets cannot be linked to them when they log in.",
                hint=f"Add '{MIDDLEWARE_PATH}' after SessionMiddleware.",
                id="omnichannel.W001",
            )
        )
    return problems


#: UPDATE ... FROM (3.33) and RETURNING ids from bulk inserts (3.35) are used by the fold.
MIN_SQLITE = (3, 35)


def _check_sqlite() -> list:
    from django.db import connections

    problems = []
    for alias in connections:
        connection = connections[alias]
        if connection.vendor != "sqlite":
            continue
        import sqlite3

        if sqlite3.sqlite_version_info < MIN_SQLITE:
            problems.append(
                Error(
                    f"SQLite {sqlite3.sqlite_version} is too old for omnichannel (database "
                    f"{alias!r}); it needs {'.'.join(map(str, MIN_SQLITE))} or later.",
                    hint="Use a Python built with a newer SQLite, or PostgreSQL.",
                    id="omnichannel.E003",
                )
            )
    return problems


def _check_channels() -> list:
    """Every configured channel must build; its links need our URLs."""
    from django.urls import NoReverseMatch, reverse

    from .channels.registry import get_channels
    from .exceptions import ConfigurationError

    try:
        channels = get_channels()
    except ConfigurationError as exc:
        return [
            Error(
                str(exc),
                hint="See docs/channels.md for the shape of OMNICHANNEL['CHANNELS'].",
                id="omnichannel.E004",
            )
        ]
    if not channels:
        return []
    try:
        reverse("omnichannel:unsubscribe", args=["x"])
    except NoReverseMatch:
        return [
            Warning(
                "Channels are configured but the omnichannel URLs are not included: links in "
                "messages (unsubscribe, preferences, click tracking) cannot be built.",
                hint='Add path("omnichannel/", include("omnichannel.urls")) to your urls.py.',
                id="omnichannel.W002",
            )
        ]
    return []
