"""Short click links: what SMS carries instead of a 200-character signed URL."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.test import override_settings
from django.utils import timezone

from omnichannel.channels.models import MessageStatus
from omnichannel.channels.sending import queue_message
from omnichannel.profiles.consents import record_consent
from omnichannel.profiles.models import CustomerProfile, Identity, IdentityKind
from omnichannel.tracking import links, tokens

pytestmark = pytest.mark.django_db

SETTINGS = {
    "SITE_URL": "https://shop.example.com",
    "CHANNELS": {
        "sms": {
            "BACKEND": "omnichannel.channels.sms.SmsChannel",
            "COST": "0.04",
            "OPTIONS": {"FROM": "Shop"},
        }
    },
}


@pytest.fixture
def sms_message():
    now = timezone.now()
    with override_settings(OMNICHANNEL=SETTINGS):
        profile = CustomerProfile.objects.create(first_name="Ann")
        Identity.objects.create(profile=profile, kind=IdentityKind.PHONE, value="+447700900123")
        record_consent(profile, channel="sms", purpose="marketing", granted=True, now=now)
        yield queue_message(
            profile,
            channel="sms",
            purpose="marketing",
            now=now,
            inline={
                "body.txt": "{% load omnichannel %}Hi {{ first_name }}: "
                '{% tracked_url "/basket/" %} or {% tracked_url "/offers/?a=1&b=2" %} '
                '{% tracked_url "/basket/" %}'
            },
        )


def short_links_in(text: str) -> list[str]:
    return [word for word in text.split() if "/omnichannel/s/" in word]


def test_sms_links_are_short_and_stored_on_the_message(sms_message):
    found = short_links_in(sms_message.body_text)
    assert len(found) == 3
    assert all(len(link) < 80 for link in found)
    assert found[0] == found[2]  # the same target twice is one link
    assert sms_message.data["links"] == [
        "https://shop.example.com/basket/",
        "https://shop.example.com/offers/?a=1&b=2",
    ]
    assert len(sms_message.body_text) < 220  # three signed links would be over 600


def test_a_short_link_records_the_click_and_redirects(client, sms_message):
    _, second, _ = short_links_in(sms_message.body_text)
    path = second.split("shop.example.com", 1)[1]
    with override_settings(OMNICHANNEL=SETTINGS):
        response = client.get(path)
    assert response.status_code == 302
    assert response["Location"] == "https://shop.example.com/offers/?a=1&b=2"
    sms_message.refresh_from_db()
    assert sms_message.status == MessageStatus.CLICKED


@pytest.mark.parametrize("change", ["tamper", "other_index", "expired", "deleted"])
def test_bad_short_links_change_nothing(client, sms_message, change):
    link = short_links_in(sms_message.body_text)[0]
    token = link.rstrip("/").rsplit("/", 1)[1]
    when = timezone.now()
    if change == "tamper":
        token = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    elif change == "other_index":
        value = sms_message.pk * links.SHORT_LINKS_PER_MESSAGE + 7
        token = tokens.make_compact_token(tokens.SHORT_CLICK, value)
    elif change == "expired":
        when += timedelta(days=91)
    elif change == "deleted":
        sms_message.delete()
    with override_settings(OMNICHANNEL=SETTINGS), time_machine.travel(when):
        response = client.get(f"/omnichannel/s/{token}/")
    assert response.status_code == 400
    if change != "deleted":
        sms_message.refresh_from_db()
        assert sms_message.clicked_at is None
