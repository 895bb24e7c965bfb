"""Bulk profile rebuild: generate N customers with their Oscar orders, time the rebuild command.

Run by bench/run.py on a freshly migrated database of its own; usable by hand too::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/omnichannel_bench_x \\
        python bench/rebuild_bench.py --customers 10000

The data is written with INSERT ... SELECT generate_series (Oscar's OrderCreator would take
hours for 250k orders): users, shipping addresses, orders and order lines are valid rows, not
the output of a real checkout. 10 % of the customers are guests (orders with guest_email and
no user); every order has a shipping address with the customer's phone number.

Then ``omnichannel_rebuild_profiles --backfill`` runs in this process (call_command, so that
its phases can be timed by wrapping the functions it calls), and a sample of profiles is
checked against the orders.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import setup_django

GUEST_EVERY = 10  # every 10th customer checks out as a guest
SAMPLE = 300  # profiles checked one by one against their orders

GENERATE_SQL = [
    # One row per customer: 1-5 orders each (30/25/20/15/10 %, 2.5 on average).
    """
    CREATE TEMP TABLE bench_customer AS
    SELECT i AS cust,
           i %% %(guest_every)s = 0 AS guest,
           'customer' || i || '@bench.example' AS email,
           'First' || i AS first_name,
           'Last' || i AS last_name,
           '+4474' || lpad(i::text, 8, '0') AS phone,
           CASE WHEN r < 0.30 THEN 1 WHEN r < 0.55 THEN 2 WHEN r < 0.75 THEN 3
                WHEN r < 0.90 THEN 4 ELSE 5 END AS norders,
           now() - interval '3 years' + r2 * interval '1 year' AS joined,
           NULL::integer AS user_id
    FROM (SELECT i, random() AS r, random() AS r2 FROM generate_series(1, %(customers)s) i) s
    """,
    """
    INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email,
                           is_staff, is_active, date_joined)
    SELECT '!', false, 'bench' || cust, first_name, last_name, email, false, true, joined
    FROM bench_customer WHERE NOT guest
    """,
    """
    UPDATE bench_customer c SET user_id = u.id
    FROM auth_user u WHERE NOT c.guest AND u.username = 'bench' || c.cust
    """,
    """
    CREATE TEMP TABLE bench_order AS
    SELECT nextval(pg_get_serial_sequence('order_order', 'id')) AS order_id,
           nextval(pg_get_serial_sequence('order_shippingaddress', 'id')) AS address_id,
           c.*,
           c.joined + k * interval '60 days' + random() * interval '50 days' AS placed
    FROM bench_customer c CROSS JOIN LATERAL generate_series(1, c.norders) k
    """,
    """
    CREATE TEMP TABLE bench_product AS
    SELECT (row_number() OVER (ORDER BY s.id) - 1)::integer AS idx, p.id AS product_id,
           p.title, p.upc, s.id AS stockrecord_id, s.partner_id, s.partner_sku, s.price,
           pa.name AS partner_name
    FROM partner_stockrecord s
    JOIN catalogue_product p ON p.id = s.product_id
    JOIN partner_partner pa ON pa.id = s.partner_id
    """,
    # 1-3 lines an order (2 on average), random products, quantity 1-3.
    """
    CREATE TEMP TABLE bench_line AS
    SELECT l.order_id, p.*, l.quantity, p.price * l.quantity AS line_price
    FROM (
        SELECT o.order_id,
               floor(random() * (SELECT count(*) FROM bench_product))::integer AS idx,
               1 + floor(random() * 3)::integer AS quantity
        FROM bench_order o CROSS JOIN LATERAL generate_series(1, 1 + (o.order_id %% 3)::integer) j
    ) l JOIN bench_product p USING (idx)
    """,
    """
    INSERT INTO order_shippingaddress (id, title, first_name, last_name, line1, line2, line3,
        line4, state, postcode, search_text, phone_number, notes, country_id)
    SELECT address_id, '', first_name, last_name, '1 Bench Road', '', '', 'Benchtown', '',
           'N1 1AA', first_name || ' ' || last_name || ' 1 Bench Road Benchtown N1 1AA',
           phone, '', 'GB'
    FROM bench_order
    """,
    """
    INSERT INTO order_order (id, number, currency, total_incl_tax, total_excl_tax,
        shipping_incl_tax, shipping_excl_tax, shipping_method, shipping_code, status,
        guest_email, date_placed, shipping_address_id, site_id, user_id, analytics_tracked)
    SELECT o.order_id, 'B' || o.order_id, 'GBP', t.total, t.total, 0, 0, 'Free shipping',
           'free-shipping', 'Complete', CASE WHEN o.guest THEN o.email ELSE '' END, o.placed,
           o.address_id, (SELECT min(id) FROM django_site), o.user_id, true
    FROM bench_order o
    JOIN (SELECT order_id, sum(line_price) AS total FROM bench_line GROUP BY order_id) t
      USING (order_id)
    """,
    """
    INSERT INTO order_line (partner_name, partner_sku, partner_line_reference,
        partner_line_notes, title, upc, quantity, line_price_incl_tax, line_price_excl_tax,
        line_price_before_discounts_incl_tax, line_price_before_discounts_excl_tax,
        unit_price_incl_tax, unit_price_excl_tax, status, order_id, partner_id, product_id,
        stockrecord_id, allocation_cancelled, num_allocated)
    SELECT partner_name, partner_sku, '', '', title, upc, quantity, line_price, line_price,
           line_price, line_price, price, price, 'Complete', order_id, partner_id, product_id,
           stockrecord_id, false, 0
    FROM bench_line
    """,
]


def generate(customers: int, seed: float) -> dict:
    from django.db import connection, transaction

    started = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT setseed(%s)", [seed])
        for sql in GENERATE_SQL:
            cursor.execute(sql, {"customers": customers, "guest_every": GUEST_EVERY})
        cursor.execute(
            "SELECT (SELECT count(*) FROM bench_customer WHERE NOT guest),"
            " (SELECT count(*) FROM bench_customer WHERE guest),"
            " (SELECT count(*) FROM bench_order), (SELECT count(*) FROM bench_line)"
        )
        users, guests, orders, lines = cursor.fetchone()
        for table in ("bench_line", "bench_order", "bench_product", "bench_customer"):
            cursor.execute(f"DROP TABLE {table}")
    # A shop with history has planner statistics: give the tables theirs.
    with connection.cursor() as cursor:
        for table in ("auth_user", "order_order", "order_line", "order_shippingaddress"):
            cursor.execute(f"VACUUM ANALYZE {table}")
    return {
        "customers": customers,
        "users": users,
        "guests": guests,
        "orders": orders,
        "lines": lines,
        "generate_s": time.perf_counter() - started,
    }


class PhaseTimer:
    """Wraps functions the rebuild command calls, adding up the time spent in each.

    A phase wrapped with ``inside=`` counts only while that other phase is running (the
    aggregates a fold batch refreshes, not the same function called by the full pass).
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.missing: list[str] = []
        self._active: set[str] = set()
        self._patches: list[tuple[object, str, object]] = []

    def wrap(self, owner: object, names: tuple[str, ...], phase: str, inside: str = "") -> None:
        """Wrap the first of ``names`` that ``owner`` has (the command's names may change)."""
        attr = next((name for name in names if hasattr(owner, name)), None)
        if attr is None:
            self.missing.append(f"{phase} ({' or '.join(names)} not found)")
            return
        original = getattr(owner, attr)

        def timed(*args, **kwargs):
            if inside and inside not in self._active:
                return original(*args, **kwargs)
            nested = phase in self._active
            self._active.add(phase)
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if not nested:
                    self._active.discard(phase)
                    self.seconds[phase] += time.perf_counter() - started
                    self.calls[phase] += 1

        self._patches.append((owner, attr, original))
        setattr(owner, attr, timed)

    def restore(self) -> None:
        for owner, attr, original in reversed(self._patches):
            setattr(owner, attr, original)
        self._patches.clear()


