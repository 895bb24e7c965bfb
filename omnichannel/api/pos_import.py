"""Reading a till's CSV export into offline orders (``omnichannel_import_offline_orders``).

One row per order line; the order's own columns repeat on each of its lines::

    order_number,store_id,store_name,occurred_at,currency,total,phone,loyalty_card,email,
    first_name,last_name,sku,upc,product_id,title,quantity,unit_price

Required columns: order_number, store_id, occurred_at, currency, total, quantity, unit_price,
and at least one of sku, upc, product_id (a line names its product by the first non-empty one
of these). The rest may be absent or empty. Each order goes through the same validation and
the same service as ``POST offline-orders/``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .models import ApiKey
from .serializers import OfflineOrderSerializer
from .services import OrderResult, record_offline_orders

REQUIRED = ("order_number", "store_id", "occurred_at", "currency", "total", "quantity")
REQUIRED += ("unit_price",)
PRODUCT_COLUMNS = ("sku", "upc", "product_id")
ORDER_COLUMNS = ("store_id", "store_name", "occurred_at", "currency", "total")
CUSTOMER_COLUMNS = ("phone", "loyalty_card", "email", "first_name", "last_name")
COLUMNS = (
    "order_number",
    *ORDER_COLUMNS,
    *CUSTOMER_COLUMNS,
    *PRODUCT_COLUMNS,
    "title",
    "quantity",
    "unit_price",
)


class BadFile(ValueError):
    """The file cannot be imported at all (missing columns, not CSV)."""


@dataclass
class PosOrder:
    """The rows of one order number, and what became of them."""

    number: str
    rows: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # (line number, row)
    data: dict[str, Any] | None = None  # validated, ready for the service
    errors: list[str] = field(default_factory=list)
    anonymous: bool = False
    result: OrderResult | None = None

    @property
    def row_numbers(self) -> list[int]:
        return [number for number, _ in self.rows]


def read_orders(lines: Iterable[str], *, delimiter: str = ",") -> list[PosOrder]:
    """Group the CSV's rows by order number (in order of first appearance)."""
    reader = csv.DictReader(lines, delimiter=delimiter)
    header = [name.strip() for name in reader.fieldnames or []]
    missing = [name for name in REQUIRED if name not in header]
    if missing:
        raise BadFile(f"missing columns: {', '.join(missing)} (found: {', '.join(header)})")
    if not any(name in header for name in PRODUCT_COLUMNS):
        raise BadFile("a column naming the product is needed: sku, upc or product_id")
    reader.fieldnames = header
    orders: dict[str, PosOrder] = {}
    try:
        for row in reader:
            clean = {k: (v or "").strip() for k, v in row.items() if isinstance(k, str)}
            number = clean.get("order_number", "")
            order = orders.setdefault(number, PosOrder(number=number))
            order.rows.append((reader.line_num, clean))
    except csv.Error as exc:
        raise BadFile(f"line {reader.line_num}: {exc}") from exc
    return list(orders.values())


def build(order: PosOrder) -> None:
    """Validate one order's rows with the API's serializer: sets ``data`` or ``errors``."""
    first_line, first = order.rows[0]
    if not order.number:
        order.errors.append("order_number is empty")
        return
    for line_number, row in order.rows[1:]:
        for name in (*ORDER_COLUMNS, *CUSTOMER_COLUMNS):
            if row.get(name, "") != first.get(name, ""):
                order.errors.append(
                    f"line {line_number}: {name} {row.get(name, '')!r} differs from "
                    f"{first.get(name, '')!r} on line {first_line}"
                )
    if order.errors:
        return
    customer = {name: first[name] for name in CUSTOMER_COLUMNS if first.get(name)}
    if not any(customer.get(name) for name in ("phone", "loyalty_card", "email")):
        order.anonymous = True
        return
    lines = []
    for _, row in order.rows:
        line: dict[str, Any] = {
            "quantity": row.get("quantity"),
            "unit_price": row.get("unit_price"),
        }
        for name in PRODUCT_COLUMNS:
            if row.get(name):
                line[name] = row[name]
                break
        if row.get("title"):
            line["title"] = row["title"]
        lines.append(line)
    data = {
        "number": order.number,
        "store": {"id": first.get("store_id", ""), "name": first.get("store_name", "")},
        "occurred_at": first.get("occurred_at"),
        "currency": first.get("currency"),
        "total": first.get("total"),
        "customer": customer,
        "lines": lines,
    }
    serializer = OfflineOrderSerializer(data=data)
    if serializer.is_valid():
        order.data = dict(serializer.validated_data)
    else:
        order.errors += describe(serializer.errors, order)


def describe(errors: Any, order: PosOrder, path: str = "") -> list[str]:
    """Flatten DRF's nested errors into "line 12: lines.quantity: ..." messages."""
    if isinstance(errors, dict):
        messages = []
        for key, value in errors.items():
            if path == "lines" and str(key).isdigit() and int(key) < len(order.rows):
                line_number = order.rows[int(key)][0]
                messages += [f"line {line_number}: {m}" for m in describe(value, order, "line")]
            else:
                name = str(key) if path in ("", "line") else f"{path}.{key}"
                messages += describe(value, order, name)
        return messages
    if isinstance(errors, list):
        return [m for item in errors for m in describe(item, order, path)]
    return [f"{path}: {errors}" if path else str(errors)]


def chunks(items: list[PosOrder], size: int) -> Iterator[list[PosOrder]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def import_orders(
    key: ApiKey,
    orders: list[PosOrder],
    *,
    now: datetime,
    allow_unknown_products: bool = False,
    dry_run: bool = False,
) -> None:
    """Store the valid orders (one transaction per call) and record each one's result."""
    valid = [order for order in orders if order.data is not None]
    for order in valid:
        order.data["allow_unknown_products"] = allow_unknown_products  # type: ignore[index]
    results = record_offline_orders(
        key,
        [order.data for order in valid],
        now=now,
        dry_run=dry_run,  # type: ignore[misc]
    )
    for order, result in zip(valid, results, strict=True):
        order.result = result
        if result.rejected:
            order.errors += describe(result.errors, order)
