"""Create or update the app's periodic tasks in django-celery-beat (only the rows it owns)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from ...conf import app_settings
from ...tasks import (
    CAMPAIGN_TICK_TASK,
    DELIVER_MESSAGES_TASK,
    FOLD_EVENTS_TASK,
    REFRESH_SEGMENT_SCORES_TASK,
)

#: name of the PeriodicTask row -> (task name, interval in seconds)
PREFIX = "omnichannel: "


def schedules() -> dict[str, tuple[str, int]]:
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
    }


class Command(BaseCommand):
    help = (
        "Create or update the periodic tasks of django-oscar-omnichannel in django-celery-beat's "
        "database scheduler. Rows of other apps are left alone."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        for name, (task, seconds) in schedules().items():
            if seconds < 1:
                raise CommandError(f"{name}: interval must be at least 1 second, not {seconds}")
            # IntervalSchedule has no unique constraint: reuse the first match, if any.
            interval = IntervalSchedule.objects.filter(
                every=seconds, period=IntervalSchedule.SECONDS
            ).first() or IntervalSchedule.objects.create(
                every=seconds, period=IntervalSchedule.SECONDS
            )
            _, created = PeriodicTask.objects.update_or_create(
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
            verb = "created" if created else "updated"
            self.stdout.write(f"{verb}: {name} ({task}, every {seconds} s)")
