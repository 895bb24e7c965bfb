"""Segments: generate N profiles with 10 N events and 3 N messages, time counts and refreshes.

Run by bench/run.py on a freshly migrated database of its own; usable by hand too::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/omnichannel_bench_x \\
        python bench/segments_bench.py --profiles 100000

Everything is generated set-based in SQL (INSERT ... SELECT generate_series), so a million
profiles take minutes, not hours. Distributions: 45 % of people never ordered, the others 1 to
10 orders (1: 25 %, 2: 12 %, 3: 7 %, 4-10: 11 %), last orders skewed to recent months; 10 events
a person on average (orders, then views 70 %, basket additions 20 %, logins 10 %), 3 messages a
person over the last 180 days (email 65 %, web push 20 %, SMS 10 %, app push 5 %; a quarter of
the emails opened); 70 % have an email address, 40 % a phone, 40 % one to three devices.

Then, timed: the purchased-product rebuild, the RFM and engagement refreshes, and for a few
segments the count (cold, then the median of 3) and the fetch of the first 1000 member ids; the
main segment's plan (EXPLAIN ANALYZE); and a naive evaluation in Python (load the profiles and
test each condition per profile, as code without segments would) on a subset, extrapolated.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import setup_django

SUBCATEGORIES = {
    "Kitchen": ["Fridges", "Kettles", "Toasters", "Coffee machines", "Blenders"],
    "Garden": ["Tools", "Furniture", "Barbecues", "Lighting"],
    "Home": ["Lamps", "Rugs", "Bedding", "Storage"],
    "Books": ["Fiction", "Cooking", "Travel"],
}
PRODUCTS = 300
NAIVE_SUBSET = 5000


def _values_for(model: Any, given: dict[str, str]) -> tuple[list[str], list[str], list[Any]]:
    """Columns, SQL expressions and params for an INSERT ... SELECT into ``model``.

    ``given`` maps field names to SQL expressions; every other column gets its default (or
    NULL), so the generator keeps working when a model gains a column.
    """
    from django.db import connection

    columns, exprs, params = [], [], []
    for field in model._meta.concrete_fields:
        if field.name in given:
            columns.append(field.column)
            exprs.append(given[field.name])
            continue
        if field.primary_key:
            continue
        columns.append(field.column)
        if field.null:
            exprs.append("NULL")
        else:
            exprs.append("%s")
            params.append(field.get_db_prep_save(field.get_default(), connection))
    return [connection.ops.quote_name(c) for c in columns], exprs, params


def insert_select(model: Any, given: dict[str, str], tail: str, tail_params: list) -> int:
    from django.db import connection

    columns, exprs, params = _values_for(model, given)
    sql = (
        f"INSERT INTO {model._meta.db_table} ({', '.join(columns)}) "
        f"SELECT {', '.join(exprs)} {tail}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, *tail_params])
        return cursor.rowcount


def drop_indexes(tables: list[str]) -> list[str]:
    """Drop the plain indexes of these tables (not those behind constraints); return their
    definitions. Loading millions of rows and then building each index once is several times
    faster than updating every index row by row."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i "
            "WHERE i.tablename = ANY(%s) AND NOT EXISTS ("
            "  SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)",
            [tables],
        )
        found = cursor.fetchall()
        for name, _definition in found:
            cursor.execute(f'DROP INDEX "{name}"')
    return [definition for _name, definition in found]


def make_catalogue() -> dict[str, list[int]]:
    """About 20 categories in 4 trees and 300 products (ids by category path)."""
    from oscar.apps.catalogue.categories import create_from_breadcrumbs
    from oscar.core.loading import get_model

    Product = get_model("catalogue", "Product")
    ProductClass = get_model("catalogue", "ProductClass")
    ProductCategory = get_model("catalogue", "ProductCategory")
    product_class, _ = ProductClass.objects.get_or_create(name="Bench segment item")
    leaves = [
        create_from_breadcrumbs(f"{root} > {child}")
        for root, children in SUBCATEGORIES.items()
        for child in children
    ]
    products = Product.objects.bulk_create(
        [
            Product(
                title=f"Segment bench product {i}",
                slug=f"segment-bench-product-{i}",
                product_class=product_class,
                structure="standalone",
            )
            for i in range(PRODUCTS)
        ]
    )
    # Skewed: the first leaves hold more products (Fridges is a big category).
    ProductCategory.objects.bulk_create(
        [
            ProductCategory(
                product=product, category=leaves[int(len(leaves) * (i / PRODUCTS) ** 2)]
            )
            for i, product in enumerate(products)
        ]
    )
    return {"categories": [leaf.pk for leaf in leaves], "products": [p.pk for p in products]}


