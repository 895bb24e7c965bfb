"""Build or rebuild customer profiles from the event log (and, with --backfill, from Oscar)."""

from __future__ import annotations

import time
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Exists, OuterRef
from django.utils import timezone
from oscar.core.loading import get_model
from tqdm import tqdm

from ...conf import app_settings
from ...profiles.aggregates import CHUNK_SIZE, chunked
from ...profiles.backfill import backfill_orders, backfill_registrations
from ...profiles.identity import fold_event_batch, refresh_aggregates_locked
from ...profiles.models import CustomerProfile, Event, EventType
from ...segments.purchases import refresh_purchased_products


class Command(BaseCommand):
    help = (
        "Fold every pending event into profiles, then recompute the aggregates of all profiles. "
        "With --backfill, first record events for existing Oscar users and orders that have none "
        "(run this once after installing the app into a shop with history)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--backfill",
            action="store_true",
            help="Record events for existing users and orders that have none first.",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=None,
            help="Events folded per transaction (default: OMNICHANNEL['EVENT_BATCH_SIZE']).",
        )
        parser.add_argument(
            "--skip-aggregates",
            action="store_true",
            help="Only fold pending events; do not recompute every profile's aggregates.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        batch_size = options["batch_size"]
        if batch_size is None:
            batch_size = app_settings.EVENT_BATCH_SIZE
        if batch_size < 1:
            raise CommandError(f"--batch-size must be at least 1, not {batch_size}")
        show = options["verbosity"] >= 1
        started = time.monotonic()

        if options["backfill"]:
            self._backfill(show)

        pending = Event.objects.filter(processed_at__isnull=True).count()
        with tqdm(total=pending, desc="Folding events", unit="event", disable=not show) as bar:
            folded = 0
            while True:
                # Per-batch refreshes would recompute a profile once per batch it appears in;
                # the full pass below does each profile once.
                count = fold_event_batch(
                    now=timezone.now(),
                    batch_size=batch_size,
                    refresh=options["skip_aggregates"],
                )
                if count == -1:
                    time.sleep(0.5)  # another worker is folding; wait for the lock
                    continue
                if count == 0:
                    break
                folded += count
                bar.update(count)

        refreshed = 0
        if not options["skip_aggregates"]:
            ids = CustomerProfile.objects.order_by("pk").values_list("pk", flat=True)
            total = ids.count()
            with tqdm(total=total, desc="Aggregates", unit="profile", disable=not show) as bar:
                for chunk in chunked(ids.iterator(chunk_size=CHUNK_SIZE)):
                    refreshed += refresh_aggregates_locked(chunk, now=timezone.now())
                    bar.update(len(chunk))
            # The products each person bought (segment conditions), in one set-based pass.
            refresh_purchased_products()

        elapsed = time.monotonic() - started
        profiles = CustomerProfile.objects.count()
        rate = profiles / elapsed if elapsed else 0.0
        self.stdout.write(
            self.style.SUCCESS(
                f"Folded {folded} events; refreshed {refreshed} profiles; {profiles} profiles "
                f"in all; {elapsed:.1f} s ({rate:.0f} profiles/s)."
            )
        )

    def _backfill(self, show: bool) -> None:
        User = get_user_model()
        Order = get_model("order", "Order")
        users = User._default_manager.filter(
            ~Exists(Event.objects.filter(user_id=OuterRef("pk"), type=EventType.USER_REGISTERED))
        ).count()
        with tqdm(total=users, desc="Backfilling users", unit="user", disable=not show) as bar:
            backfill_registrations(progress=bar.update)
        orders = Order._default_manager.filter(
            ~Exists(Event.objects.filter(order_id=OuterRef("pk"), type=EventType.ORDER_PLACED))
        ).count()
        with tqdm(total=orders, desc="Backfilling orders", unit="order", disable=not show) as bar:
            backfill_orders(progress=bar.update)
