"""Issue #5, end to end: an abandoned basket through Oscar's real views, the fold, the engine
and delivery, with time moved by time-machine.

Each test drives the demo shop with Django's test client, then runs what the workers would run
at chosen moments (``run_engine``: fold the events, which enrolls; tick; deliver). The test
settings put every channel in outbox mode, so each message that went is an ``OutboxEntry``.

The campaign is built here on the ready-made "abandoned_basket" trigger (60 minutes after the
latest basket change): email at once, then push 4 hours later, then SMS 4 hours after that,
each step only if the earlier messages were not opened.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from oscar.core.loading import get_model
from push_notifications.models import GCMDevice
from rest_framework.test import APIClient

from omnichannel.api.models import ApiKey, Scope
from omnichannel.campaigns.engine import tick
from omnichannel.campaigns.models import (
    Campaign,
    CampaignKind,
    CampaignStatus,
    CappedAction,
    Enrollment,
    EnrollmentState,
    ExitReason,
    Step,
    StopCondition,
)
from omnichannel.channels.models import Message, MessageStatus, OutboxEntry
from omnichannel.channels.sending import deliver_due_messages
from omnichannel.channels.status import record_status
from omnichannel.profiles.consents import record_consent
from omnichannel.profiles.identity import fold_pending_events
from omnichannel.profiles.models import CustomerProfile, EventSource, Identity, IdentityKind
from omnichannel.profiles.recording import registration_event, save_event
from tests import shop

pytestmark = pytest.mark.django_db

Basket = get_model("basket", "Basket")

#: A Monday, 09:00 UTC: the basket is abandoned then; the first email is due at 10:00.
START = datetime(2026, 3, 16, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
EMAIL_AT = START + HOUR
PUSH_AT = EMAIL_AT + 4 * HOUR
SMS_AT = PUSH_AT + 4 * HOUR
PASSWORD = "correct-horse-9"
PHONE = "+447911123456"
CASCADE = (("email", timedelta(0)), ("push", 4 * HOUR), ("sms", 4 * HOUR))


# --- the world ----------------------------------------------------------------------------------


@pytest.fixture
def at(time_machine):
    """``at(moment)``: the clock stands still at ``moment`` (requests, events, workers)."""

    def move(moment: datetime) -> datetime:
        time_machine.move_to(moment, tick=False)
        return moment

    move(START - HOUR)
    return move


def run_engine(now: datetime) -> None:
    """What the beat tasks do at ``now``: fold events (enrolls), tick, deliver."""
    fold_pending_events(now=now, batch_size=500)
    tick(now=now, dispatch=False)
    deliver_due_messages(now=now)


def basket_campaign(
    name: str = "Basket reminder",
    steps: tuple[tuple[str, timedelta], ...] = CASCADE,
    *,
    delay_minutes: int = 60,
    priority: int = 100,
    **fields,
) -> Campaign:
    campaign = Campaign(
        name=name,
        kind=CampaignKind.TRIGGERED,
        status=CampaignStatus.ACTIVE,
        trigger="abandoned_basket",
        trigger_options={"delay_minutes": delay_minutes},
        priority=priority,
        **fields,
    )
    campaign.full_clean()
    campaign.save()
    for position, (channel, wait) in enumerate(steps, start=1):
        step = Step(
            campaign=campaign,
            position=position,
            channel=channel,
            wait=wait,
            stop_if=StopCondition.OPENED,
            template="abandoned_basket",
        )
        step.full_clean()
        step.save()
    return campaign


class Shopper:
    """A customer who registered earlier (with the consents and devices asked for), now
    browsing anonymously with their own test client."""

    def __init__(
        self,
        *,
        email_consent: bool = True,
        push_device: bool = True,
        phone: bool = True,
        time_zone: str = "",
    ) -> None:
        self.email = "ada@example.com"
        self.user = get_user_model().objects.create_user(
            username="ada", email=self.email, password=PASSWORD, first_name="Ada"
        )
        save_event(registration_event(self.user))
        fold_pending_events(now=START - HOUR, batch_size=500)
        profile = self.profile
        if time_zone:
            CustomerProfile.objects.filter(pk=profile.pk).update(time_zone=time_zone)
        if email_consent:
            record_consent(profile, channel="email", purpose="marketing", granted=True, now=START)
        if push_device:
            GCMDevice.objects.create(
                user=self.user, registration_id="fcm-ada-phone", cloud_message_type="FCM"
            )
            record_consent(profile, channel="push", purpose="marketing", granted=True, now=START)
        if phone:
            Identity.objects.create(profile=profile, kind=IdentityKind.PHONE, value=PHONE)
            record_consent(profile, channel="sms", purpose="marketing", granted=True, now=START)
        self.client = Client()

    @property
    def profile(self) -> CustomerProfile:
        return CustomerProfile.objects.get(user=self.user)

    def abandon(self, *products) -> None:
        """Arrive anonymously, fill a basket, log in (Oscar merges the baskets), leave."""
        self.client.get("/")
        for product in products:
            shop.add_to_basket(self.client, product)
        response = self.client.post(
            reverse("customer:login"),
            {"login-username": self.email, "login-password": PASSWORD, "login_submit": "1"},
        )
        assert response.status_code == 302, response.content[:500]
        assert self.client.get(reverse("basket:summary")).status_code == 200

    def enrollment(self, campaign: Campaign | None = None) -> Enrollment:
        found = Enrollment.objects.filter(profile__user=self.user)
        if campaign is not None:
            found = found.filter(campaign=campaign)
        return found.get()


def outbox() -> list[tuple[str, str]]:
    """(channel, address) of everything that went, in order."""
    return list(OutboxEntry.objects.order_by("id").values_list("channel", "address"))


def sent_channels() -> list[str]:
    """Channels of the campaign messages that went, each with its outbox entry."""
    sent = list(Message.objects.filter(sent_at__isnull=False, campaign__isnull=False))
    for message in sent:
        assert message.outbox_entries.count() == 1, message
    return [m.channel for m in sorted(sent, key=lambda m: m.pk)]


def offline_order(*lines: tuple, number: str = "S12-000123") -> None:
    """A purchase at a store's till, by the shopper's phone, through the API."""
    _key, raw = ApiKey.objects.create_key(
        name="Store 12 till", source=EventSource.OFFLINE, scopes=[Scope.ORDERS]
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw}")
    body = {
        "number": number,
        "store": {"id": "S12", "name": "Store 12, High Street"},
        "occurred_at": timezone.now().isoformat(),
        "currency": "GBP",
        "total": str(sum(Decimal(price) for _product, price in lines)),
        "customer": {"phone": "07911 123456"},
        "lines": [
            {"product_id": product.pk, "quantity": 1, "unit_price": price}
            for product, price in lines
        ],
    }
    response = client.post(reverse("omnichannel-api:offline-orders"), body, format="json")
    assert response.status_code == 201, response.json()


@pytest.fixture
def fridge():
    return shop.create_product("499.00", title="Fridge")


@pytest.fixture
def kettle():
    return shop.create_product("25.00", title="Kettle")


# --- the cascade --------------------------------------------------------------------------------


def test_an_abandoned_basket_gets_an_email_after_an_hour_then_a_push_then_an_sms(at, fridge):
    campaign = basket_campaign()
    ada = Shopper()
    at(START)
    ada.abandon(fridge)
    run_engine(at(START))
    enrollment = ada.enrollment(campaign)
    # Oscar merged the visitor's basket into the customer's at login: the reminder follows.
    assert enrollment.subject_key == f"basket:{Basket.objects.get(owner=ada.user).pk}"
    assert enrollment.next_due_at == EMAIL_AT
    assert outbox() == []

    run_engine(at(EMAIL_AT - timedelta(minutes=1)))
    assert outbox() == []
    run_engine(at(EMAIL_AT))
    assert outbox() == [("email", ada.email)]
    email = Message.objects.get(channel="email")
    assert (email.status, email.enrollment_id, email.step.position) == ("sent", enrollment.pk, 1)
    assert "Fridge" in OutboxEntry.objects.get().body_html
    run_engine(at(EMAIL_AT + timedelta(minutes=5)))  # nothing is sent twice
    assert sent_channels() == ["email"]

    # Not opened after 4 hours: one push to the shopper's phone.
    run_engine(at(PUSH_AT - timedelta(minutes=1)))
    assert sent_channels() == ["email"]
    run_engine(at(PUSH_AT))
    assert sent_channels() == ["email", "push"]
    push = OutboxEntry.objects.get(channel="push")
    assert push.address == "fcm:1"
    assert "fcm" in push.payload

    # Both ignored: the SMS goes 4 hours after the push, and the cascade is over.
    run_engine(at(SMS_AT))
    assert sent_channels() == ["email", "push", "sms"]
    assert outbox()[-1] == ("sms", PHONE)
    enrollment.refresh_from_db()
    assert (enrollment.state, enrollment.exit_reason) == (
        EnrollmentState.COMPLETED,
        ExitReason.COMPLETED,
    )
    run_engine(at(SMS_AT + 8 * HOUR))
    assert len(outbox()) == 3


def test_an_opened_email_stops_the_push(at, fridge):
    campaign = basket_campaign()
    ada = Shopper()
    at(START)
    ada.abandon(fridge)
    run_engine(at(START))
    run_engine(at(EMAIL_AT))
    email = Message.objects.get(channel="email")
    record_status(email, MessageStatus.OPENED, at=EMAIL_AT + HOUR, source="test")

    run_engine(at(PUSH_AT))
    run_engine(at(SMS_AT))
    assert outbox() == [("email", ada.email)]
    enrollment = ada.enrollment(campaign)
    assert (enrollment.state, enrollment.exit_reason) == (
        EnrollmentState.EXITED,
        ExitReason.ENGAGED,
    )
    assert "opened" in enrollment.log.get(action="exited").detail


def test_a_checkout_before_the_first_step_ends_the_reminder_as_converted(at, fridge):
    campaign = basket_campaign()
    ada = Shopper()
    at(START)
    ada.abandon(fridge)
    run_engine(at(START))

    at(START + timedelta(minutes=30))
    shop.checkout(ada.client, phone="07911 123456")
    run_engine(at(START + timedelta(minutes=30)))
    run_engine(at(EMAIL_AT))
    run_engine(at(SMS_AT))

    assert outbox() == []
    assert not Message.objects.filter(campaign=campaign).exists()
    enrollment = ada.enrollment(campaign)
    assert (enrollment.state, enrollment.exit_reason) == (
        EnrollmentState.EXITED,
        ExitReason.CONVERTED,
    )


# --- SMS only as the last resort ----------------------------------------------------------------


def test_sms_goes_at_once_when_neither_email_nor_push_can_reach(at, fridge):
    basket_campaign()
    ada = Shopper(email_consent=False, push_device=False)
    at(START)
    ada.abandon(fridge)
    run_engine(at(START))

    run_engine(at(EMAIL_AT))
    assert outbox() == [("sms", PHONE)]
    enrollment = ada.enrollment()
    skipped = dict(enrollment.log.filter(action="skipped").values_list("channel", "detail"))
    assert "consent" in skipped["email"]
    assert "device" in skipped["push"]
    assert enrollment.state == EnrollmentState.COMPLETED
    run_engine(at(SMS_AT))
    assert sent_channels() == ["sms"]


def test_sms_follows_an_ignored_email_when_push_cannot_reach(at, fridge):
    basket_campaign()
    ada = Shopper(push_device=False)
    at(START)
    ada.abandon(fridge)
    run_engine(at(START))
    run_engine(at(EMAIL_AT))
    assert sent_channels() == ["email"]

    # The push step is skipped; the SMS waits its 4 hours after the email, not after nothing.
    run_engine(at(PUSH_AT - timedelta(minutes=1)))
    assert sent_channels() == ["email"]
    run_engine(at(PUSH_AT))
    assert sent_channels() == ["email", "sms"]
    assert outbox() == [("email", ada.email), ("sms", PHONE)]


def test_no_sms_when_email_and_push_reached_the_person(at, fridge):
    basket_campaign()
    ada = Shopper()
    at(START)
    ada.abandon(fridge)
    run_engine(at(START))
    run_engine(at(EMAIL_AT))
    run_engine(at(PUSH_AT))
    push = Message.objects.get(channel="push")
    record_status(push, MessageStatus.CLICKED, at=PUSH_AT + HOUR, source="test")
    run_engine(at(SMS_AT))
    assert sent_channels() == ["email", "push"]
    assert ada.enrollment().exit_reason == ExitReason.ENGAGED


# --- timing and caps ----------------------------------------------------------------------------


def test_quiet_hours_defer_the_email_to_the_shoppers_morning(at, fridge):
    basket_campaign()
    # 10:00 UTC is 03:00 in Los Angeles (PDT, UTC-7 since 8 March 2026): night there.
    ada = Shopper(time_zone="America/Los_Angeles")
    at(START)
    ada.abandon(fridge)
    run_engine(at(START))

    run_engine(at(EMAIL_AT))
    assert outbox() == []
    morning = datetime(2026, 3, 16, 15, 0, tzinfo=UTC)  # 08:00 in Los Angeles
    enrollment = ada.enrollment()
    assert enrollment.next_due_at == morning
    assert "quiet hours in America/Los_Angeles" in enrollment.log.get(action="deferred").detail

    run_engine(at(morning - timedelta(minutes=1)))
    assert outbox() == []
    run_engine(at(morning))
    assert outbox() == [("email", ada.email)]


def test_a_cap_holds_back_the_lower_priority_campaign(at, fridge, settings):
    settings.OMNICHANNEL = {**settings.OMNICHANNEL, "FREQUENCY_CAPS": {"day": 1, "week": 5}}
    reminder = basket_campaign(priority=100)
    # A promotion on the same basket, due earlier (30 minutes) but of lower priority.
    promo = basket_campaign(
        "Basket promo", (("email", timedelta(0)),), delay_minutes=30, priority=0
    )
    ada = Shopper()
    at(START)
    ada.abandon(fridge)
    run_engine(at(START))
    assert Enrollment.objects.filter(profile__user=ada.user).count() == 2

    run_engine(at(START + timedelta(minutes=30)))
    assert outbox() == []
    held = ada.enrollment(promo)
    assert held.state == EnrollmentState.ACTIVE
    detail = held.log.get(action="deferred").detail
    assert "cap of 1 per day" in detail and "kept for higher-priority" in detail

    run_engine(at(EMAIL_AT))
    assert outbox() == [("email", ada.email)]
    assert Message.objects.get().campaign_id == reminder.pk
    # Later that day the promotion is still held: the day's one contact is taken.
    run_engine(at(PUSH_AT))
    assert not Message.objects.filter(campaign=promo).exists()


def test_a_cap_can_drop_what_it_holds_back(at, fridge, settings):
    settings.OMNICHANNEL = {**settings.OMNICHANNEL, "FREQUENCY_CAPS": {"day": 1}}
    basket_campaign(priority=100)
    promo = basket_campaign(
        "Basket promo",
        (("email", timedelta(0)),),
        priority=0,
        when_capped=CappedAction.DROP,
    )
    ada = Shopper()
    at(START)
    ada.abandon(fridge)
    run_engine(at(START))
    run_engine(at(EMAIL_AT))
    assert outbox() == [("email", ada.email)]
    assert ada.enrollment(promo).exit_reason == ExitReason.CAPPED


# --- offline purchases --------------------------------------------------------------------------


def test_buying_the_baskets_items_in_a_store_ends_the_reminder(at, fridge, kettle):
    campaign = basket_campaign()
    ada = Shopper()
    at(START)
    ada.abandon(fridge, kettle)
    run_engine(at(START))

    at(START + timedelta(minutes=30))
    offline_order((fridge, "499.00"), (kettle, "25.00"))
    run_engine(at(START + timedelta(minutes=30)))
    run_engine(at(EMAIL_AT))

    assert outbox() == []
    enrollment = ada.enrollment(campaign)
    assert (enrollment.state, enrollment.exit_reason) == (
        EnrollmentState.EXITED,
        ExitReason.BOUGHT_ITEMS,
    )


def test_buying_some_items_in_a_store_drops_them_from_the_message(at, fridge, kettle):
    campaign = basket_campaign()
    # Inline text naming the message's items, so the test reads exactly what it says.
    Step.objects.filter(campaign=campaign, channel="email").update(
        content={"email": {"body.txt": "{% for item in items %}[{{ item.title }}]{% endfor %}"}}
    )
    ada = Shopper()
    at(START)
    ada.abandon(fridge, kettle)
    run_engine(at(START))

    at(START + timedelta(minutes=30))
    offline_order((kettle, "25.00"))
    run_engine(at(START + timedelta(minutes=30)))
    run_engine(at(EMAIL_AT))

    assert outbox() == [("email", ada.email)]
    entry = OutboxEntry.objects.get()
    assert "[Fridge]" in entry.body_text
    assert "Kettle" not in entry.body_text
    assert ada.enrollment(campaign).state == EnrollmentState.ACTIVE
