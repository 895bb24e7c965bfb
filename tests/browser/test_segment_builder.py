"""A marketer builds a segment by clicking through the rule builder in a real browser.

"Ordered at least twice AND bought in Kitchen > Fridges AND NOT opened or clicked an email in
90 days": the live count follows the clicks, the segment saves, and the page draws the saved
rules back. Also: an invalid value is pointed at in the builder, and without JavaScript the
JSON textarea still works. Uses the live-server fixtures of test_admin_clickthrough.py;
screenshots go to /tmp/segment_builder*.png and var/screenshots/.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from django.urls import reverse

from omnichannel.segments.models import Segment
from omnichannel.segments.rules import describe_rules, validate_rules
from tests.admin.test_segments_admin import marketer_rules, person
from tests.browser.test_admin_clickthrough import SCREENSHOTS, browser  # noqa: F401  (fixture)

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - the browser fixture skips then
    expect = None

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "staff-horse-9"
#: Where the screenshot of the built segment is also left, for a quick look.
TMP = Path(tempfile.gettempdir())


@pytest.fixture
def fridges():
    from oscar.core.loading import get_model

    category_model = get_model("catalogue", "Category")
    return category_model.add_root(name="Kitchen").add_child(name="Fridges")


@pytest.fixture
def audience(fridges):
    """Five people; the marketer's segment picks #1 and #5 (see tests/admin)."""
    return {
        1: person(1, orders=3, fridge=fridges),
        2: person(2, orders=2, fridge=fridges, opened_days_ago=10),
        3: person(3, orders=1, fridge=fridges),
        4: person(4, orders=5),
        5: person(5, orders=4, fridge=fridges, opened_days_ago=200),
    }


@pytest.fixture
def admin_page(browser, live_server, django_user_model):  # noqa: F811
    django_user_model.objects.create_superuser(
        username="marketer", email="marketer@example.com", password=PASSWORD
    )

    def open_page(*, javascript: bool = True):
        context = browser.new_context(
            viewport={"width": 1440, "height": 1000}, java_script_enabled=javascript
        )
        context.set_default_timeout(20_000)
        page = context.new_page()
        page.goto(live_server.url + reverse("admin:index"))
        page.fill("#id_username", "marketer")
        page.fill("#id_password", PASSWORD)
        page.locator("input[type=submit]").click()
        page.wait_for_url(f"**{reverse('admin:index')}")
        return page

    return open_page


def condition(page, index: int):
    return page.locator(".oc-rb-condition").nth(index)


def add_condition(page, key: str):
    """Click "Add condition" on the top group and pick the condition type."""
    page.locator(".oc-rb-root > .oc-rb-actions .oc-rb-add-condition").click()
    rows = page.locator(".oc-rb-condition")
    row = rows.nth(rows.count() - 1)
    row.locator("select.oc-rb-type").select_option(key)
    return rows.nth(rows.count() - 1)


def shoot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def test_marketer_builds_a_segment_by_clicking(admin_page, live_server, audience, fridges):
    page = admin_page()
    page.goto(live_server.url + reverse("admin:omnichannel_segment_add"))
    expect(page.locator(".oc-rb-root")).to_be_visible()
    expect(page.locator("textarea[name=rules]")).to_be_hidden()  # the builder replaces it
    count = page.locator(".oc-rb-count")
    expect(count).to_have_text("5")  # no conditions yet: everyone

    page.fill("#id_name", "Fridge fans to win back")
    page.fill("#id_description", "Repeat buyers of fridges who stopped reading our emails.")

    # 1. Orders count at least 2.
    orders = add_condition(page, "orders_count")
    orders.locator("[data-param=min] input").fill("2")
    expect(count).to_have_text("4")

    # 2. Bought in category Kitchen > Fridges, found by typing part of its name.
    bought = add_condition(page, "bought")
    bought.locator("[data-param=category] input.oc-rb-search").fill("frid")
    bought.get_by_role("option", name="Kitchen > Fridges").click()
    expect(bought.locator(".oc-rb-chip")).to_have_text("Kitchen > Fridges\u00d7")
    expect(count).to_have_text("3")

    # 3. NOT engaged on email (opened or clicked) within 90 days.
    engaged = add_condition(page, "engaged")
    engaged.locator("[data-param=channel] select").select_option("email")
    engaged.locator("[data-param=action] select").select_option("opened_or_clicked")
    expect(engaged.locator("[data-param=days] input")).to_have_value("90")  # the initial value
    engaged.locator(".oc-rb-not").click()
    expect(engaged.locator(".oc-rb-not")).to_have_attribute("aria-pressed", "true")

    expect(count).to_have_text("2")
    sample = page.locator(".oc-rb-sample")
    expect(sample).to_contain_text("Person1 Test")
    expect(sample).to_contain_text("p5@example.com")
    expect(sample).not_to_contain_text("Person2 Test")
    # In words, as the server says it once the count is back.
    summary = page.locator(".oc-rb-summary-text")
    expect(summary).to_have_text(describe_rules(marketer_rules(fridges.pk)))
    expect(summary).to_contain_text("Fridges")
    page.screenshot(path=str(TMP / "segment_builder.png"), full_page=True)
    shoot(page, "segment_builder.png")

    # Save and continue: the same rules, stored and drawn back.
    page.locator("input[name=_continue]").click()
    page.wait_for_load_state()
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")
    segment = Segment.objects.get(name="Fridge fans to win back")
    assert segment.rules == validate_rules(marketer_rules(fridges.pk))
    assert segment.count() == 2

    expect(page.locator(".oc-rb-condition")).to_have_count(3)
    expect(condition(page, 0).locator("select.oc-rb-type")).to_have_value("orders_count")
    expect(condition(page, 0).locator("[data-param=min] input")).to_have_value("2")
    expect(condition(page, 1).locator(".oc-rb-chip")).to_contain_text("Kitchen > Fridges")
    expect(condition(page, 2).locator(".oc-rb-not")).to_have_attribute("aria-pressed", "true")
    expect(condition(page, 2).locator("[data-param=days] input")).to_have_value("90")
    expect(page.locator(".oc-rb-count")).to_have_text("2")
    shoot(page, "segment_builder_saved.png")
    shutil.copy(SCREENSHOTS / "segment_builder_saved.png", TMP / "segment_builder_saved.png")

    # The list shows the same size.
    page.goto(live_server.url + reverse("admin:omnichannel_segment_changelist"))
    row = page.locator("#result_list tbody tr", has_text="Fridge fans to win back")
    expect(row.locator("td.field-size")).to_have_text("2")

    # The ready-made segments come from one button, with nothing selected.
    page.get_by_role("button", name="Create ready-made segments").click()
    page.wait_for_load_state()
    expect(page.locator(".messagelist")).to_contain_text("Created 5 ready-made segments")
    expect(page.locator("#result_list tbody tr")).to_have_count(6)
    expect(page.locator("#result_list tbody tr", has_text="Multi-device")).to_be_visible()
    shoot(page, "segment_list.png")

    # A ready-made segment opens in the builder too (multiple choices drawn as check boxes).
    page.locator("#result_list a", has_text="Champions").click()
    page.wait_for_load_state()
    champions = condition(page, 0)
    expect(champions.locator("select.oc-rb-type")).to_have_value("rfm_group")
    expect(champions.get_by_label("Champions", exact=True)).to_be_checked()
    expect(champions.get_by_label("Lost", exact=True)).not_to_be_checked()
    expect(page.locator(".oc-rb-count")).to_have_text("0")
    shoot(page, "segment_champions.png")


