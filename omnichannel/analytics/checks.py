"""System checks of the ATTRIBUTION_* settings: a bad value is named at startup (``manage.py
check``, every ``runserver`` and ``migrate``), not first in a Celery worker's log."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.checks import CheckMessage, Error, Warning

from ..conf import app_settings

#: A window longer than this is almost certainly a unit mistake (milliseconds, not seconds)
#: and would make every order scan years of messages.
MAX_WINDOW = timedelta(days=90)

WINDOWS = ("ATTRIBUTION_CLICK_WINDOW", "ATTRIBUTION_OPEN_WINDOW", "ATTRIBUTION_DELIVERY_WINDOW")
HINT = "See docs/settings.md, the ATTRIBUTION_* settings."


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


def check_attribution_settings() -> list[CheckMessage]:
    """Errors for values the attribution job refuses; warnings for ones it would misuse."""
    from .attribution import MODELS

    problems: list[CheckMessage] = []
    model = app_settings.ATTRIBUTION_MODEL
    if model not in MODELS:
        problems.append(
            Error(
                f"OMNICHANNEL['ATTRIBUTION_MODEL'] = {model!r} is not one of {list(MODELS)}.",
                hint=HINT,
                id="omnichannel.E010",
            )
        )
    for name in WINDOWS:
        value = getattr(app_settings, name)
        if not _is_number(value) or value < 0:
            problems.append(
                Error(
                    f"OMNICHANNEL[{name!r}] = {value!r} must be a number of seconds >= 0.",
                    hint=HINT,
                    id="omnichannel.E011",
                )
            )
        elif value > MAX_WINDOW.total_seconds():
            problems.append(
                Error(
                    f"OMNICHANNEL[{name!r}] = {value!r} seconds is more than "
                    f"{MAX_WINDOW.days} days.",
                    hint="Windows are in seconds: 5 days is 432000.",
                    id="omnichannel.E012",
                )
            )
    for name in ("ATTRIBUTION_BATCH_SIZE", "ATTRIBUTION_INTERVAL"):
        value = getattr(app_settings, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(
                Error(
                    f"OMNICHANNEL[{name!r}] = {value!r} must be a whole number >= 1.",
                    hint=HINT,
                    id="omnichannel.E013",
                )
            )
    problems.extend(_check_delivery_channels())
    return problems


def _check_delivery_channels() -> list[CheckMessage]:
    names = app_settings.ATTRIBUTION_DELIVERY_CHANNELS
    if names is None:
        return []
    if isinstance(names, str | bytes) or not isinstance(names, list | tuple):
        return [
            Error(
                f"OMNICHANNEL['ATTRIBUTION_DELIVERY_CHANNELS'] = {names!r} must be None or a "
                "list of channel names.",
                hint=HINT,
                id="omnichannel.E014",
            )
        ]
    configured = app_settings.CHANNELS if isinstance(app_settings.CHANNELS, dict) else {}
    unknown = [name for name in names if not isinstance(name, str) or name not in configured]
    if not unknown:
        return []
    return [
        Warning(
            f"OMNICHANNEL['ATTRIBUTION_DELIVERY_CHANNELS'] names {unknown!r}, which are not "
            f"in OMNICHANNEL['CHANNELS'] ({sorted(configured)}).",
            hint="A name there must be a configured channel; its deliveries never win "
            "an order otherwise.",
            id="omnichannel.W010",
        )
    ]
