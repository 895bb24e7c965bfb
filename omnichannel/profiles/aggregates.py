"""Profile aggregates recomputed from the event log: set-based SQL, a fixed number of queries.

The scalar aggregates are one ``UPDATE ... FROM (SELECT ... GROUP BY profile)`` per chunk of
profiles, so the work happens in the database in one pass over the events, and nothing is built
row by row in Python (an ORM ``bulk_update`` of 15 fields costs milliseconds per profile in CASE
expressions alone; a correlated subquery per field reads the events 14 times).
Purchased categories need the order lines in the event payloads: they are computed in Python
from one query and written with one DELETE and one bulk INSERT per chunk.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import datetime
from decimal import Decimal

import phonenumbers
import phonenumbers.timezone
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import (
    Avg,
    CharField,
    Count,
    DecimalField,
    Exists,
    Expression,
    F,
    Max,
    Min,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
)
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Coalesce, NullIf, Substr
from oscar.core.loading import get_model

from .models import (
    BASKET_ACTIVITY_TYPES,
    CustomerProfile,
    Event,
    EventSource,
    EventType,
    Identity,
    IdentityKind,
    PurchasedCategory,
)

CHUNK_SIZE = 2000
ZERO = Value(Decimal("0.00"), output_field=DecimalField(max_digits=14, decimal_places=2))


def chunked(ids: Iterable[int], size: int = CHUNK_SIZE) -> Iterator[list[int]]:
    chunk: list[int] = []
    for profile_id in ids:
        chunk.append(profile_id)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def refresh_aggregates(profile_ids: Iterable[int], *, now: datetime) -> int:
    """Recompute the aggregates of these profiles from their events; return how many."""
    updated = 0
    for chunk in chunked(sorted(set(profile_ids))):
        updated += _refresh_scalars(chunk, now=now)
        _refresh_purchased_categories(chunk)
    return updated


def _event_totals(ids: list[int]) -> QuerySet:
    """One row per profile with events: the per-profile aggregates, in one GROUP BY."""
    is_order = Q(type=EventType.ORDER_PLACED)
    return (
        Event.objects.filter(profile_id__in=ids)
        .order_by()
        .values("profile_id")
        .annotate(
            orders=Count("pk", filter=is_order),
            spent=Sum("amount", filter=is_order),
            average=Avg(Coalesce("amount", ZERO), filter=is_order),
            first_order=Min("occurred_at", filter=is_order),
            last_order=Max("occurred_at", filter=is_order),
            last_seen=Max("occurred_at"),
            last_basket=Max("occurred_at", filter=Q(type__in=BASKET_ACTIVITY_TYPES)),
            registered=Min("occurred_at", filter=Q(type=EventType.USER_REGISTERED)),
            web=Count("pk", filter=Q(source=EventSource.WEB)),
            app=Count("pk", filter=Q(source=EventSource.APP)),
            offline=Count("pk", filter=Q(source=EventSource.OFFLINE)),
        )
    )


def _refresh_scalars(ids: list[int], *, now: datetime) -> int:
    # 1. Everything that comes from the events: one UPDATE ... FROM (grouped SELECT), so the
    #    events of the chunk are read once, in one pass, whatever the number of fields.
    totals_sql, totals_params = _event_totals(ids).query.sql_with_params()
    quote = connection.ops.quote_name
    table = quote(CustomerProfile._meta.db_table)
    assignments = {
        "orders_count": "t.orders",
        "total_spent": "COALESCE(t.spent, 0)",
        "average_order_value": "COALESCE(t.average, 0)",
        "first_order_at": "t.first_order",
        "last_order_at": "t.last_order",
        "last_seen_at": "t.last_seen",
        "last_basket_activity_at": "t.last_basket",
        "registered_at": "t.registered",
        "seen_on_web": "t.web > 0",
        "seen_on_app": "t.app > 0",
        "seen_offline": "t.offline > 0",
        "aggregates_updated_at": "%s",
    }
    columns = ", ".join(f"{quote(field)} = {value}" for field, value in assignments.items())
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET {columns} FROM ({totals_sql}) AS t "  # noqa: S608
            f"WHERE {table}.{quote(CustomerProfile._meta.pk.column)} = t.{quote('profile_id')}",
            [now, *totals_params],
        )
    # 2. Profiles left without events (all deleted) go back to the defaults.
    profiles = CustomerProfile.objects.filter(pk__in=ids)
    defaults = {
        field: CustomerProfile._meta.get_field(field).get_default() for field in assignments
    }
    profiles.exclude(Exists(Event.objects.filter(profile=OuterRef("pk")))).update(
        **{**defaults, "aggregates_updated_at": now}
    )
    # 3. What does not come from events: devices, the account's join date, blank names.
    User = get_user_model()
    updated = profiles.update(
        devices_count=Coalesce(
            _scalar(
                Identity.objects.filter(profile=OuterRef("pk"), kind=IdentityKind.DEVICE),
                Count("pk"),
            ),
            0,
        ),
        registered_at=Coalesce(
            F("registered_at"),
            Subquery(
                User._default_manager.filter(pk=OuterRef("user_id")).values("date_joined")[:1]
            ),
        ),
    )
    for key in ("first_name", "last_name"):
        profiles.filter(**{key: ""}).update(**{key: _name_from_events(key)})
    _fill_time_zones_from_phones(profiles)
    return updated


def _fill_time_zones_from_phones(profiles: QuerySet) -> None:
    """Give people without a time zone the one their phone number belongs to, when unique.

    Quiet hours and best-hour sends are in the person's local time; a +49 number says
    Europe/Berlin. Numbers of countries with several zones (+1 mobile, +7, +61) are left
    alone rather than guessed. Only profiles with an empty ``time_zone`` are read, so each is
    looked at until it has one, and a zone set by staff or the API is never overwritten.
    """
    rows = Identity.objects.filter(
        profile__in=profiles.filter(time_zone=""), kind=IdentityKind.PHONE
    ).values_list("profile_id", "value")
    zones: dict[str, list[int]] = defaultdict(list)
    for profile_id, phone in rows:
        zone = time_zone_for_phone(phone)
        if zone:
            zones[zone].append(profile_id)
    for zone, ids in zones.items():
        CustomerProfile.objects.filter(pk__in=ids, time_zone="").update(time_zone=zone)


def time_zone_for_phone(phone: str) -> str:
    """The IANA time zone of an E.164 phone number when it has exactly one, else ""."""
    try:
        number = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return ""
    zones = phonenumbers.timezone.time_zones_for_number(number)
    if len(zones) != 1 or zones[0] == phonenumbers.timezone.UNKNOWN_TIMEZONE:
        return ""
    return zones[0]


def _scalar(queryset: QuerySet, aggregate: Expression) -> Subquery:
    """One aggregate over a correlated queryset, as a scalar subquery."""
    return Subquery(
        queryset.order_by().values("profile_id").annotate(result=aggregate).values("result")[:1]
    )


def _name_from_events(key: str) -> Expression:
    """The latest non-blank ``payload[key]`` of the profile's events, or ""."""
    latest = Subquery(
        Event.objects.filter(profile=OuterRef("pk"))
        .annotate(
            name=NullIf(KeyTextTransform(key, "payload"), Value(""), output_field=CharField())
        )
        .filter(name__isnull=False)
        .order_by("-occurred_at", "-pk")
        .values("name")[:1],
        output_field=CharField(),
    )
    return Coalesce(Substr(latest, 1, 150), Value(""))


