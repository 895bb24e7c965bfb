"""Staff preview a template, test-send an email and read it in the outbox, in a real browser.

Drives Debian's chromium with Playwright against pytest-django's live server (see
test_admin_clickthrough.py). The email channel runs in outbox mode, as in the demo shop. A
screenshot of the outbox entry is left at /tmp/outbox.png and in var/screenshots/.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.urls import reverse
from django.utils import timezone

from omnichannel.channels.models import Message, MessageStatus, OutboxEntry
from omnichannel.profiles.models import CustomerProfile, Identity, IdentityKind
from tests.browser.test_admin_clickthrough import SCREENSHOTS, browser  # noqa: F401  (fixture)

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - the browser fixture skips
    expect = None

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

STAFF_PASSWORD = "staff-horse-9"
EMAIL = "grace.hopper@example.com"
OUTBOX_SCREENSHOT = Path("/tmp/outbox.png")  # noqa: S108  (a fixed path people look for)


@pytest.fixture
def outbox_channels(settings):
    settings.OMNICHANNEL = {
        "SITE_URL": "http://127.0.0.1:8000",
        "COST_CURRENCY": "GBP",
        "CHANNELS": {
            "email": {
                "BACKEND": "omnichannel.channels.email.EmailChannel",
                "COST": "0.0008",
                "OPTIONS": {"OUTBOX": True, "FROM_EMAIL": "Demo shop <shop@example.com>"},
            },
        },
    }


def test_staff_preview_and_test_send_an_email_then_read_it_in_the_outbox(
    browser,  # noqa: F811
    live_server,
    django_user_model,
    outbox_channels,
):
    grace = CustomerProfile.objects.create(first_name="Grace", last_name="Hopper")
    Identity.objects.create(profile=grace, kind=IdentityKind.EMAIL, value=EMAIL)
    django_user_model.objects.create_superuser(
        username="boss", email="boss@example.com", password=STAFF_PASSWORD
    )
    base = live_server.url
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.goto(base + reverse("admin:index"))
    page.fill("#id_username", "boss")
    page.fill("#id_password", STAFF_PASSWORD)
    page.locator("input[type=submit]").click()
    page.wait_for_url(f"**{reverse('admin:index')}")

    # --- from the message log to the preview page -----------------------------------------
    page.goto(base + reverse("admin:omnichannel_message_changelist"))
    admin_look = page.evaluate("getComputedStyle(document.body).fontFamily")
    page.get_by_role("link", name="Preview and test send").click()
    page.wait_for_url(f"**{reverse('admin:omnichannel_message_preview')}")

    # The profile through the admin's autocomplete (select2), searching by email.
    page.locator(".field-profile .select2-selection").click()
    page.locator(".select2-search__field").fill("grace.hopper")
    option = page.locator(".select2-results__option", has_text="Grace Hopper")
    option.click()
    expect(page.locator(".field-profile .select2-selection__rendered")).to_contain_text(
        "Grace Hopper"
    )
    page.select_option("#id_channel", "email")
    page.select_option("#id_purpose", "transactional")
    page.fill("#id_template", "test")
    expect(page.locator("#id_template")).to_have_attribute("list", "oc-templates-1")

    # --- preview: rendered, stored nothing -----------------------------------------------------
    page.get_by_role("button", name="Preview").click()
    page.wait_for_load_state()
    preview = page.locator("#oc-preview")
    expect(preview).to_contain_text("nothing was stored or sent")
    expect(preview).to_contain_text(EMAIL)
    expect(preview).to_contain_text("0.00080 GBP")
    frame = page.frame_locator("#oc-preview iframe.oc-email-frame")
    expect(frame.locator("h1")).to_contain_text("Hello Grace")
    assert Message.objects.count() == 0
    page.screenshot(path=str(SCREENSHOTS / "admin_preview.png"), full_page=True)

    # --- send a test: lands on the message page -------------------------------------------
    page.get_by_role("button", name="Send test").click()
    page.wait_for_url(re.compile(r"/admin/omnichannel/message/\d+/change/"))
    message = Message.objects.get()
    assert message.status == MessageStatus.SENT
    expect(page.locator(".messagelist .success")).to_contain_text(f"Test message sent to {EMAIL}")
    expect(page.locator("div.field-status_display")).to_contain_text("Sent")
    expect(page.locator("#history-group")).to_contain_text("Queued")
    expect(page.frame_locator("iframe.oc-email-frame").locator("h1")).to_contain_text("Hello Grace")

    page.screenshot(path=str(SCREENSHOTS / "admin_message.png"), full_page=True)

    # --- the outbox entry, as Grace would see it --------------------------------------------
    page.get_by_role("link", name="See it in the outbox.").click()
    entry = OutboxEntry.objects.get()
    page.wait_for_url(f"**{reverse('admin:omnichannel_outboxentry_change', args=[entry.pk])}")
    headers = page.locator("table.oc-email-headers")
    expect(headers).to_contain_text("shop@example.com")
    expect(headers).to_contain_text(EMAIL)
    expect(headers).to_contain_text("Test message from")
    email = page.frame_locator("iframe.oc-email-frame")
    expect(email.locator("h1")).to_contain_text("Hello Grace")
    expect(email.get_by_text("Visit the shop")).to_be_visible()
    # The email's stylesheet stays in its frame: the admin page keeps its own look.
    assert page.evaluate("getComputedStyle(document.body).fontFamily") == admin_look
    expect(page.locator(".field-payload_display pre")).to_contain_text('"track_opens"')
    page.locator("iframe.oc-email-frame").scroll_into_view_if_needed()
    for path in (OUTBOX_SCREENSHOT, SCREENSHOTS / "admin_outbox_email.png"):
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path), full_page=True)

    # --- the message log: one row with its badge -----------------------------------------------
    page.goto(base + reverse("admin:omnichannel_message_changelist"))
    row = page.locator("#result_list tbody tr")
    expect(row).to_have_count(1)
    expect(row.locator(".oc-status-sent")).to_be_visible()
    expect(row).to_contain_text("0.00080 GBP")
    page.screenshot(path=str(SCREENSHOTS / "admin_messages.png"), full_page=True)

    # --- the outbox list links back --------------------------------------------------------------
    page.goto(base + reverse("admin:omnichannel_outboxentry_changelist"))
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(EMAIL)
    context.close()


def test_outbox_shows_push_sms_and_telegram_as_on_a_phone(
    browser,  # noqa: F811
    live_server,
    django_user_model,
    settings,
):
    from push_notifications.models import GCMDevice

    from omnichannel.channels.sending import deliver_message, queue_message
    from omnichannel.profiles.consents import record_consent
    from sandbox.settings import OMNICHANNEL as DEMO_OMNICHANNEL

    settings.OMNICHANNEL = {**DEMO_OMNICHANNEL, "SITE_URL": live_server.url}
    user = django_user_model.objects.create_user("ada", email="ada@example.com", password="x-9")
    ada = CustomerProfile.objects.create(user=user, first_name="Ada")
    Identity.objects.create(profile=ada, kind=IdentityKind.PHONE, value="+447911123456")
    Identity.objects.create(profile=ada, kind=IdentityKind.TELEGRAM, value="100000042")
    GCMDevice.objects.create(user=user, registration_id="demo-fcm", cloud_message_type="FCM")
    for channel in ("sms", "push", "messenger"):
        record_consent(ada, channel=channel, purpose="marketing", granted=True, now=timezone.now())
    entries = {}
    for channel in ("sms", "push", "telegram"):
        now = timezone.now()
        message = queue_message(
            ada, channel=channel, purpose="marketing", template="welcome", now=now
        )
        assert deliver_message(message, now=now).status == MessageStatus.SENT
        entries[channel] = OutboxEntry.objects.get(message=message)

    django_user_model.objects.create_superuser("boss", "boss@example.com", STAFF_PASSWORD)
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.goto(live_server.url + reverse("admin:index"))
    page.fill("#id_username", "boss")
    page.fill("#id_password", STAFF_PASSWORD)
    page.locator("input[type=submit]").click()
    page.wait_for_url(f"**{reverse('admin:index')}")

    checks = {
        "sms": (".oc-bubble-sms", "Reply STOP to opt out."),
        "push": (".oc-notification-title", "Welcome to"),
        "telegram": (".oc-chat-button", "Visit the shop"),
    }
    for channel, (selector, text) in checks.items():
        page.goto(
            live_server.url
            + reverse("admin:omnichannel_outboxentry_change", args=[entries[channel].pk])
        )
        card = page.locator(selector)
        expect(card).to_be_visible()
        expect(card).to_contain_text(text)
        page.locator(".oc-phone").screenshot(path=str(SCREENSHOTS / f"admin_outbox_{channel}.png"))
    # The Telegram bold text is formatting, not markup shown as text.
    page.goto(
        live_server.url
        + reverse("admin:omnichannel_outboxentry_change", args=[entries["telegram"].pk])
    )
    expect(page.locator(".oc-chat-text b")).to_contain_text("Welcome to")
    page.screenshot(path=str(SCREENSHOTS / "admin_outbox_telegram_page.png"), full_page=True)
    context.close()
