"""Per-profile scores that segment conditions read: RFM quintiles and channel engagement.

Both are rewritten as a whole, set-based (one DELETE and one ``INSERT ... SELECT`` each, in one
transaction: readers see the old rows until it commits), by the periodic task
``omnichannel.segments.refresh_rfm``. Window functions (NTILE, ROW_NUMBER) need SQLite >= 3.25
or PostgreSQL.

RFM: among profiles with at least one order, ``NTILE(5)`` over the last order time (recency),
the number of orders (frequency) and the total spent (monetary); 5 is best. Equal values get
equal scores: the lowest quintile their value reaches (so when most people have one order,
they all get F = 1, instead of NTILE spreading them over F = 1..3 at random).

RFM groups, from R and F (the standard grid; M does not name a group)::

         F=1          F=2                 F=3                 F=4        F=5
    R=5  New          Potential loyalist  Potential loyalist  Champions  Champions
    R=4  Promising    Potential loyalist  Potential loyalist  Loyal      Loyal
    R=3  About to     About to sleep      Needs attention     Loyal      Loyal
         sleep
    R=2  Hibernating  Hibernating         At risk             At risk    Can't lose them
    R=1  Lost         Hibernating         At risk             At risk    Can't lose them
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import connection, transaction
from django.db.models import Case, F, IntegerField, Q, Value, When
from django.db.models.functions import Coalesce, ExtractHour

from ..conf import app_settings
from ..profiles.models import CustomerProfile
from .models import EngagementScore, RfmGroup, RfmScore


def rfm_group(recency: int, frequency: int) -> RfmGroup:
    """The named group of an (R, F) cell of the grid above."""
    if recency <= 2:
        if frequency == 5:
            return RfmGroup.CANT_LOSE_THEM
        if frequency >= 3:
            return RfmGroup.AT_RISK
        if recency == 1 and frequency == 1:
            return RfmGroup.LOST
        return RfmGroup.HIBERNATING
    if recency == 3:
        if frequency >= 4:
            return RfmGroup.LOYAL
        if frequency == 3:
            return RfmGroup.NEEDS_ATTENTION
        return RfmGroup.ABOUT_TO_SLEEP
    if frequency >= 4:
        return RfmGroup.CHAMPIONS if recency == 5 else RfmGroup.LOYAL
    if frequency >= 2:
        return RfmGroup.POTENTIAL_LOYALISTS
    return RfmGroup.NEW if recency == 5 else RfmGroup.PROMISING


def refresh_rfm(*, now: datetime) -> int:
    """Recompute every RfmScore row in SQL; return how many profiles were scored."""
    quote = connection.ops.quote_name
    profiles = quote(CustomerProfile._meta.db_table)
    table = quote(RfmScore._meta.db_table)
    pk = quote(CustomerProfile._meta.pk.column)
    last, orders, spent = (
        quote(CustomerProfile._meta.get_field(name).column)
        for name in ("last_order_at", "orders_count", "total_spent")
    )
    columns = ", ".join(
        quote(RfmScore._meta.get_field(name).column)
        for name in ("profile", "recency", "frequency", "monetary", "group", "computed_at")
    )
    cells = [(r, f) for r in range(1, 6) for f in range(1, 6)]
    case = " ".join("WHEN r = %s AND f = %s THEN %s" for _ in cells)
    case_params: list[object] = []
    for r, f in cells:
        case_params += [r, f, rfm_group(r, f).value]
    sql = (
        f"INSERT INTO {table} ({columns}) "  # noqa: S608  (identifiers only; values are params)
        f"SELECT id, r, f, m, CASE {case} END, %s FROM ("
        "  SELECT id,"
        "    MIN(r0) OVER (PARTITION BY last_order) AS r,"
        "    MIN(f0) OVER (PARTITION BY orders) AS f,"
        "    MIN(m0) OVER (PARTITION BY spent) AS m"
        "  FROM ("
        f"    SELECT {pk} AS id, {last} AS last_order, {orders} AS orders, {spent} AS spent,"
        f"      NTILE(5) OVER (ORDER BY {last}, {pk}) AS r0,"
        f"      NTILE(5) OVER (ORDER BY {orders}, {pk}) AS f0,"
        f"      NTILE(5) OVER (ORDER BY {spent}, {pk}) AS m0"
        f"    FROM {profiles} WHERE {orders} > 0 AND {last} IS NOT NULL"
        "  ) ranked"
        ") scored"
    )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table}")  # noqa: S608
        cursor.execute(sql, [*case_params, connection.ops.adapt_datetimefield_value(now)])
        return max(cursor.rowcount, 0)


def refresh_engagement(*, now: datetime, window_days: int | None = None) -> int:
    """Recompute every EngagementScore row from the messages of the last ``window_days``.

    Preferred channel: the channel with the highest smoothed engagement rate
    ``engaged / (sent + 2)`` (a channel with 1 of 1 opened does not beat one with 8 of 10),
    ties to more engaged messages, then the channel name. Best hour: the hour (shop time zone)
    of the most first opens (or clicks without an open), ties to the earlier hour. Only
    messages that were sent count; a profile with no engaged message gets no row.
    """
    from ..channels.models import Message

    days = window_days if window_days is not None else app_settings.ENGAGEMENT_WINDOW_DAYS
    engaged = Q(opened_at__isnull=False) | Q(clicked_at__isnull=False)
    messages = (
        Message.objects.filter(
            profile__isnull=False, sent_at__isnull=False, created_at__gte=now - timedelta(days=days)
        )
        .order_by()
        .values(
            pid=F("profile_id"),
            ch=F("channel"),
            eng=Case(When(engaged, then=Value(1)), default=Value(0), output_field=IntegerField()),
            hr=ExtractHour(Coalesce("opened_at", "clicked_at")),
        )
    )
    inner_sql, inner_params = messages.query.sql_with_params()
    quote = connection.ops.quote_name
    table = quote(EngagementScore._meta.db_table)
    columns = ", ".join(
        quote(EngagementScore._meta.get_field(name).column)
        for name in ("profile", "preferred_channel", "best_hour", "engaged_messages", "computed_at")
    )
    # INSERT first, WITH inside: Python's sqlite3 reports rowcount only for statements that
    # start with INSERT/UPDATE/DELETE.
    sql = (
        f"INSERT INTO {table} ({columns}) "  # noqa: S608  (the ORM's SQL; values are params)
        f"WITH m AS ({inner_sql}), "
        "c AS (SELECT pid, ch, COUNT(*) AS sent, SUM(eng) AS eng FROM m GROUP BY pid, ch), "
        "bc AS (SELECT pid, ch, SUM(eng) OVER (PARTITION BY pid) AS total, ROW_NUMBER() OVER ("
        "  PARTITION BY pid ORDER BY (eng * 1.0) / (sent + 2) DESC, eng DESC, ch) AS rn"
        "  FROM c WHERE eng > 0), "
        "h AS (SELECT pid, hr, COUNT(*) AS n FROM m WHERE eng = 1 GROUP BY pid, hr), "
        "bh AS (SELECT pid, hr, ROW_NUMBER() OVER (PARTITION BY pid ORDER BY n DESC, hr) AS rn"
        "  FROM h) "
        "SELECT bc.pid, bc.ch, bh.hr, bc.total, %s FROM bc "
        "LEFT JOIN bh ON bh.pid = bc.pid AND bh.rn = 1 WHERE bc.rn = 1"
    )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table}")  # noqa: S608
        cursor.execute(sql, [*inner_params, connection.ops.adapt_datetimefield_value(now)])
        return max(cursor.rowcount, 0)


def refresh_scores(*, now: datetime) -> dict[str, int]:
    """Both refreshes (what the periodic task runs); rows written by each."""
    return {"rfm": refresh_rfm(now=now), "engagement": refresh_engagement(now=now)}
