"""The campaign reports in the admin, through the test client on SQLite and PostgreSQL.

The history is tests/analytics/report_data.py (1-3 March 2026, sums known in advance). Time
is 3 March 2026 noon UTC, so the default period (the last 30 days) covers it.
"""

from __future__ import annotations

import csv
import html
import io
import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import time_machine
from django.contrib.auth.models import Permission
from django.urls import reverse

from omnichannel.campaigns.models import Campaign
from tests.analytics.report_data import build_history

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 3, 12, 0, tzinfo=UTC)
OVERVIEW = reverse("admin:omnichannel_campaign_reports")
CUSTOMERS = reverse("admin:omnichannel_campaign_reports_customers")
PERIOD = {"start": "2026-03-01", "end": "2026-03-03"}


@pytest.fixture(autouse=True)
def frozen_time():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def history():
    return build_history()


@pytest.fixture
def boss(client, django_user_model):
    user = django_user_model.objects.create_superuser("boss", "boss@example.com", "x")
    client.force_login(user)
    return client


def report_url(campaign: Campaign) -> str:
    return reverse("admin:omnichannel_campaign_report", args=[campaign.pk])


def table_html(page: str, name: str) -> str:
    match = re.search(
        rf'<div class="module oc-report-table" id="oc-table-{name}".*?</table>', page, re.S
    )
    assert match, f"no table {name}"
    return match.group(0)


def cells(fragment: str) -> list[str]:
    return [
        html.unescape(re.sub(r"<[^>]+>", "", text)).strip()
        for text in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", fragment, re.S)
    ]


def page_total(page: str, name: str) -> list[str]:
    tfoot = re.search(r"<tfoot>(.*?)</tfoot>", table_html(page, name), re.S)
    assert tfoot, f"table {name} has no totals row"
    return cells(tfoot.group(1))


def read_csv(response) -> list[list[str]]:
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/csv")
    return list(csv.reader(io.StringIO(response.content.decode())))


def same_number(shown: str, exported: str) -> bool:
    """A page cell (1,234.50 / 12.5% / -) and its CSV value (1234.5 / 0.1250 / '') agree."""
    if shown == "-":
        return exported == ""
    if shown.endswith("%"):
        return abs(Decimal(shown[:-1].replace(",", "")) - Decimal(exported) * 100) <= Decimal(
            "0.05"
        )
    return Decimal(shown.replace(",", "")) == Decimal(exported)


def assert_csv_matches_page(
    client, url: str, query: dict[str, str], page: str, name: str
) -> list[list[str]]:
    rows = read_csv(client.get(url, {**query, "format": "csv", "table": name}))
    shown = page_total(page, name)
    exported = rows[-1]
    assert exported[0].lower() == shown[0].lower() == "total"
    assert len(shown) == len(exported) == len(rows[0])
    for header, on_page, in_csv in zip(rows[0][1:], shown[1:], exported[1:], strict=True):
        assert same_number(on_page, in_csv), (name, header, on_page, in_csv)
    return rows


def test_campaign_report_shows_the_figures_charts_and_totals(boss, history):
    response = boss.get(report_url(history.basket))
    assert response.status_code == 200
    page = response.content.decode()
    assert "Report: Basket rescue" in page
    # The default period: the 30 days ending today.
    assert 'value="2026-02-02"' in page and 'value="2026-03-03"' in page
    # 28 February is inside the default period: the earlier click and its 1000.00 order count.
    assert page_total(page, "steps")[:9] == [
        "Total",
        "10",
        "9",
        "6",
        "5",
        "55.6%",
        "5",
        "50.0%",
        "1,145.50",
    ]
    page = boss.get(report_url(history.basket), PERIOD).content.decode()
    steps = cells(table_html(page, "steps"))
    assert steps[12:24] == [
        "Step 1: email",
        "6",
        "5",
        "4",
        "3",
        "60.0%",
        "3",
        "50.0%",
        "125.50",
        "20.9167",
        "0.0060",
        "2,091,566.7%",
    ]
    assert page.count('<svg xmlns="http://www.w3.org/2000/svg" class="oc-chart') == 3
    assert "Funnel: Basket rescue" in page and "Messages and conversions per day" in page
    assert 'role="img"' in page
    for name in ("steps", "channels", "variants", "daily", "mix", "funnel"):
        assert f'id="oc-table-{name}"' in page


