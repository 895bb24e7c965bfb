"""Backfill the event log from a shop's existing data (for shops installing the app late)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from django.contrib.auth import get_user_model
from django.db.models import Exists, OuterRef
from oscar.core.loading import get_model

from .models import Event, EventType
from .recording import order_event, registration_event

Progress = Callable[[int], None]


def _pk_chunks(queryset, size: int) -> Iterator[list]:
    """Walk a queryset in primary-key order, ``size`` rows at a time (keyset pagination)."""
    last_pk = None
    while True:
        page = queryset.order_by("pk")
        if last_pk is not None:
            page = page.filter(pk__gt=last_pk)
        rows = list(page[:size])
        if not rows:
            return
        yield rows
        last_pk = rows[-1].pk


def backfill_registrations(*, chunk_size: int = 2000, progress: Progress | None = None) -> int:
    """Record a USER_REGISTERED event, at ``date_joined``, for every user who has none."""
    User = get_user_model()
    users = User._default_manager.filter(
        ~Exists(Event.objects.filter(user_id=OuterRef("pk"), type=EventType.USER_REGISTERED))
    )
    created = 0
    for chunk in _pk_chunks(users, chunk_size):
        events = [registration_event(user, occurred_at=user.date_joined) for user in chunk]
        Event.objects.bulk_create(events)
        created += len(events)
        if progress:
            progress(len(events))
    return created


def backfill_orders(*, chunk_size: int = 1000, progress: Progress | None = None) -> int:
    """Record an ORDER_PLACED event for every Oscar order that has none.

    Walks order ids in chunks and asks, per chunk, which of them already have an event (an
    indexed lookup), rather than one anti-join per page: PostgreSQL plans that as a hash anti
    join over the whole, growing event table, which made the backfill slow down with its size.
    """
    Order = get_model("order", "Order")
    orders = Order._default_manager.select_related(
        "user", "shipping_address", "billing_address"
    ).prefetch_related("lines")
    created = 0
    last_pk = None
    while True:
        page = Order._default_manager.order_by("pk")
        if last_pk is not None:
            page = page.filter(pk__gt=last_pk)
        ids = list(page.values_list("pk", flat=True)[:chunk_size])
        if not ids:
            return created
        last_pk = ids[-1]
        recorded = set(
            Event.objects.filter(order_id__in=ids, type=EventType.ORDER_PLACED).values_list(
                "order_id", flat=True
            )
        )
        missing = [pk for pk in ids if pk not in recorded]
        if missing:
            events = [order_event(order) for order in orders.filter(pk__in=missing).order_by("pk")]
            Event.objects.bulk_create(events)
            created += len(events)
        if progress:
            progress(len(missing))
