"""A shopper buys in a real browser; a member of staff then finds them in the admin.

Drives Debian's chromium (``apt-get install -y chromium``) with Playwright's bundled driver
against pytest-django's live server. Skipped when chromium or playwright is missing, except
under CI=true where that fails. A screenshot of the profile page is left in var/screenshots/.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.db import connections
from django.urls import reverse
from django.utils import timezone

from omnichannel.conf import app_settings
from omnichannel.profiles.identity import fold_pending_events
from omnichannel.profiles.models import CustomerProfile, Event, EventType, IdentityKind
from tests import shop
from tests.conftest import require

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"
EMAIL = "ada.lovelace@example.com"
PASSWORD = "correct-horse-9"
STAFF_PASSWORD = "staff-horse-9"


@pytest.fixture
def browser(monkeypatch):
    require(sync_playwright is not None, "needs the playwright package (pip install playwright)")
    require(
        Path(CHROMIUM).exists(),
        f"needs Debian's chromium at {CHROMIUM} (apt-get install -y chromium)",
    )
    # Playwright's sync API keeps an asyncio loop running in this thread; the ORM calls made
    # by the test between two clicks are plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
            # While that loop runs, Django keeps this thread's connection apart (asgiref's
            # Local follows the async context): close it, or the test database cannot be
            # dropped at the end of the session (PostgreSQL: "accessed by other users").
            connections.close_all()


def fold() -> int:
    return fold_pending_events(now=timezone.now(), batch_size=1000)


def test_staff_find_a_new_customer_and_their_whole_journey(browser, live_server, django_user_model):
    fridge = shop.create_product("499.00", title="Fridge Deluxe")
    shop.ensure_shipping_country()
    base = live_server.url

    # --- an anonymous shopper views a product and adds it to the basket ------------------------
    shopper = browser.new_context(viewport={"width": 1280, "height": 900})
    shopper.set_default_timeout(20_000)
    page = shopper.new_page()
    page.goto(base + "/")  # arrives on the home page (a first view without our cookie is not kept)
    page.goto(base + fridge.get_absolute_url())
    expect(page.locator("h1")).to_contain_text("Fridge Deluxe")
    page.locator("#add_to_basket_form button[type=submit]").click()
    page.wait_for_load_state()
    expect(page.locator(".alert-success").first).to_be_visible()
    visitor = next(
        c["value"] for c in shopper.cookies() if c["name"] == app_settings.VISITOR_COOKIE_NAME
    )
    fold()  # the anonymous visitor gets a profile of their own
    assert CustomerProfile.objects.count() == 1

    # --- registers ------------------------------------------------------------------------------
    page.goto(base + reverse("customer:register"))
    page.fill("#id_email", EMAIL)
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.locator("button[name=registration_submit]").click()
    page.wait_for_load_state()
    user = django_user_model.objects.get(email=EMAIL)

    # --- checks out with Oscar's dummy payment --------------------------------------------------
    page.goto(base + reverse("checkout:index"))
    page.wait_for_url(f"**{reverse('checkout:shipping-address')}")
    page.fill("#id_first_name", "Ada")
    page.fill("#id_last_name", "Lovelace")
    page.fill("#id_line1", "1 Egg Road")
    page.fill("#id_line4", "Shell City")
    page.fill("#id_postcode", "N12 9RT")
    if page.locator("#id_country").count():
        page.select_option("#id_country", "GB")
    page.fill("#id_phone_number", "07911 123456")
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(f"**{reverse('checkout:payment-details')}")
    page.locator("#view_preview").click()
    page.wait_for_url(f"**{reverse('checkout:preview')}")
    page.locator("#place-order").click()
    page.wait_for_url(f"**{reverse('checkout:thank-you')}")
    expect(page.locator("body")).to_contain_text("Fridge Deluxe")
    shopper.close()

    # --- the fold task runs ---------------------------------------------------------------------
    fold()
    profile = CustomerProfile.objects.get()  # the anonymous profile became the customer's
    assert profile.user == user
    assert profile.orders_count == 1
    assert set(profile.events.values_list("type", flat=True)) >= {
        EventType.PRODUCT_VIEWED,
        EventType.BASKET_LINE_ADDED,
        EventType.USER_REGISTERED,
        EventType.ORDER_PLACED,
    }

    # --- staff log into the admin in a fresh browser and find the customer ----------------------
    django_user_model.objects.create_superuser(
        username="boss", email="boss@example.com", password=STAFF_PASSWORD
    )
    staff = browser.new_context(viewport={"width": 1400, "height": 1000})
    staff.set_default_timeout(20_000)
    admin = staff.new_page()
    admin.goto(base + reverse("admin:index"))
    admin.fill("#id_username", "boss")
    admin.fill("#id_password", STAFF_PASSWORD)
    admin.locator("input[type=submit]").click()
    admin.wait_for_url(f"**{reverse('admin:index')}")

    admin.goto(base + reverse("admin:omnichannel_customerprofile_changelist"))
    admin.fill("#searchbar", EMAIL.upper())
    admin.press("#searchbar", "Enter")
    admin.wait_for_url("**?q=*")
    rows = admin.locator("#result_list tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(EMAIL)
    expect(rows.first).to_contain_text("+447911123456")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    admin.screenshot(path=str(SCREENSHOTS / "admin_search.png"), full_page=True)
    rows.first.locator("th a").click()
    change_url = reverse("admin:omnichannel_customerprofile_change", args=[profile.pk])
    admin.wait_for_url(re.compile(re.escape(change_url)))  # with ?_changelist_filters=...

    expect(admin.locator(".field-user_account")).to_contain_text(EMAIL)
    identities = admin.locator("#identities-group")
    for text in (EMAIL, visitor, str(user.pk), "Email", "Anonymous visitor", "User account"):
        expect(identities).to_contain_text(text)
    timeline = admin.locator("table.omnichannel-timeline")
    for label in ("Viewed a product", "Added to basket", "Registered", "Placed an order"):
        expect(timeline).to_contain_text(label)
    expect(timeline).to_contain_text("Fridge Deluxe")
    order_number = profile.events.get(type=EventType.ORDER_PLACED).order.number
    expect(timeline).to_contain_text(order_number)
    expect(admin.locator("body")).to_contain_text("Ada Lovelace")

    admin.screenshot(path=str(SCREENSHOTS / "admin_profile.png"), full_page=True)

    # The timeline links to the rest of the log, filtered on this profile.
    admin.get_by_role("link", name="Open these events in the list").click()
    admin.wait_for_url(f"**?profile={profile.pk}")
    expect(admin.locator("#result_list tbody tr")).to_have_count(
        Event.objects.filter(profile=profile).count()
    )
    admin.screenshot(path=str(SCREENSHOTS / "admin_events.png"), full_page=True)
    staff.close()

    # Still one profile, and the staff login to the admin site recorded nothing.
    assert CustomerProfile.objects.count() == 1
    assert not Event.objects.filter(processed_at__isnull=True).exists()
    assert profile.identities.filter(kind=IdentityKind.VISITOR, value=visitor).exists()
