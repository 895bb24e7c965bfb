"""Staff build a two-step campaign, activate it and preview it for a customer, in a real browser.

Drives Debian's chromium with Playwright against pytest-django's live server (see
test_admin_clickthrough.py), with the demo shop's channels (all in outbox mode). Screenshots of
the campaign page and the preview are left in var/screenshots/.
"""

from __future__ import annotations

import re

import pytest
from django.urls import reverse
from django.utils import timezone

from omnichannel.campaigns.models import Campaign, CampaignStatus
from omnichannel.channels.models import Message
from omnichannel.profiles.consents import record_consent
from omnichannel.profiles.models import CustomerProfile, Identity, IdentityKind, Purpose
from tests.browser.test_admin_clickthrough import SCREENSHOTS, browser  # noqa: F401  (fixture)

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - the browser fixture skips
    expect = None

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

STAFF_PASSWORD = "staff-horse-9"
EMAIL = "grace.hopper@example.com"


def test_staff_build_activate_and_preview_a_campaign(
    browser,  # noqa: F811
    live_server,
    django_user_model,
    settings,
):
    from sandbox.settings import OMNICHANNEL as DEMO_OMNICHANNEL

    settings.OMNICHANNEL = {**DEMO_OMNICHANNEL, "SITE_URL": live_server.url}
    # A customer as the demo shop has them: an email address and a marketing consent for it.
    grace = CustomerProfile.objects.create(first_name="Grace", last_name="Hopper")
    Identity.objects.create(profile=grace, kind=IdentityKind.EMAIL, value=EMAIL)
    Identity.objects.create(profile=grace, kind=IdentityKind.PHONE, value="+447700900123")
    record_consent(
        grace, channel="email", purpose=Purpose.MARKETING, granted=True, now=timezone.now()
    )
    django_user_model.objects.create_superuser("boss", "boss@example.com", STAFF_PASSWORD)

    base = live_server.url
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.goto(base + reverse("admin:index"))
    page.fill("#id_username", "boss")
    page.fill("#id_password", STAFF_PASSWORD)
    page.locator("input[type=submit]").click()
    page.wait_for_url(f"**{reverse('admin:index')}")

    # --- a new triggered campaign: the trigger's options are documented beside the JSON -------
    page.goto(base + reverse("admin:omnichannel_campaign_add"))
    page.fill("#id_name", "Welcome series")
    page.select_option("#id_trigger", "welcome")
    welcome_doc = page.locator('.oc-trigger-doc[data-trigger="welcome"]')
    expect(welcome_doc).to_be_visible()
    expect(welcome_doc).to_contain_text("delay_minutes")
    expect(page.locator('.oc-trigger-doc[data-trigger="abandoned_basket"]')).to_be_hidden()
    page.fill("#id_trigger_options", '{"delay_minutes": 0}')
    # Quiet hours off, so the preview sends "now" whatever the hour of the test run.
    page.locator("#id_quiet_hours").uncheck()

    # --- two steps in the cascade: email now, SMS a day later ---------------------------------
    expect(page.locator("#id_steps-0-position")).to_have_value("1")
    expect(page.locator("#id_steps-1-position")).to_have_value("2")
    page.select_option("#id_steps-0-channel", "email")
    page.fill("#id_steps-0-template", "welcome")
    page.select_option("#id_steps-1-channel", "sms")
    page.fill("#id_steps-1-wait", "1d")
    page.fill("#id_steps-1-template", "welcome")
    page.locator("input[name=_continue]").click()
    page.wait_for_url(re.compile(r"/admin/omnichannel/campaign/\d+/change/"))
    campaign = Campaign.objects.get(name="Welcome series")
    assert [(s.channel, s.wait.days) for s in campaign.steps.order_by("position")] == [
        ("email", 0),
        ("sms", 1),
    ]

    # --- activate with the button on the page ---------------------------------------------------
    page.get_by_role("button", name="Activate").click()
    expect(page.locator(".messagelist .success")).to_contain_text("Welcome series is active")
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.ACTIVE
    expect(page.locator(".fieldBox.field-status_display")).to_contain_text("Active")
    page.screenshot(path=str(SCREENSHOTS / "admin_campaign.png"), full_page=True)

    # --- preview for Grace: the channel, and why ------------------------------------------------
    page.get_by_role("link", name="Preview").click()
    page.wait_for_url(f"**{reverse('admin:omnichannel_campaign_preview', args=[campaign.pk])}")
    page.locator(".field-profile .select2-selection").click()
    page.locator(".select2-search__field").fill("grace.hopper")
    page.locator(".select2-results__option", has_text="Grace Hopper").click()
    page.get_by_role("button", name="Preview", exact=True).click()
    decision = page.locator("#oc-decision")
    expect(decision.locator(".oc-decision-headline")).to_contain_text(
        f"Sends now: step 1 on email to {EMAIL}"
    )
    expect(decision.locator(".oc-decision-reasons")).to_contain_text(
        "step 1: email (the step's channel)"
    )
    expect(page.locator("#oc-preview")).to_contain_text("nothing was stored or sent")
    expect(page.frame_locator("#oc-preview iframe.oc-email-frame").locator("body")).to_contain_text(
        "Grace"
    )
    assert not Message.objects.exists()
    page.screenshot(path=str(SCREENSHOTS / "admin_campaign_preview.png"), full_page=True)
    context.close()
