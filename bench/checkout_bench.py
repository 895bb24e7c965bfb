"""Checkout-path timings of the demo shop, with or without omnichannel (one variant per process).

Run by bench/run.py, which sets DATABASE_URL and OMNICHANNEL_DISABLED; usable by hand too::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/omnichannel_bench_x \\
        python bench/checkout_bench.py prepare
    echo '{"cmd": "adds", "n": 20}' | DATABASE_URL=... OMNICHANNEL_DISABLED=1 \\
        python bench/checkout_bench.py serve

``prepare`` migrates the (empty) database and seeds a catalogue. ``serve`` warms up, then
reads commands (one JSON object a line) from run.py and answers each with timings: it drives
Oscar through Django's test client like tests/shop.py (add to basket, guest checkout,
shipping address, shipping method, place order). ``profile`` runs that loop under cProfile.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import setup_django

PRODUCTS = 12  # enough that baskets hold different products
CATEGORIES = ["Kitchen > Fridges", "Kitchen > Kettles", "Garden > Tools", "Books"]
STEPS = ["add", "guest", "address", "method", "place"]


def prepare() -> None:
    from django.core.management import call_command
    from oscar.apps.catalogue.categories import create_from_breadcrumbs
    from oscar.core.loading import get_model
    from oscar.test import factories

    call_command("migrate", verbosity=0, interactive=False)
    Country = get_model("address", "Country")
    ProductCategory = get_model("catalogue", "ProductCategory")
    Country.objects.update_or_create(
        iso_3166_1_a2="GB",
        defaults={
            "name": "United Kingdom",
            "printable_name": "United Kingdom",
            "is_shipping_country": True,
        },
    )
    categories = [create_from_breadcrumbs(path) for path in CATEGORIES]
    for i in range(PRODUCTS):
        product = factories.create_product(
            title=f"Bench product {i}",
            price=Decimal(f"{5 + 7 * i}.99"),
            num_in_stock=10_000_000,
            partner_name="Bench partner",
            partner_sku=f"BENCH-{i:03d}",
            upc=f"50000000{i:04d}",
        )
        ProductCategory.objects.create(product=product, category=categories[i % len(categories)])


class Shop:
    """The checkout flow of tests/shop.py, timed request by request."""

    def __init__(self) -> None:
        from django.test import Client
        from django.urls import reverse
        from oscar.core.loading import get_model

        self.Client = Client
        Product = get_model("catalogue", "Product")
        self.products = list(Product.objects.order_by("pk"))
        assert self.products, "no products: run `checkout_bench.py prepare` first"
        self.add_urls = [reverse("basket:add", kwargs={"pk": p.pk}) for p in self.products]
        self.urls = {
            name: reverse(f"checkout:{name}")
            for name in ("index", "shipping-address", "shipping-method", "preview", "thank-you")
        }
        self.counter = 0

    def _add(self, client, n: int):
        response = client.post(self.add_urls[n % len(self.add_urls)], {"quantity": 1 + n % 2})
        assert response.status_code == 302, response.status_code
        return response

    def add_to_basket(self, visits: int) -> list[float]:
        """``visits`` new visitors each add two products: the first add creates the basket."""
        timings = []
        for _ in range(visits):
            client = self.Client()
            for _ in range(2):
                self.counter += 1
                started = time.perf_counter()
                self._add(client, self.counter)
                timings.append(time.perf_counter() - started)
        return timings

    def checkout(self, after_step=None) -> tuple[dict[str, float], int]:
        """One new guest goes through the whole checkout; return step timings and requests.

        ``after_step(name)`` is called after each step, outside the timings.
        """
        urls = self.urls
        client = self.Client()
        self.counter += 1
        n = self.counter
        steps: dict[str, float] = {}
        requests = 0

        def step(name: str, request):
            nonlocal requests
            started = time.perf_counter()
            response = request()
            steps[name] = time.perf_counter() - started
            requests += 1 + len(getattr(response, "redirect_chain", ()))
            if after_step is not None:
                after_step(name)
            return response

        step("add", lambda: self._add(client, n))
        response = step(
            "guest",
            lambda: client.post(
                urls["index"], {"username": f"guest{n}@bench.example", "options": "anonymous"}
            ),
        )
        assert response.status_code == 302, response.status_code
        address = {
            "first_name": "Ada",
            "last_name": f"Lovelace{n}",
            "line1": "1 Egg Road",
            "line4": "Shell City",
            "postcode": "N12 9RT",
            "country": "GB",
            "phone_number": f"07400 {n % 1_000_000:06d}",
        }
        response = step("address", lambda: client.post(urls["shipping-address"], address))
        assert response.status_code == 302, response.status_code
        response = step("method", lambda: client.get(urls["shipping-method"], follow=True))
        assert response.status_code == 200, response.status_code
        response = step("place", lambda: client.post(urls["preview"], {"action": "place_order"}))
        assert response.status_code == 302, response.status_code
        assert response["Location"].endswith(urls["thank-you"]), response["Location"]
        return steps, requests


def _query_counts(shop: Shop) -> dict[str, int]:
    """Queries per request type (one more add and one more checkout, after the timings)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    counts: dict[str, int] = {}
    with CaptureQueriesContext(connection) as ctx:
        shop.add_to_basket(1)
    counts["add_to_basket x2"] = len(ctx.captured_queries)
    with CaptureQueriesContext(connection) as ctx:
        previous = 0

        def after_step(name: str) -> None:
            nonlocal previous
            counts[name] = len(ctx.captured_queries) - previous
            previous = len(ctx.captured_queries)

        shop.checkout(after_step)
    counts["checkout"] = len(ctx.captured_queries)
    return counts


