"""A shopper manages their preferences and unsubscribes on a phone, in a real browser.

Drives Debian's chromium with Playwright against pytest-django's live server, like
test_admin_clickthrough.py (whose ``browser`` fixture is reused). Screenshots go to
var/screenshots/ and /tmp/prefs.png.
"""

from __future__ import annotations

import datetime as dt
import shutil

import pytest
from django.utils import timezone

from omnichannel.channels.models import Message, MessageStatus
from omnichannel.profiles.consents import current_consents, record_consent
from omnichannel.profiles.models import Channel, Consent, ConsentSource, CustomerProfile, Purpose
from omnichannel.tracking import links
from tests.browser.test_admin_clickthrough import SCREENSHOTS, browser  # noqa: F401 - fixture
from tests.tracking.test_views import LANGUAGES, configure, path

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - the browser fixture skips (or fails in CI)
    expect = None

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

#: A common phone: 390 x 844 CSS pixels at 3x, touch.
PHONE = {
    "viewport": {"width": 390, "height": 844},
    "device_scale_factor": 3,
    "is_mobile": True,
    "has_touch": True,
}


@pytest.fixture
def phone(browser, settings):  # noqa: F811 - the imported fixture
    configure(settings)
    settings.LANGUAGES = LANGUAGES
    context = browser.new_context(**PHONE)
    context.set_default_timeout(20_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def test_preference_centre_and_unsubscribe_on_a_phone(phone, live_server):
    profile = CustomerProfile.objects.create(first_name="Ada", last_name="Lovelace")
    earlier = timezone.now() - dt.timedelta(days=10)
    for channel in (Channel.EMAIL, Channel.SMS):
        record_consent(
            profile, channel=channel, purpose=Purpose.MARKETING, granted=True, now=earlier
        )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    # --- the preference centre: switch email offers off and save -------------------------------
    phone.goto(live_server.url + path(links.preferences_url(profile)))
    expect(phone.locator("h1")).to_have_text("Your communication preferences")
    email_offers = phone.get_by_role("switch", name="Offers and news").first
    expect(email_offers).to_be_checked()
    # Nothing overflows sideways on a narrow screen.
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    phone.screenshot(path=str(SCREENSHOTS / "preferences_phone.png"), full_page=True)
    # What the phone's screen shows (a full-page capture draws the sticky save bar mid-page).
    phone.screenshot(path=str(SCREENSHOTS / "preferences_phone_screen.png"))
    shutil.copy(SCREENSHOTS / "preferences_phone_screen.png", "/tmp/prefs.png")  # noqa: S108

    email_offers.click()  # a tap on the switch
    expect(email_offers).not_to_be_checked()
    phone.get_by_role("button", name="Save preferences").click()
    phone.wait_for_url("**?saved=1")
    expect(phone.get_by_role("status")).to_contain_text("Your preferences have been saved.")
    expect(phone.get_by_role("switch", name="Offers and news").first).not_to_be_checked()
    phone.screenshot(path=str(SCREENSHOTS / "preferences_saved_phone.png"), full_page=True)

    changes = Consent.objects.filter(profile=profile, source=ConsentSource.PREFERENCES)
    assert list(changes.values_list("channel", "purpose", "granted")) == [
        (Channel.EMAIL, Purpose.MARKETING, False)
    ]

    # --- an SMS's unsubscribe link: confirmation first, then one tap ---------------------------
    message = Message.objects.create(
        profile=profile,
        channel="sms",
        purpose=Purpose.MARKETING,
        address="+447911123456",
        status=MessageStatus.DELIVERED,
    )
    phone.goto(live_server.url + path(links.unsubscribe_url(message)))
    expect(phone.locator("h1")).to_have_text("Unsubscribe from offers and news?")
    assert current_consents(profile)[(Channel.SMS, Purpose.MARKETING)].granted  # GET: no change
    phone.screenshot(path=str(SCREENSHOTS / "unsubscribe_confirm_phone.png"), full_page=True)
    phone.get_by_role("button", name="Unsubscribe").click()
    expect(phone.locator("h1")).to_have_text("You are unsubscribed")
    phone.screenshot(path=str(SCREENSHOTS / "unsubscribed_phone.png"), full_page=True)

    assert not current_consents(profile)[(Channel.SMS, Purpose.MARKETING)].granted
    message.refresh_from_db()
    assert message.status == MessageStatus.UNSUBSCRIBED

    # The page leads back to the preference centre, which shows both offers switched off.
    phone.get_by_role("link", name="Manage your preferences").click()
    expect(phone.locator("h1")).to_have_text("Your communication preferences")
    offers = phone.get_by_role("switch", name="Offers and news")
    expect(offers.nth(0)).not_to_be_checked()
    expect(offers.nth(1)).not_to_be_checked()
    phone.emulate_media(color_scheme="dark")
    phone.screenshot(path=str(SCREENSHOTS / "preferences_dark_phone.png"))

    # A link cut short in a mail client: a page that says so, not an error screen.
    response = phone.goto(live_server.url + path(links.preferences_url(profile))[:-8] + "/")
    assert response.status == 400
    expect(phone.locator("h1")).to_have_text("This link does not work")
    expect(phone.get_by_role("link", name="Go to the shop")).to_be_visible()
    phone.screenshot(path=str(SCREENSHOTS / "link_error_dark_phone.png"))
