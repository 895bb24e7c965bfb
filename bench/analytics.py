"""Campaign reports on PostgreSQL: the report pages over N messages and N/10 orders.

Run by bench/run.py (``--only analytics``) on a fresh copy of the migrated template database;
usable by hand on any migrated database of the demo shop::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/omnichannel_bench_x DJANGO_DEBUG=0 \\
        python bench/analytics.py --messages 1000000 [--json out.json]

The data is generated set-based in SQL (INSERT ... SELECT generate_series): 20 campaigns of
three steps (email, push, SMS; five with an A/B test on the first step), N messages over the
last 90 days (60 % first steps, a natural funnel: 98 % sent, 90 % delivered, 30 % of emails
opened, 6 % clicked), N/10 orders of which 70 % are attributed to a campaign message (a
Conversion row each, with its order_placed Event), N/10 profiles with devices, sources and RFM
groups.

Measured (median of 3 after a first, cold run): each report function of
``analytics.reports`` and each admin page (the Django test client: view, template, charts)
over the last 30 days; the CSV of a table. Baseline, same run: the naive aggregation (every
message and order of the campaign's period loaded and summed in Python) on a sample,
extrapolated to the campaign's rows. Then the same pages with two candidate covering indexes
(``CANDIDATE_INDEXES``), created here only (no migration), to tell whether they are worth one.
Target: 2 s per report page.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import django_env, run_script, setup_django

PAGE_TARGET_S = 2.0
CAMPAIGNS = 20
AB_CAMPAIGNS = 5
DAYS = 90
REPORT_DAYS = 30
NAIVE_SAMPLE = 200_000
NOW = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
NOW_SQL = f"'{NOW.isoformat()}'::timestamptz"
#: Indexes the bench tries (created in its own database only, never by a migration): what the
#: report's grouped queries read, so PostgreSQL answers from the index alone.
_REPORT_COLUMNS = "channel, sent_at, delivered_at, opened_at, clicked_at, cost"
CANDIDATE_INDEXES = {
    "bench_message_report_time": f"(created_at) INCLUDE (campaign_id, step_id, {_REPORT_COLUMNS}) "
    "WHERE campaign_id IS NOT NULL",
    "bench_message_report_campaign": f"(campaign_id, created_at) INCLUDE (step_id, variant_id, "
    f"{_REPORT_COLUMNS})",
}


def log(message: str = "") -> None:
    print(message, flush=True)


# --- run by bench/run.py ------------------------------------------------------------------------


def run_analytics(admin, template: str, sizes: list[int], args) -> list[dict]:
    """bench/run.py's part: per size a fresh copy of the template, this script in a subprocess."""
    log("\n== Analytics: campaign report pages over N messages and N/10 orders ==")
    results = []
    for size in sizes:
        name = admin.create(admin.name("analytics"), template=template)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "analytics.json"
            log(
                f"  {size:,} messages: generating data, then measuring "
                f"(load {os.getloadavg()[0]:.1f})..."
            )
            run_script(
                "analytics.py",
                [f"--messages={size}", f"--json={out}"],
                django_env(admin.url_of(name), omnichannel=True),
                label=f"analytics {size}",
            )
            result = json.loads(out.read_text())
        admin.drop(name)
        results.append(result)
        report(result)
    return results


def report(r: dict[str, Any]) -> None:
    data = r["data"]
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in data["phases_s"].items())
    log(
        f"    data: {data['messages']:,} messages, {data['orders']:,} orders "
        f"({data['conversions_attributed']:,} attributed), {data['profiles']:,} profiles, "
        f"{CAMPAIGNS} campaigns; generated in {data['generate_s']:.0f} s ({phases})"
    )
    log(
        f"    report period: the last {REPORT_DAYS} days; the measured campaign sent "
        f"{r['campaign_messages']:,} messages and got {r['campaign_conversions']:,} conversions "
        f"in it ({r['period_messages']:,} messages of all campaigns)"
    )
    for label, key in (("as migrated", "timings"), ("with the covering indexes", "indexed")):
        if key not in r:
            continue
        log(f"    {label} (seconds: cold, then median of 3; queries):")
        for row in r[key]:
            flag = ""
            if row["page"]:
                flag = "  ok" if row["median_s"] <= PAGE_TARGET_S else "  ABOVE TARGET"
            log(
                f"      {row['name']:46}{row['cold_s']:8.2f}{row['median_s']:8.2f}"
                f"{row['queries']:6}{flag}"
            )
    naive = r["naive"]
    log(
        f"    naive Python (load each message and order of the campaign's period, sum per step, "
        f"channel, variant and day) on {naive['rows']:,} rows: {naive['seconds']:.2f} s"
    )
    page = next(row for row in r["timings"] if row["name"].startswith("campaign page"))
    log(
        f"      extrapolated to the campaign's {naive['total_rows']:,} rows: "
        f"{naive['extrapolated_s']:.1f} s = {naive['extrapolated_s'] / page['median_s']:.0f}x "
        "the campaign page"
    )
    log(f"    check: the naive sums equal the report's ({naive['agrees']})")
    if r.get("index_size"):
        log(f"    candidate indexes: {r['index_size']}")
        for name, definition in CANDIDATE_INDEXES.items():
            log(f"      CREATE INDEX {name} ON omnichannel_message {definition}")
    for name, plan in r["plans"].items():
        log(f"    plan of the {name} (EXPLAIN ANALYZE, as migrated):")
        for line in plan.splitlines()[:14]:
            log(f"      {line}")