PROFILE_SQL = """
CREATE TEMP TABLE bench_p AS
SELECT id, orders,
       CASE WHEN orders > 0 THEN round((orders * (20 + r_spend * 180))::numeric, 2) ELSE 0 END
           AS spent,
       CASE WHEN orders > 0 THEN now() - power(r_last, 2) * interval '730 days' END AS last_order,
       r_first, r_seen, r_basket, r_reg, r_src, r_src2, r_dev, r_mail, r_phone, r_consent
FROM (
    SELECT i AS id,
           CASE WHEN r < .45 THEN 0 WHEN r < .70 THEN 1 WHEN r < .82 THEN 2 WHEN r < .89 THEN 3
                ELSE 4 + floor(random() * 7)::int END AS orders,
           random() AS r_spend, random() AS r_last, random() AS r_first, random() AS r_seen,
           random() AS r_basket, random() AS r_reg, random() AS r_src, random() AS r_src2,
           random() AS r_dev, random() AS r_mail, random() AS r_phone, random() AS r_consent
    FROM (SELECT i, random() AS r FROM generate_series(1, %(n)s) i) s
) t
"""


def generate(n: int, seed: float) -> dict[str, Any]:
    from django.db import connection, transaction
    from oscar.core.loading import get_model

    from omnichannel.channels.models import Message
    from omnichannel.profiles.models import (
        Consent,
        CustomerProfile,
        Event,
        Identity,
        PurchasedCategory,
    )
    from omnichannel.segments.models import PurchasedProduct
    from omnichannel.segments.purchases import refresh_purchased_products

    timings: dict[str, float] = {}
    started = time.perf_counter()
    catalogue = make_catalogue()
    with transaction.atomic(), connection.cursor() as cursor:
        # Generated rows are consistent by construction: skip the row-by-row foreign key
        # triggers (the bench's own database, as a superuser; reset below).
        cursor.execute("SET LOCAL session_replication_role = replica")
        indexes = drop_indexes([Event._meta.db_table, Message._meta.db_table])
        cursor.execute("SELECT setseed(%s)", [seed])
        cursor.execute(PROFILE_SQL, {"n": n})
        insert_select(
            CustomerProfile,
            {
                "id": "id",
                "uuid": "md5('bench' || id)::uuid",
                "first_name": "'First' || id",
                "last_name": "'Last' || id",
                "created_at": "now() - interval '800 days'",
                "orders_count": "orders",
                "total_spent": "spent",
                "average_order_value": "CASE WHEN orders > 0 THEN round(spent / orders, 2) "
                "ELSE 0 END",
                "last_order_at": "last_order",
                "first_order_at": "CASE WHEN orders > 1 THEN last_order - r_first * "
                "interval '365 days' ELSE last_order END",
                "last_seen_at": "greatest(last_order, now() - power(r_seen, 2) * "
                "interval '365 days')",
                "last_basket_activity_at": "CASE WHEN r_basket < .3 THEN now() - r_basket / .3 * "
                "interval '60 days' END",
                "registered_at": "CASE WHEN r_reg < .6 THEN now() - r_reg * interval '1500 days' "
                "END",
                "seen_on_web": "r_src < .85",
                "seen_on_app": "r_src2 < .3",
                "seen_offline": "r_src2 > .85",
                "devices_count": "CASE WHEN r_dev < .6 THEN 0 WHEN r_dev < .85 THEN 1 "
                "WHEN r_dev < .95 THEN 2 ELSE 3 END",
                "aggregates_updated_at": "now()",
            },
            "FROM bench_p",
            [],
        )
        table = CustomerProfile._meta.db_table
        cursor.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608
            f"(SELECT max(id) FROM {table}))"
        )
        timings["profiles"] = time.perf_counter() - started

        # Orders: one event per order, the last at last_order, the first at first_order.
        step = time.perf_counter()
        # Our own integer ids, inlined: an uncorrelated subquery would be evaluated only once.
        ids = ", ".join(str(int(pk)) for pk in catalogue["products"])
        product = (
            f"(ARRAY[{ids}]::bigint[])[1 + floor(random() * {len(catalogue['products'])})::int]"
        )
        line = f"jsonb_build_object('product_id', {product}, 'quantity', 1)"
        orders = insert_select(
            Event,
            {
                "type": "'order_placed'",
                "occurred_at": "o.at",
                "recorded_at": "o.at",
                "source": "CASE WHEN o.r < .85 THEN 'web' ELSE 'offline' END",
                "profile": "o.id",
                "amount": "round(o.spent / o.orders, 2)",
                "currency": "'GBP'",
                "payload": f"jsonb_build_object('number', 'B' || o.id || '-' || o.k, 'lines', "
                f"CASE WHEN o.r < .5 THEN jsonb_build_array({line}) "
                f"WHEN o.r < .85 THEN jsonb_build_array({line}, {line}) "
                f"ELSE jsonb_build_array({line}, {line}, {line}) END)",
                "processed_at": "o.at",
            },
            "FROM (SELECT p.id, p.orders, p.spent, k, random() AS r, CASE k "
            "  WHEN 1 THEN p.last_order "
            "  WHEN 2 THEN p.last_order - p.r_first * interval '365 days' "
            "  ELSE p.last_order - random() * p.r_first * interval '365 days' END AS at "
            "  FROM bench_p p CROSS JOIN LATERAL generate_series(1, p.orders) k) o",
            [],
        )
        # Everything else people do: 10 events a person in all, busier people more often.
        others = max(10 * n - orders, 0)
        insert_select(
            Event,
            {
                "type": "CASE WHEN e.r < .7 THEN 'product_viewed' WHEN e.r < .9 THEN "
                "'basket_line_added' ELSE 'user_logged_in' END",
                "occurred_at": "e.at",
                "recorded_at": "e.at",
                "source": "CASE WHEN e.r2 < .75 THEN 'web' ELSE 'app' END",
                "profile": "e.pid",
                "product": f"CASE WHEN e.r < .9 THEN {product} END",
                "processed_at": "e.at",
            },
            "FROM (SELECT 1 + floor(%s * power(random(), 1.5))::bigint AS pid, random() AS r, "
            "random() AS r2, now() - power(random(), 2) * interval '730 days' AS at "
            "FROM generate_series(1, %s)) e",
            [n, others],
        )
        timings["events"] = time.perf_counter() - step

        step = time.perf_counter()
        for kind, condition, value in [
            ("email", "r_mail < .7", "'p' || id || '@bench.example'"),
            ("phone", "r_phone < .4", "'+4477' || lpad(id::text, 8, '0')"),
        ]:
            insert_select(
                Identity,
                {"profile": "id", "kind": f"'{kind}'", "value": value, "created_at": "now()"},
                f"FROM bench_p WHERE {condition}",
                [],
            )
        insert_select(
            Identity,
            {
                "profile": "p.id",
                "kind": "'device'",
                "value": "'dev-' || p.id || '-' || k",
                "created_at": "now()",
            },
            "FROM bench_p p CROSS JOIN LATERAL generate_series(1, CASE WHEN r_dev < .6 THEN 0 "
            "WHEN r_dev < .85 THEN 1 WHEN r_dev < .95 THEN 2 ELSE 3 END) k",
            [],
        )
        consent = {
            "profile": "id",
            "channel": "'email'",
            "purpose": "'marketing'",
            "source": "'web'",
        }
        insert_select(
            Consent,
            {**consent, "granted": "true", "created_at": "now() - interval '400 days'"},
            "FROM bench_p WHERE r_mail < .7 AND r_consent < .6",
            [],
        )
        insert_select(
            Consent,
            {**consent, "granted": "false", "created_at": "now() - interval '10 days'"},
            "FROM bench_p WHERE r_mail < .7 AND r_consent < .1",
            [],
        )
        timings["identities_consents"] = time.perf_counter() - step

        step = time.perf_counter()
        messages = insert_select(
            Message,
            {
                "uuid": "md5('msg' || i)::uuid",
                "profile": "m.pid",
                "channel": "m.channel",
                "purpose": "'marketing'",
                "status": "CASE WHEN m.clicked THEN 'clicked' WHEN m.opened THEN 'opened' "
                "ELSE 'delivered' END",
                "status_changed_at": "m.at",
                "created_at": "m.at",
                "queued_at": "m.at",
                "sent_at": "m.at",
                "delivered_at": "m.at",
                "opened_at": "CASE WHEN m.opened THEN m.at + m.delay END",
                "clicked_at": "CASE WHEN m.clicked THEN m.at + m.delay + interval '2 minutes' END",
            },
            "FROM (SELECT i, pid, channel, at, delay, "
            "  r < CASE channel WHEN 'email' THEN .25 WHEN 'webpush' THEN .15 ELSE .05 END "
            "    AS opened, "
            "  r < CASE channel WHEN 'email' THEN .05 WHEN 'webpush' THEN .04 ELSE .03 END "
            "    AS clicked "
            "  FROM (SELECT i, 1 + floor(%s * random())::bigint AS pid, random() AS r, "
            "    CASE WHEN c < .65 THEN 'email' WHEN c < .85 THEN 'webpush' WHEN c < .95 "
            "      THEN 'sms' ELSE 'push' END AS channel, "
            "    date_trunc('hour', now() - random() * interval '180 days') "
            "      + floor(random() * 4) * interval '1 hour' AS at, "
            "    random() * interval '20 hours' AS delay "
            "  FROM (SELECT i, random() AS c FROM generate_series(1, %s) i) g) s) m",
            [n, 3 * n],
        )
        timings["messages"] = time.perf_counter() - step

        step = time.perf_counter()
        for definition in indexes:
            cursor.execute(definition)
        timings["indexes"] = time.perf_counter() - step

        step = time.perf_counter()
        purchased = refresh_purchased_products()
        timings["purchased_products"] = time.perf_counter() - step
        # Purchased categories: what the profile aggregates would compute, in one statement.
        ProductCategory = get_model("catalogue", "ProductCategory")
        insert_select(
            PurchasedCategory,
            {
                "profile": "pp.profile_id",
                "category": "pc.category_id",
                "orders_count": "sum(pp.orders_count)",
                "last_bought_at": "max(pp.last_bought_at)",
            },
            f"FROM {PurchasedProduct._meta.db_table} pp "
            f"JOIN {ProductCategory._meta.db_table} pc ON pc.product_id = pp.product_id "
            "GROUP BY pp.profile_id, pc.category_id",
            [],
        )
        cursor.execute("DROP TABLE bench_p")
    step = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    timings["vacuum_analyze"] = time.perf_counter() - step
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {Event._meta.db_table}")  # noqa: S608
        events = cursor.fetchone()[0]
    return {
        "profiles": n,
        "events": events,
        "orders": orders,
        "messages": messages,
        "purchased_product_rows": purchased,
        "generate_s": time.perf_counter() - started,
        "generate_phases_s": timings,
        "catalogue": catalogue,
    }