def rebuild(profile_out: str | None = None) -> dict:
    from django.core.management import call_command

    from omnichannel.management.commands import omnichannel_rebuild_profiles as command
    from omnichannel.profiles import identity
    from omnichannel.profiles.models import CustomerProfile, Event

    timer = PhaseTimer()
    # The command's own phases (by the names it imports)...
    timer.wrap(command.Command, ("_backfill",), "backfill")
    timer.wrap(command, ("backfill_registrations",), "backfill.users")
    timer.wrap(command, ("backfill_orders",), "backfill.orders")
    timer.wrap(command, ("fold_event_batch",), "fold")
    timer.wrap(command, ("refresh_aggregates_locked", "refresh_aggregates"), "aggregates")
    # ...and the aggregates that a fold batch refreshes itself, if it does.
    timer.wrap(identity, ("refresh_aggregates",), "fold.aggregates", inside="fold")

    run: Callable[[], None] = lambda: call_command(  # noqa: E731
        "omnichannel_rebuild_profiles", backfill=True, verbosity=0
    )
    profiler = cProfile.Profile() if profile_out else None
    started = time.perf_counter()
    try:
        if profiler:
            profiler.runcall(run)
        else:
            run()
    finally:
        total = time.perf_counter() - started
        timer.restore()
    if profiler:
        profiler.dump_stats(profile_out)
    return {
        "total_s": total,
        "phases_s": dict(timer.seconds),
        "fold_batches": timer.calls.get("fold", 0),
        "untimed_phases": timer.missing,
        "profiles": CustomerProfile.objects.count(),
        "events": Event.objects.count(),
    }


