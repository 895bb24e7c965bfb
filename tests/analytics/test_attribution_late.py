"""Late reports that must never be lost, re-clicks, and sends that count as deliveries.

The re-check bookmark (``AttributionState.reports_checked_until``) moves only after a complete
re-check pass without ``since`` and without failures: each test below is a way a late click
used to be skipped for good. Both databases run these tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from omnichannel.analytics.attribution import (
    REPORT_COMMIT_MARGIN,
    attribute_orders,
    rebuild_attribution,
)
from omnichannel.analytics.models import AttributionModel, AttributionState, Conversion
from omnichannel.channels.models import MessageStatus
from omnichannel.channels.status import record_status
from tests.analytics.test_attribution import (
    DAY,
    HOUR,
    MINUTE,
    ORDER_AT,
    RUN_AT,
    attribution,
    influences,
    message,
    order,
    person,
)

pytestmark = pytest.mark.django_db


def bookmark():
    state = AttributionState.objects.first()
    return state.reports_checked_until if state else None


# --- the bookmark ---------------------------------------------------------------------------


def test_a_run_limited_by_since_does_not_skip_a_late_click_of_an_older_order():
    ada = person()
    old = order(ada)
    email = message(ada)
    attribute_orders(now=RUN_AT)
    assert attribution(old) == (AttributionModel.NONE, None)
    assert bookmark() == RUN_AT

    record_status(email, MessageStatus.CLICKED, at=ORDER_AT - HOUR, now=RUN_AT + HOUR)
    order(person(), at=ORDER_AT + 2 * DAY)
    backfill = attribute_orders(now=ORDER_AT + 2 * DAY + HOUR, since=ORDER_AT + DAY)
    assert (backfill.attributed, backfill.rechecked) == (1, 0)
    assert bookmark() == RUN_AT  # a restricted pass does not move it

    regular = attribute_orders(now=ORDER_AT + 2 * DAY + 2 * HOUR)
    assert (regular.rechecked, regular.changed) == (1, 1)
    assert attribution(old) == (AttributionModel.CLICK, email.pk)
    assert bookmark() == ORDER_AT + 2 * DAY + 2 * HOUR


@contextmanager
def failing_writes(statement: str = "UPDATE") -> Iterator[None]:
    """Every ``statement`` (UPDATE, INSERT) of a conversion fails in the database, as a batch
    that loses a race with a profile merge does (an integrity error)."""
    table = connection.ops.quote_name(Conversion._meta.db_table)
    postgres = connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        if postgres:
            cursor.execute(
                "CREATE FUNCTION oc_test_fail() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION "
                "'merged away' USING ERRCODE = 'foreign_key_violation'; END $$ LANGUAGE plpgsql"
            )
            cursor.execute(
                f"CREATE TRIGGER oc_test_fail BEFORE {statement} ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION oc_test_fail()"
            )
        else:
            cursor.execute(
                f"CREATE TRIGGER oc_test_fail BEFORE {statement} ON {table} "
                "BEGIN SELECT RAISE(ABORT, 'merged away'); END"
            )
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TRIGGER oc_test_fail{f' ON {table}' if postgres else ''}")
            if postgres:
                cursor.execute("DROP FUNCTION oc_test_fail()")


def test_a_failed_recheck_batch_is_redone_by_the_next_run():
    ada = person()
    old = order(ada)
    email = message(ada)
    attribute_orders(now=RUN_AT)
    record_status(email, MessageStatus.CLICKED, at=ORDER_AT - HOUR, now=RUN_AT + HOUR)
    order(person(), at=RUN_AT + 2 * HOUR)

    with failing_writes():
        failed = attribute_orders(now=RUN_AT + 3 * HOUR)
    assert (failed.failed_batches, failed.rechecked, failed.attributed) == (1, 0, 1)
    assert bookmark() == RUN_AT

    later = attribute_orders(now=RUN_AT + 4 * HOUR)
    assert (later.rechecked, later.changed, later.failed_batches) == (1, 1, 0)
    assert attribution(old) == (AttributionModel.CLICK, email.pk)
    assert bookmark() == RUN_AT + 4 * HOUR


def test_a_rebuild_batch_that_loses_a_race_is_retried_then_left_as_it_was():
    ada = person()
    placed = order(ada)
    clicked = message(ada, clicked=ORDER_AT - HOUR)
    attribute_orders(now=RUN_AT)
    out, errors = StringIO(), StringIO()

    with failing_writes("INSERT"):
        call_command("omnichannel_attribute_orders", "--rebuild", stdout=out, stderr=errors)

    assert "0 orders attributed" in out.getvalue()
    assert "1 batches met a concurrent profile merge; run again." in errors.getvalue()
    # The batch's transaction rolled back: the old conversion is still there.
    assert attribution(placed) == (AttributionModel.CLICK, clicked.pk)


def test_a_run_that_stops_early_leaves_the_rest_for_the_next_run():
    people = [person() for _ in range(3)]
    orders = [order(someone) for someone in people]
    emails = [message(someone) for someone in people]
    attribute_orders(now=RUN_AT)
    for email in emails:
        record_status(email, MessageStatus.CLICKED, at=ORDER_AT - HOUR, now=RUN_AT + HOUR)

    first = attribute_orders(now=RUN_AT + 2 * HOUR, batch_size=1, max_batches=1)
    assert (first.rechecked, first.batches) == (1, 1)
    assert bookmark() == RUN_AT

    second = attribute_orders(now=RUN_AT + 3 * HOUR, batch_size=1)
    assert (second.rechecked, second.changed) == (2, 2)
    assert [attribution(placed) for placed in orders] == [
        (AttributionModel.CLICK, email.pk) for email in emails
    ]
    assert bookmark() == RUN_AT + 3 * HOUR
    assert attribute_orders(now=RUN_AT + 4 * HOUR).rechecked == 0


def test_new_orders_attributed_by_another_run_do_not_hide_a_late_click():
    # The old scan started at the latest attributed_at: any run that attributed a new order
    # (an overlapping one, a backfill) moved it past the late click.
    ada = person()
    old = order(ada)
    email = message(ada)
    attribute_orders(now=RUN_AT)
    record_status(email, MessageStatus.CLICKED, at=ORDER_AT - HOUR, now=RUN_AT + HOUR)
    order(person(), at=RUN_AT + 2 * HOUR)
    # Another run's new-order batch, computed later than the click was recorded.
    attribute_orders(now=RUN_AT + 3 * HOUR, since=RUN_AT + HOUR)

    assert attribute_orders(now=RUN_AT + 4 * HOUR).changed == 1
    assert attribution(old) == (AttributionModel.CLICK, email.pk)


def test_reports_recorded_within_the_margin_before_the_bookmark_are_read_again():
    ada = person()
    placed = order(ada)
    email = message(ada)
    attribute_orders(now=RUN_AT)
    # Recorded (by a clock a little behind) just before the bookmark, committed after.
    record_status(email, MessageStatus.CLICKED, at=ORDER_AT - HOUR, now=RUN_AT - MINUTE / 2)
    Conversion.objects.filter(order_event=placed).update(attributed_at=RUN_AT - MINUTE)

    assert attribute_orders(now=RUN_AT + REPORT_COMMIT_MARGIN).changed == 1
    assert attribution(placed) == (AttributionModel.CLICK, email.pk)


# --- the latest engagement before the order ---------------------------------------------------


def test_a_message_clicked_again_counts_by_its_latest_click_before_the_order():
    ada = person()
    placed = order(ada)
    email = message(ada, clicked=ORDER_AT - 6 * DAY)
    record_status(email, MessageStatus.CLICKED, at=ORDER_AT - HOUR, now=ORDER_AT - HOUR)
    record_status(email, MessageStatus.CLICKED, at=ORDER_AT + HOUR, now=ORDER_AT + HOUR)

    attribute_orders(now=ORDER_AT + 2 * HOUR)

    conversion = Conversion.objects.get(order_event=placed)
    assert (conversion.model, conversion.message_id) == (AttributionModel.CLICK, email.pk)
    assert conversion.touched_at == ORDER_AT - HOUR


def test_a_late_report_of_a_re_click_moves_the_order_into_the_click_window():
    ada = person()
    placed = order(ada)
    email = message(ada, clicked=ORDER_AT - 6 * DAY)
    attribute_orders(now=RUN_AT)
    assert attribution(placed) == (AttributionModel.NONE, None)

    record_status(email, MessageStatus.CLICKED, at=ORDER_AT - HOUR, now=RUN_AT + HOUR)
    result = attribute_orders(now=RUN_AT + 2 * HOUR)

    assert (result.rechecked, result.changed) == (1, 1)
    assert attribution(placed) == (AttributionModel.CLICK, email.pk)
    assert Conversion.objects.get(order_event=placed).touched_at == ORDER_AT - HOUR


def test_a_late_report_of_an_earlier_click_leaves_the_same_answer_as_a_rebuild():
    ada = person()
    placed = order(ada)
    email = message(ada, clicked=ORDER_AT - 2 * DAY)
    other = message(ada, opened=ORDER_AT - HOUR)
    attribute_orders(now=RUN_AT)
    assert attribution(placed) == (AttributionModel.CLICK, email.pk)

    # The first click, outside the window, reported late: clicked_at moves to it.
    record_status(email, MessageStatus.CLICKED, at=ORDER_AT - 6 * DAY, now=RUN_AT + HOUR)
    attribute_orders(now=RUN_AT + 2 * HOUR)
    stored = Conversion.objects.values_list("model", "message_id", "touched_at").get()
    assert stored == (AttributionModel.CLICK, email.pk, ORDER_AT - 2 * DAY)
    assert influences(placed) == {(other.pk, AttributionModel.OPEN)}

    rebuild_attribution(now=RUN_AT + 3 * HOUR)
    assert Conversion.objects.values_list("model", "message_id", "touched_at").get() == stored


# --- sends that count as deliveries -------------------------------------------------------------


def test_a_push_counts_by_its_send_and_an_email_does_not():
    ada = person()
    placed = order(ada)
    push = message(ada, "push")
    email = message(ada, "email")
    record_status(push, MessageStatus.SENT, at=ORDER_AT - 2 * HOUR, now=ORDER_AT - 2 * HOUR)
    record_status(email, MessageStatus.SENT, at=ORDER_AT - HOUR, now=ORDER_AT - HOUR)

    attribute_orders(now=RUN_AT)

    conversion = Conversion.objects.get(order_event=placed)
    assert (conversion.model, conversion.message_id, conversion.channel) == (
        AttributionModel.DELIVERY,
        push.pk,
        "push",
    )
    assert conversion.touched_at == ORDER_AT - 2 * HOUR
    assert influences(placed) == set()


def test_a_send_recorded_after_the_run_is_re_checked():
    ada = person()
    placed = order(ada)
    telegram = message(ada, "telegram")
    attribute_orders(now=RUN_AT)
    assert attribution(placed) == (AttributionModel.NONE, None)

    # A long send run: handed to the provider before the order, recorded after the run.
    record_status(telegram, MessageStatus.SENT, at=ORDER_AT - MINUTE, now=RUN_AT + MINUTE)
    assert attribute_orders(now=RUN_AT + HOUR).changed == 1
    assert attribution(placed) == (AttributionModel.DELIVERY, telegram.pk)


def test_the_backends_say_whether_they_report_deliveries():
    from omnichannel.channels.registry import get_channels

    reports = {name: channel.reports_deliveries for name, channel in get_channels().items()}
    assert reports["email"] and reports["sms"]
    assert not reports["push"] and not reports["webpush"] and not reports["telegram"]


def test_the_task_skips_while_the_lock_is_held_on_any_database():
    """In one session: the cache lock on SQLite; on PostgreSQL the advisory lock is the
    session's own (re-entrant), so the PostgreSQL case runs in
    test_attribution_concurrency.py with a second session."""
    from omnichannel.analytics.tasks import attribute_orders_task, attribution_lock

    order(person(), at=RUN_AT)
    with attribution_lock() as acquired:
        assert acquired
        if connection.vendor != "postgresql":
            assert attribute_orders_task() == {"skipped": 1}
    assert attribute_orders_task()["attributed"] == 1
    with attribution_lock() as again:  # released
        assert again


def _late_clicks(count: int, *, recorded: object) -> None:
    """``count`` orders attributed to nothing, then each one's email reported clicked."""
    emails = []
    for _ in range(count):
        someone = person()
        order(someone)
        emails.append(message(someone))
    attribute_orders(now=recorded - HOUR / 2)
    for email in emails:
        record_status(email, MessageStatus.CLICKED, at=ORDER_AT - HOUR, now=recorded)


