"""The app's periodic tasks in django-celery-beat's database scheduler.

``ensure_schedules`` creates or updates only the rows it owns (named ``omnichannel: ...``). It
runs after every ``migrate`` (a ``post_migrate`` receiver, unless ``SETUP_SCHEDULES_ON_MIGRATE``
is off) and from ``manage.py omnichannel_setup_schedules``; running it twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .analytics.tasks import ATTRIBUTE_ORDERS_TASK
from .conf import app_settings
from .exceptions import ConfigurationError
from .tasks import (
    CAMPAIGN_TICK_TASK,
    DELIVER_MESSAGES_TASK,
    FOLD_EVENTS_TASK,
    REFRESH_SEGMENT_SCORES_TASK,
)

#: Prefix of the PeriodicTask rows this app owns.
PREFIX = "omnichannel: "


def schedules() -> dict[str, tuple[str, int]]:
    """name of the PeriodicTask row -> (task name, interval in seconds)."""
    return {
        f"{PREFIX}fold events into profiles": (
            FOLD_EVENTS_TASK,
            int(app_settings.EVENT_FOLD_INTERVAL),
        ),
        f"{PREFIX}deliver queued messages": (
            DELIVER_MESSAGES_TASK,
            int(app_settings.DELIVERY_INTERVAL),
        ),
        f"{PREFIX}advance campaigns": (
            CAMPAIGN_TICK_TASK,
            int(app_settings.CAMPAIGN_TICK_INTERVAL),
        ),
        f"{PREFIX}refresh RFM and engagement scores": (
            REFRESH_SEGMENT_SCORES_TASK,
            int(app_settings.SEGMENT_SCORES_REFRESH_INTERVAL),
        ),
        f"{PREFIX}attribute orders to messages": (
            ATTRIBUTE_ORDERS_TASK,
            int(app_settings.ATTRIBUTION_INTERVAL),
        ),
    }


def ensure_schedules(*, using: str = "default", report: Callable[[str], Any] | None = None) -> None:
    """Create or update the app's periodic tasks (idempotent); other apps' rows are left alone."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    for name, (task, seconds) in schedules().items():
        if seconds < 1:
            raise ConfigurationError(f"{name}: interval must be at least 1 second, not {seconds}")
        # IntervalSchedule has no unique constraint: reuse the first match, if any.
        intervals = IntervalSchedule.objects.using(using)
        interval = intervals.filter(every=seconds, period=IntervalSchedule.SECONDS).first()
        if interval is None:
            interval = intervals.create(every=seconds, period=IntervalSchedule.SECONDS)
        _, created = PeriodicTask.objects.using(using).update_or_create(
            name=name,
            defaults={
                "task": task,
                "interval": interval,
                # beat refuses a task with two schedules (someone may have set a crontab)
                "crontab": None,
                "solar": None,
                "clocked": None,
                "enabled": True,
            },
        )
        if report is not None:
            verb = "created" if created else "updated"
            report(f"{verb}: {name} ({task}, every {seconds} s)")


def ensure_schedules_after_migrate(*, using: str = "default", **kwargs: Any) -> None:
    """post_migrate receiver: the schedules exist as soon as the database does."""
    from django.apps import apps

    if not app_settings.SETUP_SCHEDULES_ON_MIGRATE or not apps.is_installed("django_celery_beat"):
        return
    ensure_schedules(using=using)
