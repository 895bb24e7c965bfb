"""Attribute orders to messages now: the periodic job's work, or a backfill / rebuild."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from datetime import time as day_start
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from ...analytics.attribution import attribute_orders, rebuild_attribution
from ...analytics.tasks import attribution_lock
from ...conf import app_settings


def parse_since(value: str) -> datetime:
    """An ISO date (midnight UTC) or date-time (UTC unless it says otherwise)."""
    try:
        moment = parse_datetime(value)
        if moment is None:
            day = parse_date(value)
            if day is None:
                raise ValueError("not an ISO date or date-time")
            moment = datetime.combine(day, day_start())
    except ValueError as exc:
        raise CommandError(
            f"--since {value!r}: {exc} (use e.g. 2026-03-01 or 2026-03-01T09:00+01:00)"
        ) from exc
    if timezone.is_naive(moment):
        moment = moment.replace(tzinfo=UTC)
    return moment


class Command(BaseCommand):
    help = (
        "Attribute orders to the messages that earned them, as the periodic task does: new "
        "orders, then orders a late click or a profile merge may have changed. With --rebuild, "
        "attribute every order again from scratch with the current settings (after changing "
        "the windows or the model). --since limits either to orders placed since a date."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--since",
            help="Only orders placed since this ISO date or date-time (UTC unless given).",
        )
        parser.add_argument(
            "--rebuild",
            action="store_true",
            help="Drop the orders' conversions and attribute them again, batch by batch.",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=None,
            help="Orders per statement (default: OMNICHANNEL['ATTRIBUTION_BATCH_SIZE']).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        since = parse_since(options["since"]) if options["since"] else None
        batch_size = options["batch_size"]
        if batch_size is None:
            batch_size = app_settings.ATTRIBUTION_BATCH_SIZE
        if batch_size < 1:
            raise CommandError(f"--batch-size must be at least 1, not {batch_size}")
        started = time.monotonic()
        run = rebuild_attribution if options["rebuild"] else attribute_orders
        with attribution_lock() as acquired:
            if not acquired:
                raise CommandError(
                    "Another attribution run (the periodic task or this command) is in "
                    "progress; run this again when it has finished."
                )
            result = run(now=timezone.now(), since=since, batch_size=batch_size)
        self.stdout.write(
            f"{result.attributed} orders attributed, {result.rechecked} re-checked "
            f"({result.changed} changed) in {result.batches} batches, "
            f"{time.monotonic() - started:.1f} s"
        )
        if result.failed_batches:
            self.stderr.write(
                f"{result.failed_batches} batches met a concurrent profile merge; run again."
            )