def test_campaign_csv_totals_equal_the_page_totals(boss, history):
    url = report_url(history.basket)
    query = {"start": "2026-03-01", "end": "2026-03-03"}
    page = boss.get(url, query).content.decode()
    for name in ("steps", "channels", "variants"):
        rows = assert_csv_matches_page(boss, url, query, page, name)
        body = rows[1:-1]
        for column in range(1, 5):  # sent .. clicked: the total is the sum of the rows
            assert int(rows[-1][column]) == sum(int(row[column]) for row in body)
        assert Decimal(rows[-1][8]) == sum(Decimal(row[8]) for row in body) == Decimal("145.50")
    assert rows[0] == [
        "label",
        "sent",
        "delivered",
        "opened",
        "clicked",
        "ctr",
        "conversions",
        "conversion_rate",
        "revenue",
        "revenue_per_notification",
        "cost",
        "roi",
    ]
    daily = assert_csv_matches_page(boss, url, query, page, "daily")
    assert [row[0] for row in daily] == ["day", "2026-03-01", "2026-03-02", "2026-03-03", "total"]
    funnel = read_csv(boss.get(url, {**query, "format": "csv", "table": "funnel"}))
    assert [(row[0], row[1]) for row in funnel[1:]] == [
        ("Sent", "9"),
        ("Delivered", "8"),
        ("Opened", "5"),
        ("Clicked", "4"),
        ("Converted (orders)", "4"),
    ]
    mix = read_csv(boss.get(url, {**query, "format": "csv", "table": "mix"}))
    assert mix[1][:4] == ["Basket rescue", "6", "3", "125.50"]
    response = boss.get(url, {**query, "format": "csv", "table": "steps"})
    assert response["Content-Disposition"] == (
        f'attachment; filename="campaign-{history.basket.pk}-steps-2026-03-01-2026-03-03.csv"'
    )


def test_overview_lists_campaigns_with_links(boss, history):
    page = boss.get(OVERVIEW, PERIOD).content.decode()
    campaigns = cells(table_html(page, "campaigns"))
    assert "Basket rescue" in campaigns and "Win-back" in campaigns
    link = report_url(history.basket) + "?start=2026-03-01&amp;end=2026-03-03"
    assert f'<a href="{link}">Basket rescue</a>' in page
    for name in ("campaigns", "channels", "mix"):
        assert_csv_matches_page(boss, OVERVIEW, PERIOD, page, name)
    assert page_total(page, "campaigns")[1] == "11"
    assert "6</strong> orders in the period" in page
    assert f'href="{CUSTOMERS}"' in page


def test_customers_page_and_its_csv(boss, history):
    page = boss.get(CUSTOMERS).content.decode()
    # One profile in the history, without orders.
    assert page_total(page, "rfm")[1] == "1"
    assert "No orders yet" in cells(table_html(page, "rfm"))
    for name in ("rfm", "devices", "sources"):
        assert_csv_matches_page(boss, CUSTOMERS, {}, page, name)
    response = boss.get(CUSTOMERS, {"format": "csv", "table": "rfm"})
    assert response["Content-Disposition"] == 'attachment; filename="customers-rfm-2026-03-03.csv"'
    response = boss.get(CUSTOMERS, {"format": "csv", "table": "campaigns"})
    assert response.status_code == 400
    assert "rfm, devices, sources" in response.content.decode()


def test_bad_dates_show_a_form_error_never_a_500(boss, history):
    url = report_url(history.basket)
    for query, message in [
        ({"start": "2026-13-01"}, "Enter a valid date."),
        ({"start": "yesterday", "end": "2026-03-01"}, "Enter a valid date."),
        ({"start": "2026-03-05", "end": "2026-03-01"}, "is before the start date"),
        ({"start": "2020-01-01", "end": "2026-03-01"}, "at most 731 days"),
        # Days whose arithmetic would overflow (the next midnight, 30 days back).
        ({"start": "9999-12-25", "end": "9999-12-31"}, "Choose a day from 2000-01-01"),
        ({"end": "9999-12-31"}, "Choose a day from 2000-01-01 to 2999-12-31"),
        ({"end": "0001-01-05"}, "Choose a day from 2000-01-01 to 2999-12-31"),
        ({"start": "0001-01-01"}, "Choose a day from 2000-01-01 to 2999-12-31"),
    ]:
        for target in (url, OVERVIEW):
            response = boss.get(target, query)
            assert response.status_code == 400, (target, query)
            page = response.content.decode()
            assert "These dates cannot make a report" in page
            assert message in html.unescape(page)
            assert 'id="oc-table-steps"' not in page and 'id="oc-table-campaigns"' not in page
        response = boss.get(url, {**query, "format": "csv", "table": "steps"})
        assert response.status_code == 400
        assert message in response.content.decode()


