"""Campaign reports against hand-built histories with known sums (tests/analytics/report_data.py).

Every table's totals row must equal the sum of its rows, on SQLite and on PostgreSQL, and the
number of queries must not grow with the number of messages.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from omnichannel.analytics.reports import (
    Period,
    Row,
    campaign_report,
    customer_overview,
    overview_report,
    people_total,
    total_of,
)
from omnichannel.profiles.models import CustomerProfile
from omnichannel.segments.models import RfmGroup, RfmScore
from tests.analytics.report_data import DAY1, DAY2, PERIOD, build_history, make_message

pytestmark = pytest.mark.django_db

COUNTS = ("sent", "delivered", "opened", "clicked", "conversions", "revenue", "cost")


def figures(row: Row) -> tuple:
    return tuple(getattr(row, name) for name in COUNTS)


def assert_totals_are_sums(rows: list[Row], totals: Row) -> None:
    for name in COUNTS:
        assert getattr(totals, name) == sum((getattr(r, name) for r in rows), 0), name


@pytest.fixture
def history():
    return build_history()


def test_campaign_report_by_step_channel_and_variant(history):
    report = campaign_report(history.basket, PERIOD)

    assert [(row.label, figures(row)) for row in report.steps] == [
        ("Step 1: email", (6, 5, 4, 3, 3, Decimal("125.50"), Decimal("0.006"))),
        ("Step 2: sms", (3, 3, 1, 1, 1, Decimal("20.00"), Decimal("0.12"))),
    ]
    assert {row.label: figures(row) for row in report.channels} == {
        "email": (6, 5, 4, 3, 3, Decimal("125.50"), Decimal("0.006")),
        "sms": (3, 3, 1, 1, 1, Decimal("20.00"), Decimal("0.12")),
    }
    assert [(row.label, figures(row)) for row in report.variants] == [
        ("Step 1: email / A", (4, 3, 2, 1, 2, Decimal("80.00"), Decimal("0.004"))),
        ("Step 1: email / B", (2, 2, 2, 2, 1, Decimal("45.50"), Decimal("0.002"))),
        ("Step 2: sms / all", (3, 3, 1, 1, 1, Decimal("20.00"), Decimal("0.12"))),
    ]
    totals = report.totals
    assert figures(totals) == (9, 8, 5, 4, 4, Decimal("145.50"), Decimal("0.126"))
    for rows in (report.steps, report.channels, report.variants):
        assert_totals_are_sums(rows, totals)


def test_derived_figures(history):
    totals = campaign_report(history.basket, PERIOD).totals
    assert totals.ctr == pytest.approx(4 / 8)
    assert totals.open_rate == pytest.approx(5 / 8)
    assert totals.conversion_rate == pytest.approx(4 / 9)
    assert totals.revenue_per_notification == Decimal("16.1667")  # 145.50 / 9
    assert totals.roi == pytest.approx((145.50 - 0.126) / 0.126)


def test_roi_is_none_without_cost_and_rates_none_without_sends(history):
    winback = campaign_report(history.winback, PERIOD)
    assert figures(winback.totals) == (2, 1, 0, 0, 1, Decimal("10.00"), Decimal("0"))
    assert winback.totals.roi is None
    empty = Row(key=None, label="nothing")
    assert (empty.ctr, empty.conversion_rate, empty.revenue_per_notification, empty.roi) == (
        None,
        None,
        None,
        None,
    )


def test_funnel_follows_the_totals(history):
    report = campaign_report(history.basket, PERIOD)
    funnel = report.funnel
    assert [(stage.key, stage.count) for stage in funnel] == [
        ("sent", 9),
        ("delivered", 8),
        ("opened", 5),
        ("clicked", 4),
        ("converted", 4),
    ]
    assert funnel[0].of_previous is None
    assert funnel[2].of_previous == pytest.approx(5 / 8)
    assert funnel[3].of_sent == pytest.approx(4 / 9)


def test_daily_series_covers_every_day_and_sums_to_the_totals(history):
    report = campaign_report(history.basket, PERIOD)
    assert [row.day for row in report.daily] == [
        date(2026, 3, 1),
        date(2026, 3, 2),
        date(2026, 3, 3),
    ]
    # Day 1: A clicked, A opened, B clicked; day 2 (23:59 UTC): A delivered, B clicked, 2 SMS.
    assert [(r.sent, r.opened, r.clicked, r.conversions, r.revenue) for r in report.daily] == [
        (3, 3, 2, 1, Decimal("50.00")),
        (4, 1, 1, 1, Decimal("45.50")),
        (2, 1, 1, 2, Decimal("50.00")),
    ]
    daily = report.daily_totals
    totals = report.totals
    assert (daily.sent, daily.opened, daily.clicked, daily.conversions, daily.revenue) == (
        totals.sent,
        totals.opened,
        totals.clicked,
        totals.conversions,
        totals.revenue,
    )


def test_channel_mix_first_step_against_later_steps(history):
    mix = campaign_report(history.basket, PERIOD).mix
    assert figures(mix.first) == (6, 5, 4, 3, 3, Decimal("125.50"), Decimal("0.006"))
    assert figures(mix.later) == (3, 3, 1, 1, 1, Decimal("20.00"), Decimal("0.12"))
    assert mix.added_revenue_share == pytest.approx(20 / 145.5)
    assert mix.added_conversions_share == pytest.approx(1 / 4)
    assert figures(mix.total) == figures(campaign_report(history.basket, PERIOD).totals)


def test_period_edges_are_whole_utc_days(history):
    # 28 Feb 23:59 is outside 1-3 March, 2 March 23:59 is inside 1-2 March.
    report = campaign_report(history.basket, Period(date(2026, 3, 1), date(2026, 3, 2)))
    assert report.totals.sent == 7
    report = campaign_report(history.basket, Period(date(2026, 2, 28), date(2026, 2, 28)))
    assert figures(report.totals) == (1, 1, 1, 1, 1, Decimal("1000.00"), Decimal("0.001"))


def test_period_validation():
    with pytest.raises(ValueError, match="before the start"):
        Period(date(2026, 3, 2), date(2026, 3, 1))
    with pytest.raises(ValueError, match="at most"):
        Period(date(2020, 1, 1), date(2026, 1, 1))
    assert Period.last_days(30, today=date(2026, 3, 31)) == Period(
        date(2026, 3, 2), date(2026, 3, 31)
    )


def test_overview_rows_channels_mix_and_orders(history):
    report = overview_report(PERIOD)
    assert [(row.label, figures(row)) for row in report.campaigns] == [
        ("Basket rescue", (9, 8, 5, 4, 4, Decimal("145.50"), Decimal("0.126"))),
        ("Win-back", (2, 1, 0, 0, 1, Decimal("10.00"), Decimal("0"))),
    ]
    assert_totals_are_sums(report.campaigns, report.totals)
    assert_totals_are_sums(report.channels, report.totals)
    assert figures(report.channel_totals) == figures(report.totals)
    assert {row.label: row.sent for row in report.channels} == {"email": 6, "sms": 3, "push": 2}
    assert [(m.label, m.first.revenue, m.later.revenue) for m in report.mix] == [
        ("Basket rescue", Decimal("125.50"), Decimal("20.00")),
        ("Win-back", Decimal("10.00"), Decimal("0")),
    ]
    mix_totals = report.mix_totals
    assert figures(mix_totals.total) == figures(report.totals)
    # Orders: 6 in the period (5 attributed to campaigns, one not).
    assert (report.orders, report.attributed_orders) == (6, 5)
    assert report.attributed_revenue == Decimal("155.50")
    assert report.revenue == Decimal("254.50")


def test_a_deleted_step_counts_with_the_later_steps(history):
    history.sms_step.delete()
    report = campaign_report(history.basket, PERIOD)
    assert [row.label for row in report.steps] == ["Step 1: email", "(deleted step)"]
    assert report.mix.later.sent == 3
    assert_totals_are_sums(report.steps, report.totals)


def test_query_count_does_not_grow_with_messages(history, django_assert_num_queries):
    # Messages and conversions grouped by step, variant, channel and day; steps; variants.
    with django_assert_num_queries(4):
        campaign_report(history.basket, PERIOD, uplift=False)
    for _ in range(30):
        make_message(history.basket, history.sms_step, at=DAY1, reached="clicked", cost="0.04")
    with django_assert_num_queries(4):
        report = campaign_report(history.basket, PERIOD, uplift=False)
    assert report.totals.sent == 39
    # Grouped messages, grouped orders (attributed or not), campaign names, first steps.
    with django_assert_num_queries(4):
        overview_report(PERIOD)


def test_customer_overview_by_rfm_devices_and_sources(db):
    def person(group: str | None, devices: int, sources: tuple[bool, bool, bool], spent: str):
        web, app, offline = sources
        profile = CustomerProfile.objects.create(
            devices_count=devices,
            seen_on_web=web,
            seen_on_app=app,
            seen_offline=offline,
            total_spent=Decimal(spent),
            orders_count=1 if group else 0,
        )
        if group:
            RfmScore.objects.create(
                profile=profile, recency=5, frequency=5, monetary=5, group=group, computed_at=DAY2
            )

    person(RfmGroup.CHAMPIONS, 2, (True, True, False), "300.00")
    person(RfmGroup.CHAMPIONS, 5, (True, True, True), "700.00")
    person(RfmGroup.LOST, 0, (False, False, True), "20.00")
    person(None, 1, (True, False, False), "0")
    person(None, 0, (False, False, False), "0")

    overview = customer_overview()
    assert [(r.label, r.people, r.spent, r.orders) for r in overview.rfm] == [
        ("Champions", 2, Decimal("1000.00"), 2),
        ("Lost", 1, Decimal("20.00"), 1),
        ("No orders yet", 2, Decimal("0"), 0),
    ]
    assert [(r.label, r.people) for r in overview.devices] == [
        ("0", 2),
        ("1", 1),
        ("2", 1),
        ("3 or more", 1),
    ]
    assert [(r.label, r.people) for r in overview.sources] == [
        ("0", 1),
        ("1", 2),
        ("2", 1),
        ("3", 1),
    ]
    for rows in (overview.rfm, overview.devices, overview.sources):
        total = people_total(rows)
        assert (total.people, total.spent, total.orders) == (5, Decimal("1020.00"), 3)
    assert overview.rfm[0].average_spent == Decimal("500.00")


def test_total_of_an_empty_table_is_zero():
    total = total_of([])
    assert figures(total) == (0, 0, 0, 0, 0, 0, 0)
    assert total.label == "Total"