def verify(seed: float) -> dict:
    """Compare profiles with the orders they were built from; return what differs."""
    from django.db import connection
    from django.db.models import Count, Sum

    from omnichannel.profiles.models import CustomerProfile, Event, Identity, IdentityKind

    problems: list[str] = []
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*), coalesce(sum(total_incl_tax), 0) FROM order_order")
        orders, spent = cursor.fetchone()
        cursor.execute("SELECT count(*) FROM auth_user")
        (users,) = cursor.fetchone()
        cursor.execute("SELECT count(DISTINCT guest_email) FROM order_order WHERE user_id IS NULL")
        (guests,) = cursor.fetchone()
        # A sample of registered customers and of guests, picked reproducibly.
        cursor.execute("SELECT setseed(%s)", [seed])
        cursor.execute(
            "SELECT u.id, u.email, count(o.id), sum(o.total_incl_tax) FROM auth_user u"
            " JOIN order_order o ON o.user_id = u.id GROUP BY u.id"
            " ORDER BY random() LIMIT %s",
            [SAMPLE],
        )
        registered = cursor.fetchall()
        cursor.execute(
            "SELECT guest_email, count(*), sum(total_incl_tax) FROM order_order"
            " WHERE user_id IS NULL GROUP BY guest_email ORDER BY random() LIMIT %s",
            [SAMPLE // 3],
        )
        guest_rows = cursor.fetchall()

    totals = CustomerProfile.objects.aggregate(
        n=Count("id"), o=Sum("orders_count"), s=Sum("total_spent")
    )
    if totals["n"] != users + guests:
        problems.append(f"{totals['n']} profiles for {users} users and {guests} guests")
    if totals["o"] != orders:
        problems.append(f"profiles count {totals['o']} orders, the shop has {orders}")
    if totals["s"] != spent:
        problems.append(f"profiles total {totals['s']} spent, the orders {spent}")
    unprocessed = Event.objects.filter(processed_at__isnull=True).count()
    if unprocessed:
        problems.append(f"{unprocessed} events left unprocessed")

    profiles_by_user = CustomerProfile.objects.in_bulk(
        [row[0] for row in registered], field_name="user_id"
    )
    for user_id, _email, count, total in registered:
        profile = profiles_by_user.get(user_id)
        if profile is None:
            problems.append(f"user {user_id}: no profile")
        elif (profile.orders_count, profile.total_spent) != (count, total):
            problems.append(
                f"user {user_id}: profile says {profile.orders_count} orders / "
                f"{profile.total_spent}, the orders say {count} / {total}"
            )
    holders = dict(
        Identity.objects.filter(
            kind=IdentityKind.EMAIL, value__in=[row[0] for row in guest_rows]
        ).values_list("value", "profile_id")
    )
    guest_profiles = CustomerProfile.objects.in_bulk(list(holders.values()))
    for email, count, total in guest_rows:
        profile = guest_profiles.get(holders.get(email, -1))
        if profile is None:
            problems.append(f"guest {email}: no profile")
        elif (profile.orders_count, profile.total_spent) != (count, total):
            problems.append(
                f"guest {email}: profile says {profile.orders_count} orders / "
                f"{profile.total_spent}, the orders say {count} / {total}"
            )
    return {
        "checked_profiles": len(registered) + len(guest_rows),
        "problems": problems[:20],
        "problem_count": len(problems),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, required=True)
    parser.add_argument("--seed", type=float, default=0.42)
    parser.add_argument("--json", help="write the results here (default: stdout)")
    parser.add_argument("--profile-out", help="run the rebuild under cProfile, stats here")
    args = parser.parse_args()
    setup_django()
    result = generate(args.customers, args.seed)
    result.update(rebuild(args.profile_out))
    result["verify"] = verify(args.seed)
    text = json.dumps(result, default=str)
    if args.json:
        Path(args.json).write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
