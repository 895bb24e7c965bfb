"""Campaign reports against hand-built histories with known sums (tests/analytics/report_data.py).

Every table's totals row must equal the sum of its rows, on SQLite and on PostgreSQL, and the
number of queries must not grow with the number of messages.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from omnichannel.analytics.models import Conversion
from omnichannel.analytics.reports import (
    EARLIEST_DAY,
    LATEST_DAY,
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
from tests.analytics.report_data import (
    DAY1,
    DAY2,
    DAY3,
    PERIOD,
    build_history,
    make_conversion,
    make_message,
)

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
    # Orders are no subset of the clicks: a share of sent only.
    assert (funnel[4].label, funnel[4].of_previous) == ("Converted (orders)", None)
    assert funnel[4].of_sent == pytest.approx(4 / 9)


def test_funnel_never_shows_more_than_the_stage_before(history):
    # Win-back: two push messages, no click (push reports none), one order.
    funnel = campaign_report(history.winback, PERIOD).funnel
    assert [(stage.key, stage.count) for stage in funnel] == [
        ("sent", 2),
        ("delivered", 1),
        ("opened", 0),
        ("clicked", 0),
        ("converted", 1),
    ]
    assert all(stage.of_previous is None or stage.of_previous <= 1 for stage in funnel)
    assert funnel[-1].of_previous is None and funnel[-1].of_sent == pytest.approx(1 / 2)


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


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (date(9999, 12, 25), date(9999, 12, 31)),  # the end's next midnight overflows
        (date(1, 1, 1), date(1, 1, 5)),
        (date(2999, 12, 1), date(3000, 1, 1)),
        (date(1999, 12, 31), date(2000, 1, 2)),
    ],
)
def test_period_refuses_days_outside_the_years_a_report_covers(start, end):
    with pytest.raises(ValueError, match="covers days from 2000-01-01 to 2999-12-31"):
        Period(start, end)


def test_period_at_the_edges_of_the_years_it_covers(db):
    last = Period(date(2999, 12, 1), LATEST_DAY)
    assert last.end_at.year == 3000
    assert campaign_report_totals_sent(last) == 0
    # A default start 30 days before a day near the first is not before the first.
    assert Period.last_days(30, today=date(2000, 1, 5)) == Period(EARLIEST_DAY, date(2000, 1, 5))
    with pytest.raises(ValueError, match="covers days"):
        Period.last_days(30, today=date(9999, 12, 31))


def campaign_report_totals_sent(period: Period) -> int:
    from omnichannel.campaigns.models import Campaign

    campaign = Campaign.objects.create(name="Edge", trigger="welcome")
    return campaign_report(campaign, period, uplift=False).totals.sent


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


def test_revenue_in_another_currency_than_costs_has_no_roi(history, settings):
    # Costs are in GBP (the sandbox's COST_CURRENCY), like the history's orders.
    assert settings.OMNICHANNEL["COST_CURRENCY"] == "GBP"
    report = campaign_report(history.basket, PERIOD, uplift=False)
    assert report.other_currencies == [] and report.totals.roi is not None
    # One SMS order placed in US dollars.
    Conversion.objects.filter(step=history.sms_step, ordered_at=DAY3).update(currency="USD")
    report = campaign_report(history.basket, PERIOD, uplift=False)
    assert report.other_currencies == ["USD"]
    sms, email = report.steps[1], report.steps[0]
    assert sms.revenue_by_currency == {"USD": Decimal("20.00")}
    assert (sms.revenue, sms.roi) == (Decimal("20.00"), None)
    assert email.other_currencies == [] and email.roi is not None
    # The totals still add every order up, and say which currencies they mix.
    assert report.totals.revenue == Decimal("145.50")
    assert report.totals.revenue_by_currency == {"GBP": Decimal("125.50"), "USD": Decimal("20")}
    assert report.totals.roi is None and report.mix.later.roi is None
    assert report.mix.first.roi is not None
    overview = overview_report(PERIOD)
    assert overview.other_currencies == ["USD"]
    by_name = {row.label: row for row in overview.campaigns}
    assert by_name["Basket rescue"].roi is None and by_name["Win-back"].other_currencies == []


def test_currencies_keep_one_query_per_table(history, django_assert_num_queries):
    make_conversion(history.profile, at=DAY1, revenue="5.00")
    Conversion.objects.filter(revenue=Decimal("5.00")).update(currency="EUR")
    with django_assert_num_queries(4):
        report = campaign_report(history.basket, PERIOD, uplift=False)
    assert report.other_currencies == []  # the EUR order is not the campaign's
    with django_assert_num_queries(4):
        assert overview_report(PERIOD).other_currencies == ["EUR"]
