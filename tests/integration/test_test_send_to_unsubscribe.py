"""Issue #3's "done when", end to end through real views.

Staff test-send a marketing email from the admin through the real Postmark backend of anymail
(Postmark's API faked with `responses`); Postmark's webhooks, posted to anymail's view, move the
message to delivered, opened and clicked; then a mail provider follows the List-Unsubscribe
header we sent with one cookie-less POST, and marketing consent is withdrawn.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
import responses
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from omnichannel.channels.models import Message, MessageStatus
from omnichannel.profiles.consents import has_consent, record_consent
from omnichannel.profiles.models import CustomerProfile, Identity, IdentityKind
from tests.tracking.test_esp_webhooks import POSTMARK_HOOK, SECRET, post, postmark_event

POSTMARK_ID = "0a129aee-e1cd-480d-b08d-4f48548ff48d"
ADDRESS = "ann@example.com"

pytestmark = pytest.mark.django_db


@pytest.fixture
def postmark(settings):
    settings.ANYMAIL = {"WEBHOOK_SECRET": SECRET, "POSTMARK_SERVER_TOKEN": "server-token"}
    settings.OMNICHANNEL = {
        **settings.OMNICHANNEL,
        "CHANNELS": {
            "email": {
                "BACKEND": "omnichannel.channels.email.EmailChannel",
                "COST": "0.001",
                "OPTIONS": {
                    "EMAIL_BACKEND": "anymail.backends.postmark.EmailBackend",
                    "FROM_EMAIL": "Shop <shop@example.com>",
                },
            }
        },
    }
    with responses.RequestsMock() as mocked:
        mocked.post(
            "https://api.postmarkapp.com/email",
            json={
                "To": ADDRESS,
                "SubmittedAt": "2026-11-23T10:00:00Z",
                "MessageID": POSTMARK_ID,
                "ErrorCode": 0,
                "Message": "OK",
            },
        )
        yield mocked


def test_staff_test_send_then_webhooks_then_one_click_unsubscribe(client, postmark):
    staff = get_user_model().objects.create_superuser("boss", "boss@example.com", "pw")
    client.force_login(staff)
    now = timezone.now()
    profile = CustomerProfile.objects.create(first_name="Ann")
    Identity.objects.create(profile=profile, kind=IdentityKind.EMAIL, value=ADDRESS)
    record_consent(profile, channel="email", purpose="marketing", granted=True, now=now)

    response = client.post(
        reverse("admin:omnichannel_message_preview"),
        {
            "profile": profile.pk,
            "channel": "email",
            "purpose": "marketing",
            "template": "test",
            "context": "",
            "_send": "1",
        },
    )
    message = Message.objects.get()
    assert response.status_code == 302, response.content.decode()[:2000]
    assert response["Location"] == reverse("admin:omnichannel_message_change", args=[message.pk])
    assert message.status == MessageStatus.SENT
    assert message.provider_message_id == POSTMARK_ID

    sent = json.loads(postmark.calls[0].request.body)
    headers = {header["Name"]: header["Value"] for header in sent["Headers"]}
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert sent["Metadata"] == {"omnichannel_message": message.uuid.hex}
    assert "Ann" in sent["HtmlBody"]

    for offset, (name, status) in enumerate(
        [("delivery", "delivered"), ("open", "opened"), ("click", "clicked")], start=1
    ):
        event = postmark_event(name, at=now + timedelta(minutes=offset), message_id=POSTMARK_ID)
        assert post(Client(), POSTMARK_HOOK, event).status_code == 200
        message.refresh_from_db()
        assert message.status == status

    # The mailbox provider POSTs to the https URL in List-Unsubscribe: no cookie, no CSRF token.
    url = re.search(r"<(https?://[^>]+)>", headers["List-Unsubscribe"]).group(1)
    path = url.split("://", 1)[1].split("/", 1)[1]
    provider = Client(enforce_csrf_checks=True)
    response = provider.post(
        "/" + path,
        data="List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 200
    assert not has_consent(profile, channel="email", purpose="marketing")
    message.refresh_from_db()
    assert message.status == MessageStatus.UNSUBSCRIBED
    assert message.clicked_at is not None and message.unsubscribed_at is not None