def test_only_the_start_or_the_end_given(boss, history):
    page = boss.get(report_url(history.basket), {"start": "2026-03-02"}).content.decode()
    assert "From 2 Mar 2026 to 3 Mar 2026" in page
    page = boss.get(report_url(history.basket), {"end": "2026-03-01"}).content.decode()
    assert "From 31 Jan 2026 to 1 Mar 2026" in page


def test_unknown_csv_table_is_a_clear_400(boss, history):
    response = boss.get(report_url(history.basket), {"format": "csv", "table": "nope"})
    assert response.status_code == 400
    text = response.content.decode()
    assert "Unknown table 'nope'" in text and "steps, channels, variants" in text


def test_csv_cells_cannot_become_formulas(boss, history):
    history.winback.name = '=HYPERLINK("http://evil")'
    history.winback.save()
    rows = read_csv(
        boss.get(
            OVERVIEW,
            {"start": "2026-03-01", "end": "2026-03-03", "format": "csv", "table": "campaigns"},
        )
    )
    assert [row[0] for row in rows if "HYPERLINK" in row[0]] == ['\'=HYPERLINK("http://evil")']


def test_missing_campaign_is_404(boss, history):
    assert boss.get(reverse("admin:omnichannel_campaign_report", args=[999999])).status_code == 404
    assert boss.get(reverse("admin:omnichannel_campaign_report", args=["x1"])).status_code == 404


def test_anonymous_and_staff_without_permission_are_kept_out(client, django_user_model, history):
    response = client.get(report_url(history.basket))
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert client.get(OVERVIEW).status_code == 302
    staff = django_user_model.objects.create_user("clerk", password="x", is_staff=True)
    client.force_login(staff)
    assert client.get(report_url(history.basket)).status_code == 403
    assert client.get(OVERVIEW).status_code == 403
    assert client.get(CUSTOMERS).status_code == 403
    csv_query = {"format": "csv", "table": "steps"}
    assert client.get(report_url(history.basket), csv_query).status_code == 403
    # A customer (not staff) goes to the login page.
    customer = django_user_model.objects.create_user("shopper", password="x")
    client.force_login(customer)
    assert client.get(OVERVIEW).status_code == 302