def timed(func, repeat: int = 1) -> tuple[Any, list[float]]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - start)
    return result, times


def segments(catalogue: dict[str, list[int]]) -> dict[str, dict]:
    """The segments measured; the first is the main ("typical three-condition") one."""
    fridges = catalogue["categories"][0]  # Kitchen > Fridges
    from oscar.core.loading import get_model

    kitchen = get_model("catalogue", "Category").objects.get(name="Kitchen", depth=1).pk

    def cond(type: str, negate: bool = False, **params: Any) -> dict:
        return {"type": type, "negate": negate, "params": params}

    def all_(*children: dict) -> dict:
        return {"op": "all", "negate": False, "children": list(children)}

    not_opened_email = cond("engaged", True, channel="email", action="opened_or_clicked", days=90)
    return {
        "main: orders >= 2, bought in Kitchen in 180 d, no email open/click in 90 d": all_(
            cond("orders_count", min=2),
            cond("bought", category=kitchen, days=180),
            not_opened_email,
        ),
        "champions/loyal (RFM), bought in Fridges in 180 d, no email engagement 90 d": all_(
            cond("rfm_group", groups=["champions", "loyal"]),
            cond("bought", category=fridges, days=180),
            not_opened_email,
        ),
        "viewed Fridges 2+ times in 30 d, no order in 30 d, marketing email consent": all_(
            cond("event", event_type="product_viewed", category=fridges, days=30, min_count=2),
            cond("event", True, event_type="order_placed", days=30),
            cond("consent", channel="email", purpose="marketing"),
        ),
        "ready-made: drifting (ordered, nothing in 60 d)": all_(
            cond("days_since_last_order", min=60)
        ),
        "ready-made: not engaged 90 d (email and web push)": all_(
            not_opened_email,
            cond("engaged", True, channel="webpush", action="opened_or_clicked", days=90),
        ),
        "ready-made: basket abandoners of 7 d": all_(cond("abandoned_basket", days=7)),
    }