# --- data -----------------------------------------------------------------------------------------


def make_campaigns() -> list[tuple[Any, ...]]:
    """The campaigns, steps and variants; rows (campaign index, position, campaign id, step id,
    channel, cost, variant a, variant b) for the generator."""
    from omnichannel.campaigns.models import Campaign, CampaignKind, CampaignStatus, Step, Variant

    rows = []
    plan = [(1, "email", "0.001"), (2, "push", "0"), (3, "sms", "0.04")]
    for index in range(CAMPAIGNS):
        campaign = Campaign.objects.create(
            name=f"Bench campaign {index:02d}",
            kind=CampaignKind.TRIGGERED,
            status=CampaignStatus.ACTIVE,
            trigger="abandoned_basket",
        )
        for position, channel, cost in plan:
            step = Step.objects.create(
                campaign=campaign,
                position=position,
                channel=channel,
                template="abandoned_basket",
                wait=timedelta(days=position - 1),
            )
            a = b = None
            if position == 1 and index < AB_CAMPAIGNS:
                a = Variant.objects.create(step=step, name="A").pk
                b = Variant.objects.create(step=step, name="B", subject="Still there?").pk
            rows.append((index, position, campaign.pk, step.pk, channel, cost, a, b))
    return rows


def generate(n_messages: int, seed: float) -> dict[str, Any]:
    from django.db import connection, transaction
    from segments_bench import drop_indexes, insert_select

    from omnichannel.analytics.models import Conversion
    from omnichannel.channels.models import Message
    from omnichannel.profiles.models import CustomerProfile, Event
    from omnichannel.segments.models import RfmGroup, RfmScore

    n_orders = max(n_messages // 10, 100)
    n_profiles = max(n_messages // 10, 1000)
    started = time.perf_counter()
    phases: dict[str, float] = {}
    for model in (CustomerProfile, Message, Event, Conversion):
        # The generator numbers rows from 1: it needs the freshly migrated template's tables.
        if model.objects.exists():
            raise SystemExit(f"{model._meta.db_table} is not empty: run on a fresh database")
    steps = make_campaigns()
    with transaction.atomic(), connection.cursor() as cursor:
        # Consistent by construction: skip the row-by-row foreign key triggers (the bench's
        # own database, as a superuser; reset at the end of the transaction).
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute("SELECT setseed(%s)", [seed])
        indexes = drop_indexes(
            [Message._meta.db_table, Event._meta.db_table, Conversion._meta.db_table]
        )
        cursor.execute(
            "CREATE TEMP TABLE bench_steps (cidx int, position int, campaign_id int, step_id int, "
            "channel text, cost numeric, variant_a int, variant_b int)"
        )
        cursor.executemany("INSERT INTO bench_steps VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", steps)

        step = time.perf_counter()
        insert_select(
            CustomerProfile,
            {
                "id": "i",
                "uuid": "md5('bench' || i)::uuid",
                "first_name": "'First' || i",
                "created_at": f"{NOW_SQL} - interval '400 days'",
                "devices_count": "floor(power(random(), 2) * 5)::int",
                "seen_on_web": "random() < .8",
                "seen_on_app": "random() < .3",
                "seen_offline": "random() < .2",
                "orders_count": "CASE WHEN mod(i, 2) = 0 THEN 1 + mod(i, 7) ELSE 0 END",
                "total_spent": "CASE WHEN mod(i, 2) = 0 THEN round((random() * 900)::numeric, 2) "
                "ELSE 0 END",
            },
            "FROM generate_series(1, %s) i",
            [n_profiles],
        )
        groups = list(RfmGroup.values)
        insert_select(
            RfmScore,
            {
                "profile": "i",
                "recency": "1 + mod(i, 5)",
                "frequency": "1 + mod(i / 5, 5)",
                "monetary": "1 + mod(i / 25, 5)",
                "group": f"(ARRAY{groups!r})[1 + mod(i, {len(groups)})]",
                "computed_at": NOW_SQL,
            },
            "FROM generate_series(2, %s, 2) i",
            [n_profiles],
        )
        phases["profiles"] = time.perf_counter() - step

        step = time.perf_counter()
        # One random draw per message: sent < .98, delivered < .90, opened < .30 (emails),
        # clicked < .06, so every message's stages are nested as real ones are.
        insert_select(
            Message,
            {
                "id": "m.i",
                "uuid": "md5('m' || m.i)::uuid",
                "profile": f"1 + mod(m.i * 7919::bigint, {n_profiles})",
                "channel": "s.channel",
                "purpose": "'marketing'",
                "template": "'abandoned_basket'",
                "cost": "CASE WHEN m.r < .98 THEN s.cost ELSE 0 END",
                "currency": "'GBP'",
                "campaign": "s.campaign_id",
                "step": "s.step_id",
                "variant": "CASE WHEN s.variant_a IS NOT NULL THEN "
                "CASE WHEN m.r2 < .5 THEN s.variant_a ELSE s.variant_b END END",
                "status": "CASE WHEN m.r >= .98 THEN 'failed' WHEN m.r < .06 THEN 'clicked' "
                "WHEN m.r < .30 AND s.channel = 'email' THEN 'opened' "
                "WHEN m.r < .90 THEN 'delivered' ELSE 'sent' END",
                "status_changed_at": "m.created",
                "created_at": "m.created",
                "queued_at": "m.created",
                "sent_at": "CASE WHEN m.r < .98 THEN m.created + interval '1 minute' END",
                "delivered_at": "CASE WHEN m.r < .90 THEN m.created + interval '2 minutes' END",
                "opened_at": "CASE WHEN m.r < .30 AND s.channel = 'email' "
                "THEN m.created + interval '1 hour' END",
                "clicked_at": "CASE WHEN m.r < .06 THEN m.created + interval '2 hours' END",
                "failed_at": "CASE WHEN m.r >= .98 THEN m.created + interval '1 minute' END",
            },
            f"FROM (SELECT i, mod(i, {CAMPAIGNS}) AS cidx, "  # noqa: S608  (constants only)
            "  CASE WHEN p < .6 THEN 1 WHEN p < .85 THEN 2 ELSE 3 END AS position, "
            "  random() AS r, random() AS r2, "
            f"  {NOW_SQL} - random() * interval '{DAYS} days' AS created "
            "  FROM (SELECT i, random() AS p FROM generate_series(1, %s) i) g) m "
            "JOIN bench_steps s ON s.cidx = m.cidx AND s.position = m.position",
            [n_messages],
        )
        phases["messages"] = time.perf_counter() - step

        step = time.perf_counter()
        # Orders: 70 % follow a campaign message (a few hours after it), the rest do not.
        attributed = int(n_orders * 0.7)
        cursor.execute(
            "CREATE TEMP TABLE bench_orders AS "  # noqa: S608  (numbers and NOW only)
            "SELECT o.i, m.id AS message_id, m.campaign_id, m.step_id, m.variant_id, "
            "  m.channel, m.profile_id, m.created_at + random() * interval '48 hours' AS at, "
            "  round((5 + random() * 195)::numeric, 2) AS revenue "
            "FROM generate_series(1, %s) o(i) "
            "JOIN omnichannel_message m ON m.id = 1 + mod(o.i * 104729::bigint, %s) "
            "UNION ALL "
            f"SELECT o.i, NULL, NULL, NULL, NULL, '', 1 + mod(o.i, {n_profiles}), "
            f"  {NOW_SQL} - random() * interval '{DAYS} days', "
            "  round((5 + random() * 195)::numeric, 2) "
            "FROM generate_series(%s, %s) o(i)",
            [attributed, n_messages, attributed + 1, n_orders],
        )
        insert_select(
            Event,
            {
                "id": "i",
                "type": "'order_placed'",
                "occurred_at": "at",
                "recorded_at": "at",
                "source": "'web'",
                "profile": "profile_id",
                "amount": "revenue",
                "currency": "'GBP'",
                "processed_at": "at",
            },
            "FROM bench_orders",
            [],
        )
        insert_select(
            Conversion,
            {
                "id": "i",
                "order_event": "i",
                "profile": "profile_id",
                "ordered_at": "at",
                "revenue": "revenue",
                "currency": "'GBP'",
                "model": "CASE WHEN message_id IS NULL THEN 'none' ELSE 'click' END",
                "message": "message_id",
                "campaign": "campaign_id",
                "step": "step_id",
                "variant": "variant_id",
                "channel": "channel",
                "touched_at": "CASE WHEN message_id IS NOT NULL THEN at END",
                "attributed_at": "at",
            },
            "FROM bench_orders",
            [],
        )
        phases["orders"] = time.perf_counter() - step

        step = time.perf_counter()
        for definition in indexes:
            cursor.execute(definition)
        for model in (CustomerProfile, Message, Event, Conversion):
            table = model._meta.db_table
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608
                f"(SELECT max(id) FROM {table}))"
            )
        cursor.execute("DROP TABLE bench_steps, bench_orders")
        phases["indexes"] = time.perf_counter() - step
    step = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    phases["analyze"] = time.perf_counter() - step
    return {
        "messages": n_messages,
        "orders": n_orders,
        "conversions_attributed": attributed,
        "profiles": n_profiles,
        "generate_s": time.perf_counter() - started,
        "phases_s": phases,
    }


# --- measurements ---------------------------------------------------------------------------------


def timed(name: str, func: Callable[[], Any], *, page: bool, runs: int = 3) -> dict[str, Any]:
    """Cold run, then the median of ``runs``; the number of SQL queries of one run."""
    from django.db import connection

    # Counted by a wrapper: the test client's request_started signal resets the query log.
    queries: list[str] = []

    def count(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        queries.append(sql)
        return execute(sql, params, many, context)

    started = time.perf_counter()
    with connection.execute_wrapper(count):
        func()
    cold = time.perf_counter() - started
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        func()
        times.append(time.perf_counter() - started)
    row = {
        "name": name,
        "cold_s": cold,
        "median_s": statistics.median(times),
        "queries": len(queries),
        "page": page,
    }
    log(f"    {name}: {row['median_s']:.2f} s ({row['queries']} queries)")
    return row


def measure(campaign, period) -> list[dict[str, Any]]:
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.urls import reverse

    from omnichannel.analytics.reports import campaign_report, customer_overview, overview_report
    from omnichannel.analytics.uplift import campaign_uplift

    User = get_user_model()
    user = User.objects.filter(username="bench-analyst").first() or User.objects.create_superuser(
        "bench-analyst", "analyst@example.com", "x"
    )
    client = Client()
    client.force_login(user)
    dates = {"start": period.start.isoformat(), "end": period.end.isoformat()}
    overview_url = reverse("admin:omnichannel_campaign_reports")
    customers_url = reverse("admin:omnichannel_campaign_reports_customers")
    report_url = reverse("admin:omnichannel_campaign_report", args=[campaign.pk])

    def get(url: str, **extra: str) -> None:
        response = client.get(url, {**dates, **extra})
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}")

    return [
        timed("overview_report() (all campaigns)", lambda: overview_report(period), page=False),
        timed("customer_overview() (all profiles)", customer_overview, page=False),
        timed(
            "campaign_report() (one campaign)",
            lambda: campaign_report(campaign, period, uplift=False),
            page=False,
        ),
        timed(
            "campaign_uplift() (no enrollments here)",
            lambda: campaign_uplift(campaign, start=period.start_at, end=period.end_at),
            page=False,
        ),
        timed("overview page", lambda: get(overview_url), page=True),
        timed("customers page", lambda: client.get(customers_url), page=True),
        timed("campaign page (with the uplift)", lambda: get(report_url), page=True),
        timed(
            "campaign CSV (steps)",
            lambda: get(report_url, format="csv", table="steps"),
            page=True,
        ),
    ]


def naive(campaign, period, report) -> dict[str, Any]:
    """Every message and order of the campaign's period loaded and summed in Python, on a
    sample of NAIVE_SAMPLE messages, extrapolated."""
    from omnichannel.analytics.models import Conversion
    from omnichannel.channels.models import Message

    messages = Message.objects.filter(
        campaign=campaign, created_at__gte=period.start_at, created_at__lt=period.end_at
    ).order_by()
    conversions = Conversion.objects.filter(
        campaign=campaign, ordered_at__gte=period.start_at, ordered_at__lt=period.end_at
    ).order_by()
    total_rows = messages.count() + conversions.count()
    started = time.perf_counter()
    sums: dict[Any, list[Any]] = {}
    loaded = 0
    for message in messages[:NAIVE_SAMPLE].iterator(chunk_size=5000):
        loaded += 1
        for key in (("step", message.step_id), ("channel", message.channel)):
            row = sums.setdefault(key, [0, 0, 0, 0, Decimal(0)])
            clicked = message.clicked_at is not None
            opened = clicked or message.opened_at is not None
            delivered = opened or message.delivered_at is not None
            sent = delivered or message.sent_at is not None
            row[0] += sent
            row[1] += delivered
            row[2] += opened
            row[3] += clicked
            row[4] += message.cost if sent else 0
    sample_messages = loaded
    for conversion in conversions[: max(NAIVE_SAMPLE - loaded, 0)].iterator(chunk_size=5000):
        loaded += 1
        row = sums.setdefault(("step", conversion.step_id), [0, 0, 0, 0, Decimal(0)])
        row.append(conversion.revenue)
    seconds = time.perf_counter() - started
    agrees = "not checked: the sample is not the whole period"
    if sample_messages == messages.count():
        by_step = {row.key: row.sent for row in report.steps}
        naive_steps = {key[1]: values[0] for key, values in sums.items() if key[0] == "step"}
        agrees = "yes" if by_step == naive_steps else f"NO: {by_step} != {naive_steps}"
    return {
        "rows": loaded,
        "seconds": seconds,
        "total_rows": total_rows,
        "extrapolated_s": seconds / max(loaded, 1) * total_rows,
        "agrees": agrees,
    }


def explain(campaign, period) -> dict[str, str]:
    from django.db import connection

    from omnichannel.analytics.reports import _message_aggregates, _messages

    plans = {}
    for name, queryset in (
        ("campaign's grouped messages", _messages(period).filter(campaign=campaign)),
        ("overview's grouped messages", _messages(period)),
    ):
        keys = (
            ("step_id", "variant_id", "channel")
            if "campaign's" in name
            else ("campaign_id", "step_id", "channel")
        )
        grouped = queryset.order_by().values(*keys).annotate(**_message_aggregates())
        sql, params = grouped.query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN ANALYZE {sql}", params)
            plans[name] = "\n".join(row[0] for row in cursor.fetchall())
    return plans


def run(n_messages: int, seed: float, *, with_index: bool) -> dict[str, Any]:
    from django.db import connection

    from omnichannel.analytics.reports import Period, campaign_report
    from omnichannel.campaigns.models import Campaign

    result: dict[str, Any] = {"data": generate(n_messages, seed)}
    period = Period.last_days(REPORT_DAYS, today=NOW.date())
    campaign = Campaign.objects.get(name="Bench campaign 00")  # one with an A/B test
    report = campaign_report(campaign, period, uplift=False)
    result["campaign_messages"] = sum(row.sent for row in report.steps)
    result["campaign_conversions"] = report.totals.conversions
    from omnichannel.channels.models import Message

    result["period_messages"] = Message.objects.filter(
        created_at__gte=period.start_at, created_at__lt=period.end_at
    ).count()
    log("  as migrated:")
    result["timings"] = measure(campaign, period)
    result["naive"] = naive(campaign, period, report)
    result["plans"] = explain(campaign, period)
    if with_index:
        sizes = []
        with connection.cursor() as cursor:
            for name, definition in CANDIDATE_INDEXES.items():
                started = time.perf_counter()
                cursor.execute(f"CREATE INDEX {name} ON omnichannel_message {definition}")
                seconds = time.perf_counter() - started
                cursor.execute(f"SELECT pg_size_pretty(pg_relation_size('{name}'))")
                sizes.append(f"{name} {cursor.fetchone()[0]} (built in {seconds:.0f} s)")
            # An index-only scan needs the visibility map: autovacuum keeps it on a live table.
            cursor.execute("VACUUM ANALYZE omnichannel_message")
            cursor.execute("SELECT pg_size_pretty(pg_relation_size('omnichannel_message'))")
            sizes.append(f"table omnichannel_message {cursor.fetchone()[0]}")
        result["index_size"] = "; ".join(sizes)
        log("  with the candidate covering indexes:")
        result["indexed"] = measure(campaign, period)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000_000)
    parser.add_argument("--seed", type=float, default=0.42)
    parser.add_argument(
        "--no-index", action="store_true", help="skip the run with the candidate index"
    )
    parser.add_argument("--json", help="write the results here (default: stdout)")
    args = parser.parse_args()
    setup_django()
    result = run(args.messages, args.seed, with_index=not args.no_index)
    text = json.dumps(result, default=str)
    if args.json:
        Path(args.json).write_text(text)
    report(result)


if __name__ == "__main__":
    main()