def _event_counts() -> dict[str, int]:
    from django.apps import apps

    if not apps.is_installed("omnichannel"):
        return {}
    from django.db.models import Count

    from omnichannel.profiles.models import Event

    return dict(Event.objects.values_list("type").annotate(n=Count("id")).order_by("type"))


def _warm_up(shop: Shop, args: argparse.Namespace) -> None:
    """Imports, template compilation, the first connection, Oscar's caches: not timed."""
    shop.add_to_basket(max(1, args.warmup_adds // 2))
    for _ in range(args.warmup_checkouts):
        shop.checkout()


def _batch(shop: Shop, command: dict) -> dict:
    from oscar.core.loading import get_model

    Order = get_model("order", "Order")
    if command["cmd"] == "adds":
        gc.collect()
        return {"add_ms": [t * 1000 for t in shop.add_to_basket(max(1, command["n"] // 2))]}
    if command["cmd"] == "checkouts":
        before = Order.objects.count()
        gc.collect()
        totals, steps_ms, requests = [], {step: [] for step in STEPS}, 0
        for _ in range(command["n"]):
            steps, requests = shop.checkout()
            totals.append(sum(steps.values()) * 1000)
            for step, seconds in steps.items():
                steps_ms[step].append(seconds * 1000)
        placed = Order.objects.count() - before
        assert placed == command["n"], f"{placed} orders placed, expected {command['n']}"
        return {"checkout_ms": totals, "step_ms": steps_ms, "requests_per_checkout": requests}
    if command["cmd"] == "stats":
        from django.apps import apps

        return {
            "omnichannel": apps.is_installed("omnichannel"),
            "queries": _query_counts(shop),
            "events": _event_counts(),
            "orders": Order.objects.count(),
        }
    raise ValueError(f"unknown command {command!r}")


def serve(args: argparse.Namespace) -> None:
    """Answer bench/run.py's commands, one JSON line in, one JSON line out.

    run.py keeps one such process per variant and alternates small batches between them,
    so that background load on the machine falls on both variants alike.
    """
    import os

    # Only our protocol goes to the real stdout; anything else printed goes to stderr.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr
    shop = Shop()
    _warm_up(shop, args)
    protocol.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            break
        protocol.write(json.dumps(_batch(shop, command)) + "\n")


def profile(args: argparse.Namespace) -> None:
    shop = Shop()
    _warm_up(shop, args)
    profiler = cProfile.Profile()
    profiler.enable()
    shop.add_to_basket(args.adds // 2)
    requests = args.adds
    for _ in range(args.checkouts):
        requests += shop.checkout()[1]
    profiler.disable()
    profiler.dump_stats(args.profile_out)
    Path(args.profile_out + ".json").write_text(json.dumps({"requests": requests}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["prepare", "serve", "profile"])
    parser.add_argument("--adds", type=int, default=200, help="add-to-basket requests (profile)")
    parser.add_argument("--checkouts", type=int, default=50, help="checkouts (profile)")
    parser.add_argument("--warmup-adds", type=int, default=20)
    parser.add_argument("--warmup-checkouts", type=int, default=5)
    parser.add_argument("--profile-out", help="write cProfile stats here (profile)")
    args = parser.parse_args()
    setup_django()
    if args.mode == "prepare":
        prepare()
    elif args.mode == "profile":
        profile(args)
    else:
        serve(args)


if __name__ == "__main__":
    main()
