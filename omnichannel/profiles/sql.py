"""Set-based writes the ORM has no cheap form for (portable to SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

from django.db import connection, models

CHUNK = 500


def update_ids_from_pairs(
    model: type[models.Model],
    column: str,
    pairs: list[tuple[int, int]],
    *,
    also: dict[str, Any] | None = None,
) -> int:
    """Set ``column`` of row ``pk`` to ``value`` for each (pk, value) pair of integers.

    One ``UPDATE ... FROM (VALUES ...)`` per 500 pairs, instead of the CASE expression per row
    that ``bulk_update`` builds. ``also`` sets the same value on every row (e.g. a timestamp).
    SQLite has UPDATE ... FROM since 3.33; both name the VALUES columns column1, column2.
    """
    quote = connection.ops.quote_name
    table = quote(model._meta.db_table)
    pk_column = quote(model._meta.pk.column)
    target = quote(model._meta.get_field(column).column)
    extra_columns = [quote(model._meta.get_field(name).column) for name in (also or {})]
    extra_values = list((also or {}).values())
    assignments = ", ".join([f"{target} = v.column2", *(f"{name} = %s" for name in extra_columns)])
    updated = 0
    with connection.cursor() as cursor:
        for start in range(0, len(pairs), CHUNK):
            chunk = pairs[start : start + CHUNK]
            for pk, value in chunk:
                if not isinstance(pk, int) or not isinstance(value, int):
                    raise TypeError("update_ids_from_pairs takes pairs of integers")
            rows = ", ".join(["(%s, %s)"] * len(chunk))
            sql = (
                f"UPDATE {table} SET {assignments} FROM (VALUES {rows}) AS v "  # noqa: S608
                f"WHERE {table}.{pk_column} = v.column1"
            )
            params = [*extra_values, *(item for pair in chunk for item in pair)]
            cursor.execute(sql, params)
            updated += cursor.rowcount
    return updated