def test_a_recheck_batch_costs_the_same_queries_whatever_its_size():
    _late_clicks(2, recorded=RUN_AT + HOUR)
    with CaptureQueriesContext(connection) as small:
        assert attribute_orders(now=RUN_AT + 2 * HOUR, batch_size=100).changed == 2
    _late_clicks(20, recorded=RUN_AT + 3 * HOUR)
    with CaptureQueriesContext(connection) as large:
        assert attribute_orders(now=RUN_AT + 4 * HOUR, batch_size=100).changed == 20
    assert len(large) == len(small)


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="SQLite compares UTC text dates: no time zones"
)
def test_windows_are_seconds_even_in_a_session_time_zone_with_a_dst_change():
    # The UK moved its clocks forward on 2026-03-29: "5 days" before 2026-03-30 10:00 BST in
    # calendar days is 2026-03-25 10:00 GMT, an hour too late. The window is 5 x 86,400 s.
    ordered = datetime(2026, 3, 30, 9, 0, tzinfo=UTC)
    ada = person()
    edge = message(ada, clicked=ordered - 5 * DAY)
    placed = order(ada, at=ordered)
    with connection.cursor() as cursor:
        cursor.execute("SET TIME ZONE 'Europe/London'")
    try:
        attribute_orders(now=ordered + HOUR)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET TIME ZONE 'UTC'")
    assert attribution(placed) == (AttributionModel.CLICK, edge.pk)


def test_the_command_refuses_to_run_while_the_lock_is_held():
    from omnichannel.analytics.tasks import attribution_lock

    order(person(), at=RUN_AT)
    if connection.vendor == "postgresql":
        pytest.skip("the advisory lock is re-entrant in one session: see the concurrency tests")
    with attribution_lock(), pytest.raises(CommandError, match="in progress"):
        call_command("omnichannel_attribute_orders", stdout=StringIO())
    assert not Conversion.objects.exists()
    call_command("omnichannel_attribute_orders", stdout=StringIO())
    assert Conversion.objects.count() == 1