def test_view_permission_on_campaigns_shows_reports_customers_need_their_own(
    client, django_user_model, history
):
    staff = django_user_model.objects.create_user("analyst", password="x", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_campaign"))
    client.force_login(staff)
    assert client.get(report_url(history.basket)).status_code == 200
    page = client.get(OVERVIEW).content.decode()
    assert 'id="oc-table-campaigns"' in page and CUSTOMERS not in page
    assert client.get(CUSTOMERS).status_code == 403
    assert client.get(CUSTOMERS, {"format": "csv", "table": "rfm"}).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_customerprofile"))
    staff = django_user_model.objects.get(pk=staff.pk)  # drop the permission cache
    client.force_login(staff)
    assert CUSTOMERS in client.get(OVERVIEW).content.decode()
    assert 'id="oc-table-rfm"' in client.get(CUSTOMERS).content.decode()
    # Profiles alone are not enough: the reports are the campaigns'.
    viewer = django_user_model.objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_customerprofile"))
    client.force_login(viewer)
    assert client.get(CUSTOMERS).status_code == 403


def test_campaign_pages_link_to_the_reports(boss, history):
    change = boss.get(reverse("admin:omnichannel_campaign_change", args=[history.basket.pk]))
    assert f'href="{report_url(history.basket)}"' in change.content.decode()
    changelist = boss.get(reverse("admin:omnichannel_campaign_changelist"))
    assert f'href="{OVERVIEW}"' in changelist.content.decode()


def test_report_of_a_campaign_without_messages(boss, db):
    quiet = Campaign.objects.create(name="Quiet", trigger="welcome")
    response = boss.get(report_url(quiet))
    assert response.status_code == 200
    page = response.content.decode()
    assert "Nothing in this period." in page
    assert page.count('<svg xmlns="http://www.w3.org/2000/svg" class="oc-chart') == 3
    assert page_total(page, "steps")[1:3] == ["0", "0"]


def test_uplift_block_shows_the_arms_and_exports_them(boss, history):
    from omnichannel.campaigns.models import Enrollment
    from omnichannel.profiles.models import CustomerProfile
    from tests.analytics.report_data import DAY1, make_conversion

    history.basket.holdout_percent = 50
    history.basket.save()
    people = [CustomerProfile.objects.create(first_name=f"P{n}") for n in range(4)]
    for n, person in enumerate(people):
        Enrollment.objects.create(
            campaign=history.basket, profile=person, holdout=n < 2, enrolled_at=DAY1
        )
    make_conversion(people[3], at=DAY1.replace(hour=15), revenue="40.00")

    url = report_url(history.basket)
    page = boss.get(url, PERIOD).content.decode()
    assert 'id="oc-table-uplift_arms"' in page and 'id="oc-table-uplift"' in page
    assert (
        "Treated (everyone not held out) against Holdout (no message): no significant difference"
        in html.unescape(page)
    )
    assert "conversion window (7 days)" in html.unescape(page)
    assert "Intervals at 95% confidence" in page
    arms = read_csv(boss.get(url, {**PERIOD, "format": "csv", "table": "uplift_arms"}))
    by_kind = {row[1]: row for row in arms[1:]}
    assert by_kind["holdout"][2:4] == ["2", "0"]
    assert by_kind["treated"][2:4] == ["2", "1"]
    assert by_kind["treated"][5] == "40.00"
    comparisons = read_csv(boss.get(url, {**PERIOD, "format": "csv", "table": "uplift"}))
    assert comparisons[1][:2] == ["Treated (everyone not held out)", "Holdout (no message)"]
    header = comparisons[0]
    assert header[:9] == [
        "arm",
        "baseline",
        "diff",
        "ci_low",
        "ci_high",
        "relative",
        "p_value",
        "significant",
        "revenue_diff",
    ]
    assert header[9:] == ["revenue_ci_low", "revenue_ci_high", "note"]
    treated = dict(zip(header, comparisons[1], strict=True))
    assert treated["significant"] == "no"
    # 1 of 2 against 0 of 2: a wide interval from below 0. Each bound is a number of its
    # own, never given the anti-formula quote, negative or not.
    assert treated["diff"] == "0.5000"
    assert Decimal(treated["ci_low"]) < 0 < Decimal("0.5") < Decimal(treated["ci_high"])
    assert Decimal(treated["revenue_ci_low"]) < 0 < Decimal(treated["revenue_ci_high"])


def test_a_default_start_near_the_first_day_is_that_day(boss, history):
    page = boss.get(report_url(history.basket), {"end": "2000-01-05"}).content.decode()
    assert "From 1 Jan 2000 to 5 Jan 2000" in page


def test_funnel_converted_is_a_share_of_sent_only_with_a_caption(boss, history):
    # Win-back: two push messages, none clicked, one order.
    url = report_url(history.winback)
    page = boss.get(url, PERIOD).content.decode()
    funnel = table_html(page, "funnel")
    assert "it is a share of sent only" in funnel and "can exceed the clicks" in funnel
    rows = read_csv(boss.get(url, {**PERIOD, "format": "csv", "table": "funnel"}))
    assert rows[0] == ["label", "count", "of_previous", "of_sent"]
    assert rows[-2][:3] == ["Clicked", "0", ""]
    assert rows[-1] == ["Converted (orders)", "1", "", "0.5000"]
    shown = cells(funnel)
    converted = shown.index("Converted (orders)")
    assert shown[converted : converted + 4] == ["Converted (orders)", "1", "-", "50.0%"]
    for row in rows[1:]:
        assert row[2] == "" or Decimal(row[2]) <= 1


def test_mixed_currencies_are_warned_about_and_have_no_roi(boss, history):
    from omnichannel.analytics.models import Conversion

    query = {"start": "2026-03-01", "end": "2026-03-03"}
    page = boss.get(report_url(history.basket), query).content.decode()
    assert "oc-currency-warning" not in page
    Conversion.objects.filter(step=history.sms_step).update(currency="USD")
    page = html.unescape(boss.get(report_url(history.basket), query).content.decode())
    assert (
        "Revenue mixes currencies: orders in USD are added to those in GBP (the currency of "
        "costs)" in page
    )
    steps = cells(table_html(page, "steps"))
    assert steps[12] == "Step 1: email" and steps[23] != "-"
    assert steps[24] == "Step 2: sms" and steps[35] == "-"
    assert page_total(page, "steps")[11] == "-"
    rows = read_csv(
        boss.get(report_url(history.basket), {**query, "format": "csv", "table": "steps"})
    )
    assert [row[-1] for row in rows[1:]][1:] == ["", ""]
    overview = html.unescape(boss.get(OVERVIEW, query).content.decode())
    assert "orders in USD are added to those in GBP" in overview


def variant_comparisons(names: list[str], winners: dict[str, str]):
    """A real uplift report of one step's variants (the first is the control)."""
    from omnichannel.analytics.uplift import ArmResult, Comparison, UpliftReport

    arms = [ArmResult(f"Step 1: {name}", "variant", 1, n) for n, name in enumerate(names)]
    comparisons = []
    for arm in arms[1:]:
        comparison = Comparison(arm=arm, baseline=arms[0], diff=0.0, note="")
        outcome = winners.get(arm.label[8:], "")
        comparison.significant = bool(outcome)
        comparison.diff = {"better": 0.05, "worse": -0.05}.get(outcome, 0.01)
        if hasattr(comparison, "winner"):
            comparison.winner = {"better": arm, "worse": arms[0]}.get(outcome)
        comparisons.append(comparison)
    return UpliftReport(
        campaign=None, start=None, end=None, confidence=0.95, arms=arms, comparisons=comparisons
    )


def test_verdicts_say_which_arm_did_better():
    from omnichannel.admin.reports import several_variants_note, verdict

    report = variant_comparisons(["A", "B", "C", "D"], {"B": "better", "C": "worse"})
    assert [(v.outcome, v.text) for v in map(verdict, report.comparisons)] == [
        ("better", "Step 1: B beats Step 1: A (significant)"),
        ("worse", "Step 1: C does worse than Step 1: A (significant)"),
        ("none", "Step 1: D against Step 1: A: no significant difference"),
    ]
    note = several_variants_note(report)
    assert "Several variants are compared with the same control (up to 3)" in note
    assert "about 14%, not 5%" in note
    assert several_variants_note(variant_comparisons(["A", "B"], {})) == ""


def test_verdict_from_the_sign_when_there_is_no_winner_attribute():
    from dataclasses import dataclass

    from omnichannel.admin.reports import verdict

    @dataclass
    class OlderComparison:  # an uplift module without Comparison.winner
        arm: str
        baseline: str
        diff: float | None
        significant: bool
        note: str = ""

    assert verdict(OlderComparison("B", "A", -0.04, True)).text == (
        "B does worse than A (significant)"
    )
    assert verdict(OlderComparison("B", "A", 0.04, True)).text == "B beats A (significant)"
    assert verdict(OlderComparison("B", "A", 0.04, False)).outcome == "none"
    assert verdict(OlderComparison("B", "A", None, False)).outcome == "none"


def test_csv_text_cells_are_quoted_numbers_never():
    from omnichannel.admin.reports import Column, Table, csv_safe

    assert [csv_safe(t) for t in ("=1+1", "+x", "-x", "@x", "\tx", "\rx", "a-b", "")] == [
        "'=1+1",
        "'+x",
        "'-x",
        "'@x",
        "'\tx",
        "'\rx",
        "a-b",
        "",
    ]
    table = Table(
        "t",
        "T",
        [
            Column("label", "Label", lambda row: row[0], numeric=False),
            Column("low", "Low", lambda row: row[1]),
        ],
        [("-5", "-0.25"), ("ok", "-1")],
    )
    assert list(table.csv_rows()) == [["label", "low"], ["'-5", "-0.25"], ["ok", "-1"]]
