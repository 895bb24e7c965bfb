"""The conversion admin: read-only list with filters, and one order with its influences.

Conversions are made by the real attribution over hand-built histories, then read through
the test client as a superuser.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from omnichannel.analytics.attribution import attribute_orders
from omnichannel.analytics.models import Conversion
from omnichannel.campaigns.models import Campaign, CampaignStatus, Step, Variant
from omnichannel.channels.models import Message, MessageStatus, MessageStatusChange
from omnichannel.profiles.models import CustomerProfile, Event, EventSource, EventType

pytestmark = pytest.mark.django_db

ORDER_AT = datetime(2026, 3, 16, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
CHANGELIST = "admin:omnichannel_conversion_changelist"


def history(
    number: str,
    *,
    clicked: bool = True,
    source: str = EventSource.WEB,
    with_variant: bool = False,
) -> Conversion:
    """An order (with receipt ``number``) after an SMS delivery and, if ``clicked``, a click on
    a campaign email (of a step's variant if ``with_variant``)."""
    profile = CustomerProfile.objects.create(first_name="Ada")
    campaign = Campaign.objects.create(
        name=f"Reminder {number}", trigger="welcome", status=CampaignStatus.ACTIVE
    )
    step = Step.objects.create(campaign=campaign, position=1, channel="email", template="welcome")
    variant = Variant.objects.create(step=step, name=f"B {number}") if with_variant else None
    if clicked:
        email = Message.objects.create(
            profile=profile,
            channel="email",
            purpose="marketing",
            subject=f"Your basket {number}",
            campaign=campaign,
            step=step,
            variant=variant,
            status=MessageStatus.CLICKED,
            clicked_at=ORDER_AT - HOUR,
        )
        MessageStatusChange.objects.create(
            message=email, status=MessageStatus.CLICKED, occurred_at=ORDER_AT - HOUR
        )
    sms = Message.objects.create(
        profile=profile,
        channel="sms",
        purpose="marketing",
        subject="Last chance",
        status=MessageStatus.DELIVERED,
        delivered_at=ORDER_AT - 2 * HOUR,
    )
    MessageStatusChange.objects.create(
        message=sms, status=MessageStatus.DELIVERED, occurred_at=ORDER_AT - 2 * HOUR
    )
    event = Event.objects.create(
        type=EventType.ORDER_PLACED,
        profile=profile,
        source=source,
        occurred_at=ORDER_AT,
        amount=Decimal("42.00"),
        currency="GBP",
        payload={"number": number},
        processed_at=ORDER_AT,
    )
    attribute_orders(now=ORDER_AT + HOUR)
    return Conversion.objects.get(order_event=event)


def test_the_list_filters_by_model_campaign_source_and_attribution(admin_client):
    clicked = history("W-1")
    offline = history("S12-9", clicked=False, source=EventSource.OFFLINE)
    url = reverse(CHANGELIST)

    response = admin_client.get(url)
    assert response.status_code == 200
    assert "W-1" in response.text and "S12-9" in response.text
    assert "42.00 GBP" in response.text

    def shown(**params: str) -> set[int]:
        response = admin_client.get(url, params)
        assert response.status_code == 200
        return {row.pk for row in response.context["cl"].result_list}

    assert shown(model="click") == {clicked.pk}
    assert shown(model="delivery") == {offline.pk}
    assert shown(attributed="yes") == {clicked.pk, offline.pk}
    assert shown(source="offline") == {offline.pk}
    assert shown(campaign=str(clicked.campaign_id)) == {clicked.pk}
    assert shown(channel="sms") == {offline.pk}
    assert shown(profile=str(clicked.profile_id)) == {clicked.pk}
    assert shown(q="S12-9") == {offline.pk}
    # Typed-in nonsense shows everything rather than failing.
    assert shown(campaign="abc", source="moon") == {clicked.pk, offline.pk}


def test_one_conversion_shows_its_message_and_influences(admin_client):
    conversion = history("W-2")
    response = admin_client.get(
        reverse("admin:omnichannel_conversion_change", args=[conversion.pk])
    )
    assert response.status_code == 200
    text = response.text
    assert reverse("admin:omnichannel_message_change", args=[conversion.message_id]) in text
    assert "Last chance" in text  # the SMS delivery: an influence
    assert "Delivered within the delivery window" in text


def test_conversions_cannot_be_added_changed_or_deleted(admin_client):
    conversion = history("W-3")
    assert admin_client.get(reverse("admin:omnichannel_conversion_add")).status_code == 403
    change = reverse("admin:omnichannel_conversion_change", args=[conversion.pk])
    assert admin_client.post(change, {"model": "none"}).status_code == 403
    delete = reverse("admin:omnichannel_conversion_delete", args=[conversion.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert Conversion.objects.get(pk=conversion.pk).model == "click"


def test_the_list_costs_the_same_queries_for_more_rows(admin_client):
    url = reverse(CHANGELIST)
    history("W-4", with_variant=True)
    admin_client.get(url)  # warm caches (content types, sessions)
    with CaptureQueriesContext(connection) as few:
        assert admin_client.get(url).status_code == 200
    for index in range(5):
        history(f"W-5{index}", with_variant=True)
        history(f"W-6{index}")
    with CaptureQueriesContext(connection) as more:
        assert admin_client.get(url).status_code == 200
    assert len(more) == len(few)