def _refresh_purchased_categories(ids: list[int]) -> None:
    """Rewrite the PurchasedCategory rows of these profiles from their order events."""
    Product = get_model("catalogue", "Product")
    ProductCategory = get_model("catalogue", "ProductCategory")
    orders: list[tuple[int, datetime, set[int]]] = []
    for profile_id, occurred_at, payload in Event.objects.filter(
        profile_id__in=ids, type=EventType.ORDER_PLACED
    ).values_list("profile_id", "occurred_at", "payload"):
        lines = payload.get("lines") if isinstance(payload, dict) else None
        products = {
            line["product_id"]
            for line in (lines if isinstance(lines, list) else ())
            if isinstance(line, dict) and isinstance(line.get("product_id"), int)
        }
        if products:
            orders.append((profile_id, occurred_at, products))

    PurchasedCategory.objects.filter(profile_id__in=ids).delete()
    product_ids = set().union(*(products for _, _, products in orders))
    if not product_ids:
        return
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

    # (profile, category) -> [orders that contain it, last of them]
    rows: dict[tuple[int, int], list] = {}
    for profile_id, occurred_at, products in orders:
        categories: set[int] = set()
        for product_id in products:
            categories |= categories_of.get(product_id, set())
            categories |= categories_of.get(parents.get(product_id, -1), set())
        for category_id in categories:
            entry = rows.setdefault((profile_id, category_id), [0, occurred_at])
            entry[0] += 1
            entry[1] = max(entry[1], occurred_at)
    PurchasedCategory.objects.bulk_create(
        [
            PurchasedCategory(
                profile_id=profile_id,
                category_id=category_id,
                orders_count=count,
                last_bought_at=last,
            )
            for (profile_id, category_id), (count, last) in rows.items()
        ],
        batch_size=1000,
    )
