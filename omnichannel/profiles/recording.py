"""Writing events: one INSERT, in a savepoint, never a call to the Celery broker."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from .models import Event, EventSource, EventType

logger = logging.getLogger("omnichannel.profiles")


def record_event(
    type: str,
    *,
    source: str = EventSource.WEB,
    user: Any = None,
    user_id: int | None = None,
    visitor_key: str = "",
    identities: dict[str, str] | None = None,
    basket_id: int | None = None,
    order_id: int | None = None,
    product_id: int | None = None,
    amount: Decimal | None = None,
    currency: str = "",
    payload: dict[str, Any] | None = None,
    occurred_at: datetime | None = None,
) -> Event:
    """Append one event to the log; the fold task attaches it to a profile later.

    Inside a transaction the INSERT runs in a savepoint, so that a failure here never poisons
    the caller's transaction (on PostgreSQL a failed statement aborts the whole transaction).
    """
    if user is not None and getattr(user, "is_authenticated", False):
        user_id = user.pk
    now = timezone.now()
    event = Event(
        type=type,
        source=source,
        user_id=user_id,
        visitor_key=visitor_key,
        identities=identities or {},
        basket_id=basket_id,
        order_id=order_id,
        product_id=product_id,
        amount=amount,
        currency=currency,
        payload=payload or {},
        occurred_at=occurred_at or now,
        recorded_at=now,
    )
    return save_event(event)


def order_event(order: Any, *, source: str = EventSource.WEB, visitor_key: str = "") -> Event:
    """An unsaved ORDER_PLACED event describing an Oscar order (lines, totals, contacts)."""
    identities: dict[str, str] = {}
    email = order.email  # the user's email, or the guest email
    if email:
        identities["email"] = email
    payload: dict[str, Any] = {"number": order.number}
    shipping = order.shipping_address
    address = shipping or order.billing_address
    if shipping is not None and shipping.phone_number:
        identities["phone"] = str(shipping.phone_number)
    if address is not None:
        payload["first_name"] = address.first_name
        payload["last_name"] = address.last_name
    payload["lines"] = [
        {
            "product_id": line.product_id,
            "sku": line.partner_sku,
            "upc": line.upc or "",
            "title": line.title,
            "quantity": line.quantity,
            "price": str(line.line_price_incl_tax),
        }
        for line in order.lines.all()
    ]
    return Event(
        type=EventType.ORDER_PLACED,
        source=source,
        user_id=order.user_id,
        visitor_key=visitor_key,
        identities=identities,
        basket_id=order.basket_id,
        order_id=order.pk,
        amount=order.total_incl_tax,
        currency=order.currency,
        payload=payload,
        occurred_at=order.date_placed,
        recorded_at=timezone.now(),
    )


def registration_event(
    user: Any, *, visitor_key: str = "", occurred_at: datetime | None = None
) -> Event:
    """An unsaved USER_REGISTERED event for a Django user."""
    identities = {"email": user.email} if getattr(user, "email", "") else {}
    return Event(
        type=EventType.USER_REGISTERED,
        source=EventSource.WEB,
        user_id=user.pk,
        visitor_key=visitor_key,
        identities=identities,
        payload={
            "first_name": getattr(user, "first_name", ""),
            "last_name": getattr(user, "last_name", ""),
        },
        occurred_at=occurred_at or timezone.now(),
        recorded_at=timezone.now(),
    )


def savepoint_if_in_transaction() -> AbstractContextManager:
    """A savepoint inside a transaction; nothing in autocommit.

    Inside a transaction (Oscar's atomic blocks, ATOMIC_REQUESTS) a failed statement of ours
    would abort the caller's whole transaction on PostgreSQL; the savepoint confines it. In
    autocommit a failed statement poisons nothing, and BEGIN/SAVEPOINT/RELEASE/COMMIT around
    one INSERT would only cost round trips on the checkout path.
    """
    return transaction.atomic() if connection.in_atomic_block else nullcontext()


def save_event(event: Event) -> Event:
    """Insert an event built by one of the helpers above (in a savepoint when needed)."""
    with savepoint_if_in_transaction():
        event.save(force_insert=True)
    return event
