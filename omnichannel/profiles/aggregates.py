"""Profile aggregates recomputed from the event log, a fixed number of queries per chunk."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import datetime
from decimal import Decimal

from django.db.models import Count, F, Max, Min, Q, Sum
from oscar.core.loading import get_model

from .models import (
    BASKET_ACTIVITY_TYPES,
    CustomerProfile,
    Event,
    EventSource,
    EventType,
    Identity,
    IdentityKind,
)

CHUNK_SIZE = 2000
CENT = Decimal("0.01")

AGGREGATE_FIELDS = [
    "orders_count",
    "total_spent",
    "average_order_value",
    "first_order_at",
    "last_order_at",
    "last_seen_at",
    "last_basket_activity_at",
    "registered_at",
    "seen_on_web",
    "seen_on_app",
    "seen_offline",
    "devices_count",
    "categories_bought",
    "aggregates_updated_at",
]

Names = dict[int, tuple[str, str]]


def chunked(ids: Iterable[int], size: int = CHUNK_SIZE) -> Iterator[list[int]]:
    chunk: list[int] = []
    for profile_id in ids:
        chunk.append(profile_id)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def refresh_aggregates(
    profile_ids: Iterable[int], *, now: datetime, names: Names | None = None
) -> int:
    """Recompute the aggregate fields of these profiles from their events; return how many.

    ``names`` optionally maps profile ids to a (first, last) name seen in the events, used
    only where the profile has none yet.
    """
    updated = 0
    for chunk in chunked(sorted(set(profile_ids))):
        updated += _refresh_chunk(chunk, now=now, names=names or {})
    return updated


def _refresh_chunk(ids: list[int], *, now: datetime, names: Names) -> int:
    is_order = Q(type=EventType.ORDER_PLACED)
    stats = {
        row["profile_id"]: row
        for row in Event.objects.filter(profile_id__in=ids)
        .order_by()
        .values("profile_id")
        .annotate(
            orders=Count("id", filter=is_order),
            spent=Sum("amount", filter=is_order),
            first_order=Min("occurred_at", filter=is_order),
            last_order=Max("occurred_at", filter=is_order),
            last_seen=Max("occurred_at"),
            last_basket=Max("occurred_at", filter=Q(type__in=BASKET_ACTIVITY_TYPES)),
            registered=Min("occurred_at", filter=Q(type=EventType.USER_REGISTERED)),
            web=Count("id", filter=Q(source=EventSource.WEB)),
            app=Count("id", filter=Q(source=EventSource.APP)),
            offline=Count("id", filter=Q(source=EventSource.OFFLINE)),
        )
    }
    devices = dict(
        Identity.objects.filter(profile_id__in=ids, kind=IdentityKind.DEVICE)
        .order_by()
        .values("profile_id")
        .annotate(n=Count("id"))
        .values_list("profile_id", "n")
    )
    categories = _categories_bought(ids)

    profiles = list(
        CustomerProfile.objects.filter(pk__in=ids).annotate(user_joined=F("user__date_joined"))
    )
    for profile in profiles:
        row = stats.get(profile.pk, {})
        orders = row.get("orders", 0)
        spent = row.get("spent") or Decimal(0)
        profile.orders_count = orders
        profile.total_spent = spent
        profile.average_order_value = (spent / orders).quantize(CENT) if orders else Decimal(0)
        profile.first_order_at = row.get("first_order")
        profile.last_order_at = row.get("last_order")
        profile.last_seen_at = row.get("last_seen")
        profile.last_basket_activity_at = row.get("last_basket")
        profile.registered_at = row.get("registered") or profile.user_joined
        profile.seen_on_web = bool(row.get("web"))
        profile.seen_on_app = bool(row.get("app"))
        profile.seen_offline = bool(row.get("offline"))
        profile.devices_count = devices.get(profile.pk, 0)
        profile.categories_bought = sorted(categories.get(profile.pk, ()))
        profile.aggregates_updated_at = now
        first, last = names.get(profile.pk, ("", ""))
        profile.first_name = profile.first_name or first[:150]
        profile.last_name = profile.last_name or last[:150]
    CustomerProfile.objects.bulk_update(
        profiles, [*AGGREGATE_FIELDS, "first_name", "last_name"], batch_size=500
    )
    return len(profiles)


def _categories_bought(ids: list[int]) -> dict[int, set[int]]:
    """Category ids of every product in the profiles' orders (a child takes its parent's)."""
    Product = get_model("catalogue", "Product")
    ProductCategory = get_model("catalogue", "ProductCategory")
    bought: dict[int, set[int]] = defaultdict(set)
    orders = Event.objects.filter(profile_id__in=ids, type=EventType.ORDER_PLACED).values_list(
        "profile_id", "payload"
    )
    for profile_id, payload in orders:
        lines = payload.get("lines") if isinstance(payload, dict) else None
        for line in lines if isinstance(lines, list) else ():
            product_id = line.get("product_id") if isinstance(line, dict) else None
            if isinstance(product_id, int):
                bought[profile_id].add(product_id)
    product_ids = set().union(*bought.values()) if bought else set()
    if not product_ids:
        return {}
    parents = dict(
        Product._default_manager.filter(pk__in=product_ids, parent__isnull=False).values_list(
            "pk", "parent_id"
        )
    )
    categories_of: dict[int, set[int]] = defaultdict(set)
    for product_id, category_id in ProductCategory._default_manager.filter(
        product_id__in=product_ids | set(parents.values())
    ).values_list("product_id", "category_id"):
        categories_of[product_id].add(category_id)
    result: dict[int, set[int]] = {}
    for profile_id, products in bought.items():
        cats: set[int] = set()
        for product_id in products:
            cats |= categories_of.get(product_id, set())
            cats |= categories_of.get(parents.get(product_id, -1), set())
        result[profile_id] = cats
    return result