def measure_segments(catalogue: dict[str, list[int]]) -> tuple[list[dict], str, str]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from omnichannel.profiles.models import CustomerProfile
    from omnichannel.segments.rules import compile_rules, validate_rules

    now = timezone.now()
    results = []
    main_sql = ""
    for name, rules in segments(catalogue).items():
        rules = validate_rules(rules)
        queryset = CustomerProfile.objects.filter(compile_rules(rules, now=now))
        with CaptureQueriesContext(connection) as queries:
            count, cold = timed(queryset.count)
        _, warm = timed(queryset.count, repeat=3)
        ids, fetch = timed(
            # a new queryset each time: a sliced one caches its rows
            lambda qs=queryset: list(qs.order_by("pk").values_list("pk", flat=True)[:1000]),
            3,
        )
        if not main_sql:
            main_sql = queries[0]["sql"]
        results.append(
            {
                "name": name,
                "count": count,
                "count_cold_s": cold[0],
                "count_s": statistics.median(warm),
                "fetch_1000_s": statistics.median(fetch),
                "fetched": len(ids),
            }
        )
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + main_sql)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    return results, plan, main_sql


def naive_count(catalogue: dict[str, list[int]], subset: int) -> dict[str, Any]:
    """The main segment evaluated in Python over the first ``subset`` profiles.

    Loads the profiles and tests each condition per profile with the ORM, stopping at the
    first that fails (what code without a segment engine does), then compares with the SQL
    count over the same profiles.
    """
    from django.utils import timezone
    from oscar.core.loading import get_model

    from omnichannel.profiles.models import CustomerProfile
    from omnichannel.segments.rules import compile_rules, validate_rules

    now = timezone.now()
    Category = get_model("catalogue", "Category")
    kitchen = Category.objects.get(name="Kitchen", depth=1)
    tree = list(Category.objects.filter(path__startswith=kitchen.path).values_list("pk", flat=True))
    since_bought = now - timedelta(days=180)
    since_opened = now - timedelta(days=90)

    def matches(p: CustomerProfile) -> bool:
        if p.orders_count < 2:
            return False
        if not p.purchased_categories.filter(
            category_id__in=tree, last_bought_at__gte=since_bought
        ).exists():
            return False
        for message in p.messages.filter(channel="email"):
            opened = message.opened_at and message.opened_at >= since_opened
            clicked = message.clicked_at and message.clicked_at >= since_opened
            if opened or clicked:
                return False
        return True

    start = time.perf_counter()
    profiles = list(CustomerProfile.objects.order_by("pk")[:subset])
    matched = sum(1 for p in profiles if matches(p))
    seconds = time.perf_counter() - start
    main_rules = next(iter(segments(catalogue).values()))
    last_pk = profiles[-1].pk
    sql_count = (
        CustomerProfile.objects.filter(pk__lte=last_pk)
        .filter(compile_rules(validate_rules(main_rules), now=now))
        .count()
    )
    return {
        "subset": len(profiles),
        "naive_s": seconds,
        "naive_count": matched,
        "sql_count_on_subset": sql_count,
    }


def refresh_scores() -> dict[str, Any]:
    from django.utils import timezone

    from omnichannel.segments.scores import refresh_engagement, refresh_rfm

    rfm, rfm_s = timed(lambda: refresh_rfm(now=timezone.now()))
    engagement, engagement_s = timed(lambda: refresh_engagement(now=timezone.now()))
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE omnichannel_rfmscore; ANALYZE omnichannel_engagementscore")
    return {
        "rfm_rows": rfm,
        "rfm_s": rfm_s[0],
        "engagement_rows": engagement,
        "engagement_s": engagement_s[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, required=True)
    parser.add_argument("--seed", type=float, default=0.42)
    parser.add_argument("--naive-subset", type=int, default=NAIVE_SUBSET)
    parser.add_argument("--json", help="write the results here (default: stdout)")
    args = parser.parse_args()
    setup_django()
    result = generate(args.profiles, args.seed)
    result["scores"] = refresh_scores()
    result["segments"], result["plan"], result["main_sql"] = measure_segments(result["catalogue"])
    result["naive"] = naive_count(result["catalogue"], min(args.naive_subset, args.profiles))
    text = json.dumps(result, default=str)
    if args.json:
        Path(args.json).write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
