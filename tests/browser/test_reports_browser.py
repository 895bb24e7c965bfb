"""Staff open a campaign's report in a real browser: period form, charts, tables, CSV, phone.

Drives Debian's chromium with Playwright against pytest-django's live server (the fixture of
test_admin_clickthrough.py), on the hand-built history of tests/analytics/report_data.py.
Screenshots of the report (desktop and phone widths) are left in var/screenshots/.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from django.urls import reverse

from tests.analytics.report_data import build_history
from tests.browser.test_admin_clickthrough import SCREENSHOTS, browser  # noqa: F401  (fixture)

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - the browser fixture skips
    expect = None

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

STAFF_PASSWORD = "staff-horse-9"


def test_staff_read_a_campaign_report_with_its_charts(
    browser,  # noqa: F811
    live_server,
    django_user_model,
    tmp_path: Path,
):
    history = build_history()
    django_user_model.objects.create_superuser("boss", "boss@example.com", STAFF_PASSWORD)
    base = live_server.url
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.goto(base + reverse("admin:index"))
    page.fill("#id_username", "boss")
    page.fill("#id_password", STAFF_PASSWORD)
    page.locator("input[type=submit]").click()
    page.wait_for_url(f"**{reverse('admin:index')}")

    # --- from the campaign list to the overview, then to the campaign's page and its report ----
    page.goto(base + reverse("admin:omnichannel_campaign_changelist"))
    page.locator("a.oc-campaign-reports").click()
    page.wait_for_url(f"**{reverse('admin:omnichannel_campaign_reports')}*")
    expect(page.locator("h1")).to_contain_text("Campaign reports")
    page.goto(base + reverse("admin:omnichannel_campaign_change", args=[history.basket.pk]))
    page.locator("a.oc-campaign-report").click()
    page.wait_for_url("**/report/*")
    expect(page.locator("h1")).to_contain_text("Report: Basket rescue")

    # --- a wrong period is explained on the page ---------------------------------------------
    page.fill("#id_start", "2026-03-05")
    page.fill("#id_end", "2026-03-01")
    page.locator("#oc-report-period input[type=submit]").click()
    expect(page.locator("#oc-report-period")).to_contain_text("is before the start date")
    expect(page.locator("svg.oc-chart")).to_have_count(0)

    # --- the history's three days --------------------------------------------------------------
    page.fill("#id_start", "2026-03-01")
    page.fill("#id_end", "2026-03-03")
    page.locator("#oc-report-period input[type=submit]").click()
    expect(page.locator(".oc-report-period-shown")).to_contain_text("From 1 Mar 2026 to 3 Mar 2026")
    charts = page.locator("svg.oc-chart")
    expect(charts).to_have_count(3)
    for n in range(3):
        expect(charts.nth(n)).to_be_visible()
    funnel = page.locator("svg.oc-bar-chart")
    expect(funnel.locator("title").first).to_have_text("Funnel: Basket rescue")
    expect(funnel.locator('g.oc-chart-bar[data-label="Clicked"]')).to_contain_text("4")
    expect(page.locator("svg.oc-line-chart polyline")).to_have_count(5)
    expect(page.locator("#oc-table-steps tfoot")).to_contain_text("145.50")
    expect(page.locator("#oc-report-headline .oc-figure-sent")).to_have_text("9")
    page.screenshot(path=str(SCREENSHOTS / "admin_campaign_report.png"), full_page=True)

    # --- the steps table as CSV: its totals row is the page's ----------------------------------
    with page.expect_download() as info:
        page.locator("#oc-table-steps a.oc-csv-link").click()
    target = tmp_path / "steps.csv"
    info.value.save_as(target)
    rows = list(csv.reader(target.open()))
    assert rows[-1][:2] == ["Total", "9"] and rows[-1][8] == "145.50"

    # --- on a phone the charts fit the screen; wide tables scroll inside their box ------------
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    for n in range(3):
        box = charts.nth(n).bounding_box()
        assert box is not None and box["width"] <= 390, box
        assert box["height"] > 120  # scaled down, not squashed into a line
    page_width = page.evaluate("document.documentElement.scrollWidth")
    table_box = page.locator("#oc-table-steps .oc-report-scroll").bounding_box()
    assert table_box is not None and table_box["width"] <= page_width
    page.screenshot(path=str(SCREENSHOTS / "admin_campaign_report_phone.png"), full_page=True)
    context.close()
