"""Create or update the app's periodic tasks in django-celery-beat (only the rows it owns)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from ...exceptions import ConfigurationError
from ...schedules import ensure_schedules


class Command(BaseCommand):
    help = (
        "Create or update the periodic tasks of django-oscar-omnichannel in django-celery-beat's "
        "database scheduler. Rows of other apps are left alone. migrate does this too."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            ensure_schedules(report=self.stdout.write)
        except ConfigurationError as exc:
            raise CommandError(str(exc)) from exc
