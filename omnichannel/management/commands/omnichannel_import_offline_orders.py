"""Import a till's CSV export of purchases as offline orders (see docs/api.md for the columns).

    python manage.py omnichannel_import_offline_orders sales.csv --key 3f9a0c1b2d4e --dry-run

Each order goes through the same validation and service as ``POST offline-orders/``, under the
store's API key: importing the same file twice, or an order the till also sent through the
API, stores it once.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from tqdm import tqdm

from omnichannel.api.models import ApiKey, Scope
from omnichannel.api.pos_import import COLUMNS, BadFile, build, chunks, import_orders, read_orders

CHUNK = 200  # orders per transaction


class Command(BaseCommand):
    help = (
        "Import offline orders from a till's CSV export (one row per order line). Rejected "
        "orders are listed with their line numbers and reasons; nothing of a rejected order "
        "is stored."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("csv", help="The CSV file (UTF-8, header row; see docs/api.md).")
        parser.add_argument(
            "--key",
            required=True,
            help="Prefix of the store's API key (with the 'orders' scope): orders are stored "
            "once per key and order number.",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Check everything, store nothing."
        )
        parser.add_argument(
            "--allow-unknown-products",
            action="store_true",
            help="Keep lines whose product is unknown (without a product) instead of "
            "rejecting their order.",
        )
        parser.add_argument("--delimiter", default=",", help="Column separator (default ,).")
        parser.add_argument(
            "--report",
            help="Write the rows of rejected orders to this CSV, with an 'error' column, to fix "
            "and import again.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        key = ApiKey.objects.active().filter(prefix=options["key"]).first()
        if key is None:
            raise CommandError(f"no active API key with prefix {options['key']!r}")
        if not key.has_scope(Scope.ORDERS):
            raise CommandError(f"the API key {key} lacks the 'orders' scope")
        path = Path(options["csv"])
        try:
            with path.open(encoding="utf-8-sig", newline="") as handle:
                orders = read_orders(handle, delimiter=options["delimiter"])
        except (OSError, UnicodeDecodeError, BadFile) as exc:
            raise CommandError(f"{path}: {exc}") from exc

        show = options["verbosity"] >= 1
        started = time.monotonic()
        now = timezone.now()
        with tqdm(total=len(orders), desc="Offline orders", unit="order", disable=not show) as bar:
            for chunk in chunks(orders, CHUNK):
                for order in chunk:
                    build(order)
                import_orders(
                    key,
                    chunk,
                    now=now,
                    allow_unknown_products=options["allow_unknown_products"],
                    dry_run=options["dry_run"],
                )
                bar.update(len(chunk))

        rejected = [order for order in orders if order.errors]
        anonymous = [order for order in orders if order.anonymous]
        results = [order.result for order in orders if order.result and not order.errors]
        duplicates = sum(result.duplicate for result in results)
        unknown = sum(len(result.unknown_lines) for result in results)
        for order in rejected:
            lines = ", ".join(str(n) for n in order.row_numbers)
            self.stderr.write(f"rejected order {order.number!r} (lines {lines}):")
            for error in order.errors:
                self.stderr.write(f"  {error}")
        if options["report"] and rejected:
            self._write_report(Path(options["report"]), rejected)
        verb = "would be stored" if options["dry_run"] else "stored"
        summary = (
            f"{len(orders)} orders in {path.name}: {len(results) - duplicates} {verb}, "
            f"{duplicates} already imported, {len(rejected)} rejected, {len(anonymous)} "
            f"skipped (no phone, loyalty card or email), {unknown} lines without a known "
            f"product; {time.monotonic() - started:.1f} s"
        )
        style = self.style.WARNING if rejected else self.style.SUCCESS
        self.stdout.write(
            style(summary + (" (dry run: nothing stored)" if options["dry_run"] else ""))
        )

    def _write_report(self, path: Path, rejected: list[Any]) -> None:
        with path.open("w", encoding="utf-8", newline="") as handle:
            extra = sorted({name for order in rejected for _, row in order.rows for name in row})
            columns = [c for c in COLUMNS if c in extra] + [c for c in extra if c not in COLUMNS]
            writer = csv.DictWriter(handle, fieldnames=["line", *columns, "error"])
            writer.writeheader()
            for order in rejected:
                for line_number, row in order.rows:
                    writer.writerow({"line": line_number, **row, "error": "; ".join(order.errors)})
        self.stdout.write(f"rejected rows written to {path}")
