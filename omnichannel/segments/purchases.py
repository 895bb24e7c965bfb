"""Purchased products, derived from the order lines in ORDER_PLACED event payloads.

``recording.order_event`` (and the offline-order API) store an order's lines as
``payload["lines"] = [{"product_id": 12, ...}, ...]``. Neither database can index that JSON by
product portably, so one set-based ``INSERT ... SELECT`` over ``jsonb_array_elements`` (PostgreSQL)
or ``json_each`` (SQLite) writes one ``PurchasedProduct`` row per person and product; the rows
are rewritten per profile, like ``PurchasedCategory``.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import connection, transaction
from oscar.core.loading import get_model

from ..profiles.aggregates import chunked
from ..profiles.models import Event, EventType
from .models import PurchasedProduct

# The product id of one line when it is a plain integer; anything else (a missing key, a
# string, a float, a line that is not an object) yields NULL and joins no product.
_LINES_SQL = {
    "postgresql": """
        FROM {event} e
        CROSS JOIN LATERAL jsonb_array_elements(
            CASE WHEN jsonb_typeof(e.{payload} -> 'lines') = 'array'
                 THEN e.{payload} -> 'lines' ELSE '[]'::jsonb END
        ) AS line
        JOIN {product} p ON p.{product_pk} = (
            CASE WHEN jsonb_typeof(line -> 'product_id') = 'number'
                      AND (line ->> 'product_id') ~ '^[0-9]{{1,18}}$'
                 THEN (line ->> 'product_id')::bigint END
        )
    """,
    "sqlite": """
        FROM {event} e
        JOIN json_each(
            CASE WHEN json_type(e.{payload}, '$.lines') = 'array'
                 THEN e.{payload} ELSE '{{"lines": []}}' END, '$.lines'
        ) AS line
        JOIN {product} p ON p.{product_pk} = (
            CASE WHEN line.type = 'object' THEN
                CASE WHEN json_type(line.value, '$.product_id') = 'integer'
                     THEN json_extract(line.value, '$.product_id') END
            END
        )
    """,
}


def _insert_sql(where_ids: str) -> str:
    vendor = connection.vendor
    if vendor not in _LINES_SQL:
        raise NotImplementedError(f"purchased products need PostgreSQL or SQLite, not {vendor}")
    quote = connection.ops.quote_name
    Product = get_model("catalogue", "Product")
    names = {
        "event": quote(Event._meta.db_table),
        "payload": quote(Event._meta.get_field("payload").column),
        "product": quote(Product._meta.db_table),
        "product_pk": quote(Product._meta.pk.column),
    }
    table = quote(PurchasedProduct._meta.db_table)
    columns = ", ".join(
        quote(PurchasedProduct._meta.get_field(name).column)
        for name in ("profile", "product", "orders_count", "last_bought_at")
    )
    profile = quote(Event._meta.get_field("profile").column)
    return (
        # Identifiers come from the models; every value is a query parameter.
        f"INSERT INTO {table} ({columns}) "
        f"SELECT e.{profile}, p.{names['product_pk']}, COUNT(DISTINCT e.{quote('id')}), "
        f"MAX(e.{quote('occurred_at')}) "
        + _LINES_SQL[vendor].format(**names)
        + f" WHERE e.{quote('type')} = %s AND e.{profile} IS NOT NULL {where_ids} "
        f"GROUP BY e.{profile}, p.{names['product_pk']}"
    )


def refresh_purchased_products(profile_ids: Iterable[int] | None = None) -> int:
    """Rewrite the PurchasedProduct rows of these profiles (all profiles when None).

    Two statements per chunk of 1000 profiles (one DELETE, one INSERT ... SELECT); returns
    the number of rows written.
    """
    written = 0
    with transaction.atomic(), connection.cursor() as cursor:
        if profile_ids is None:
            PurchasedProduct.objects.all().delete()
            cursor.execute(_insert_sql(""), [EventType.ORDER_PLACED.value])
            return max(cursor.rowcount, 0)
        profile = connection.ops.quote_name(Event._meta.get_field("profile").column)
        for chunk in chunked(sorted(set(profile_ids)), 1000):
            PurchasedProduct.objects.filter(profile_id__in=chunk).delete()
            marks = ", ".join(["%s"] * len(chunk))
            cursor.execute(
                _insert_sql(f"AND e.{profile} IN ({marks})"),
                [EventType.ORDER_PLACED.value, *chunk],
            )
            written += max(cursor.rowcount, 0)
    return written