def test_nested_group_and_error_pointed_at(admin_page, live_server, audience):
    page = admin_page()
    page.goto(live_server.url + reverse("admin:omnichannel_segment_add"))
    page.fill("#id_name", "Big spenders or recent")
    count = page.locator(".oc-rb-count")
    expect(count).to_have_text("5")

    # any of: orders >= 5, or (a group) last seen within 0 days -> an error on "days".
    page.locator(".oc-rb-root .oc-rb-op").first.select_option("any")
    add_condition(page, "orders_count").locator("[data-param=min] input").fill("5")
    page.locator(".oc-rb-root > .oc-rb-actions .oc-rb-add-group").click()
    nested = page.locator(".oc-rb-root .oc-rb-group").first
    nested.locator("select.oc-rb-type").select_option("last_seen")
    nested.locator("[data-param=days] input").fill("0")

    bad = nested.locator(".oc-rb-condition").first
    expect(bad).to_have_class("oc-rb-condition oc-rb-has-error")
    expect(bad.locator(".oc-rb-errmsg")).to_contain_text("greater than or equal to 1")
    expect(page.locator(".oc-rb-errors")).to_contain_text("Condition 2.1")
    expect(count).to_have_text("\u2013")
    expect(page.locator(".oc-rb-summary-text")).to_have_text(
        "Orders count (at least 5) OR Last seen within (days 0)"
    )
    shoot(page, "segment_builder_error.png")

    # Saving anyway: the server refuses with the same place named, and nothing is lost.
    page.locator("input[name=_continue]").click()
    page.wait_for_load_state()
    expect(page.locator(".errornote")).to_be_visible()
    expect(page.locator(".field-rules .errorlist")).to_contain_text("children[1].children[0]")
    assert not Segment.objects.exists()
    expect(page.locator(".oc-rb-condition")).to_have_count(2)
    nested = page.locator(".oc-rb-root .oc-rb-group").first
    nested.locator("[data-param=days] input").fill("30")
    expect(page.locator(".oc-rb-condition.oc-rb-has-error")).to_have_count(0)
    expect(count).not_to_have_text("\u2013")
    page.locator("input[name=_save]").click()
    page.wait_for_load_state()
    segment = Segment.objects.get(name="Big spenders or recent")
    assert segment.rules["op"] == "any"
    assert segment.rules["children"][1]["children"][0]["params"] == {"days": 30}


def test_without_javascript_the_json_textarea_works(admin_page, live_server, audience):
    page = admin_page(javascript=False)
    page.goto(live_server.url + reverse("admin:omnichannel_segment_add"))
    textarea = page.locator("textarea[name=rules]")
    expect(textarea).to_be_visible()
    page.fill("#id_name", "Repeat buyers")
    textarea.fill(
        json.dumps({"op": "all", "children": [{"type": "orders_count", "params": {"min": 4}}]})
    )
    page.locator("input[name=_save]").click()
    page.wait_for_load_state()
    segment = Segment.objects.get(name="Repeat buyers")
    assert segment.count() == 2
