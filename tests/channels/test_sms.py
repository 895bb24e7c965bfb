"""The SMS channel through the real sending service; only Twilio's HTTP API is faked."""

from __future__ import annotations

import base64
import io
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from urllib.parse import parse_qs

import pytest
import requests
import responses
from django.conf import settings as django_settings

from omnichannel.channels.models import (
    ChannelThrottle,
    Message,
    MessageStatus,
    OutboxEntry,
    Suppression,
    SuppressionReason,
)
from omnichannel.channels.registry import get_channel
from omnichannel.channels.sending import deliver_due_messages, deliver_message, queue_message
from omnichannel.channels.sms import SmsChannel, SmsMessage
from omnichannel.channels.sms.backends import console, locmem
from omnichannel.channels.sms.backends.base import parse_retry_after
from omnichannel.exceptions import ConfigurationError, NotReachable, PermanentChannelError
from omnichannel.profiles.consents import has_consent, record_consent
from omnichannel.profiles.models import CustomerProfile, Identity, IdentityKind

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
SITE = "https://shop.example.com"
TWILIO_URL = "https://api.twilio.com/2010-04-01/Accounts/AC0123/Messages.json"
TWILIO = {
    "BACKEND": "omnichannel.channels.sms.SmsChannel",
    "COST": "0.04",
    "OPTIONS": {
        "BACKEND": "omnichannel.channels.sms.backends.twilio.SmsBackend",
        "FROM": "+447700900000",
        "ACCOUNT_SID": "AC0123",
        "AUTH_TOKEN": "twilio-auth-token",
    },
}
LOCMEM = {
    "BACKEND": "omnichannel.channels.sms.SmsChannel",
    "COST": "0.05",
    "OPTIONS": {"BACKEND": "omnichannel.channels.sms.backends.locmem.SmsBackend"},
}


@pytest.fixture
def use_channels(settings):
    """Replace the channels; the other keys of the demo's OMNICHANNEL dict stay."""

    def use(**channels):
        settings.OMNICHANNEL = {
            **django_settings.OMNICHANNEL,
            "SITE_URL": SITE,
            "SEND_RETRY_BASE_DELAY": 60,
            "THROTTLE_BASE_PAUSE": 30,
            "CHANNELS": channels,
        }

    return use


@pytest.fixture
def twilio(use_channels):
    use_channels(sms=TWILIO)
    with responses.RequestsMock() as mock:
        yield mock


@pytest.fixture
def outbox():
    locmem.outbox.clear()
    yield locmem.outbox
    locmem.outbox.clear()


def customer(phone="+447700900123", *, first_name="Ann", consent=True) -> CustomerProfile:
    profile = CustomerProfile.objects.create(first_name=first_name)
    Identity.objects.create(profile=profile, kind=IdentityKind.PHONE, value=phone)
    if consent:
        record_consent(
            profile, channel="sms", purpose="marketing", granted=True, now=NOW - timedelta(days=1)
        )
    return profile


def queue(profile, *, body=None, template="", purpose="marketing", channel="sms", **kwargs):
    inline = {"body.txt": body} if body is not None else None
    return queue_message(
        profile,
        channel=channel,
        purpose=purpose,
        now=NOW,
        template=template,
        inline=inline,
        **kwargs,
    )


def posted_form(call) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(call.request.body).items()}


def sent(sid="SM0123456789abcdef0123456789abcdef"):
    return {"sid": sid, "status": "queued", "num_segments": "1"}


# --- Twilio ------------------------------------------------------------------------------------


def test_twilio_happy_path_posts_the_form_and_stores_the_sid(twilio):
    twilio.post(TWILIO_URL, status=201, json=sent())
    message = queue(customer(), template="test")

    assert deliver_due_messages(now=NOW) == 1

    (call,) = twilio.calls
    form = posted_form(call)
    assert form == {
        "To": "+447700900123",
        "From": "+447700900000",
        "Body": (
            "Omnichannel demo shop: this is a test text message for Ann. "
            "If you can read it, SMS works."
        ),
        "StatusCallback": f"{SITE}/omnichannel/webhooks/sms/sms/?m={message.uuid.hex}",
    }
    expected_auth = base64.b64encode(b"AC0123:twilio-auth-token").decode()
    assert call.request.headers["Authorization"] == f"Basic {expected_auth}"
    assert call.request.req_kwargs["timeout"] == 10.0
    message.refresh_from_db()
    assert message.status == MessageStatus.SENT
    assert message.provider_message_id == "SM0123456789abcdef0123456789abcdef"
    assert message.sent_at == NOW
    assert message.units == 1
    assert message.cost == Decimal("0.04")
    assert message.data == {"segments": 1, "encoding": "GSM-7"}


def test_twilio_invalid_number_fails_with_twilios_reason_and_suppresses_it(twilio):
    twilio.post(
        TWILIO_URL,
        status=400,
        json={
            "code": 21211,
            "message": "The 'To' number +447700900123 is not a valid phone number.",
            "more_info": "https://www.twilio.com/docs/errors/21211",
            "status": 400,
        },
    )
    profile = customer()
    message = deliver_message(queue(profile, body="Hello"), now=NOW)

    assert message.status == MessageStatus.FAILED
    assert "21211" in message.error
    assert "is not a valid phone number" in message.error
    assert message.history.filter(status=MessageStatus.FAILED).get().detail["permanent"] is True
    suppression = Suppression.objects.get(channel="sms", address="+447700900123")
    assert suppression.reason == SuppressionReason.INVALID
    assert suppression.transactional_too
    with pytest.raises(NotReachable, match="suppressed"):
        queue(profile, body="Again", purpose="transactional")


def test_twilio_opt_out_withdraws_sms_marketing_consent(twilio):
    twilio.post(
        TWILIO_URL,
        status=400,
        json={"code": 21610, "message": "Attempt to send to unsubscribed recipient"},
    )
    profile = customer()
    message = deliver_message(queue(profile, body="Sale!"), now=NOW)

    assert message.status == MessageStatus.FAILED
    assert "unsubscribed recipient" in message.error
    assert not has_consent(profile, channel="sms", purpose="marketing")
    consent = profile.consents.order_by("-pk").first()
    assert consent.source == "provider"


def test_twilio_5xx_is_retried_later_then_sent(twilio):
    twilio.post(TWILIO_URL, status=503, json={"code": 20500, "message": "Service Unavailable"})
    message = queue(customer(), body="Hello")

    deliver_due_messages(now=NOW)

    message.refresh_from_db()
    assert message.status == MessageStatus.QUEUED
    assert message.attempts == 1
    assert "503" in message.error
    assert NOW + timedelta(seconds=30) <= message.next_attempt_at <= NOW + timedelta(seconds=60)
    assert deliver_due_messages(now=NOW + timedelta(seconds=1)) == 0  # not due yet

    twilio.replace(responses.POST, TWILIO_URL, status=201, json=sent("SMretry"))
    deliver_due_messages(now=NOW + timedelta(minutes=5))
    message.refresh_from_db()
    assert message.status == MessageStatus.SENT
    assert message.provider_message_id == "SMretry"
    assert len(twilio.calls) == 2


@pytest.mark.parametrize(
    "error", [requests.ConnectTimeout("connect"), requests.ConnectionError("refused")]
)
def test_twilio_timeouts_and_connection_errors_are_retried(twilio, error):
    twilio.post(TWILIO_URL, body=error)
    message = deliver_message(queue(customer(), body="Hello"), now=NOW)

    assert message.status == MessageStatus.QUEUED
    assert message.next_attempt_at > NOW
    assert "Twilio" in message.error


def test_twilio_429_pauses_the_channel_and_does_not_try_the_rest(twilio):
    twilio.post(
        TWILIO_URL,
        status=429,
        headers={"Retry-After": "120"},
        json={"code": 20429, "message": "Too Many Requests"},
    )
    first = queue(customer(), body="One")
    second = queue(customer("+447700900124"), body="Two")

    assert deliver_due_messages(now=NOW) == 2

    assert len(twilio.calls) == 1  # the second text was not attempted
    throttle = ChannelThrottle.objects.get(channel="sms")
    assert throttle.paused_until == NOW + timedelta(seconds=120)
    for message in (first, second):
        message.refresh_from_db()
        assert message.status == MessageStatus.QUEUED
        assert message.attempts == 0  # a 429 is not the message's fault
        assert message.next_attempt_at == NOW + timedelta(seconds=120)
        assert "Too Many Requests" in message.error
    # Paused: nothing is claimed before the pause ends.
    assert deliver_due_messages(now=NOW + timedelta(seconds=60)) == 0


def test_twilio_401_is_retried_not_failed(twilio):
    twilio.post(TWILIO_URL, status=401, json={"code": 20003, "message": "Authenticate"})
    message = deliver_message(queue(customer(), body="Hello"), now=NOW)
    assert message.status == MessageStatus.QUEUED
    assert "20003" in message.error


def test_twilio_api_url_can_be_overridden(use_channels):
    config = {**TWILIO, "OPTIONS": {**TWILIO["OPTIONS"], "API_URL": "http://127.0.0.1:9/twilio/"}}
    use_channels(sms=config)
    with responses.RequestsMock() as mock:
        mock.post(
            "http://127.0.0.1:9/twilio/2010-04-01/Accounts/AC0123/Messages.json",
            status=201,
            json=sent("SMlocal"),
        )
        message = deliver_message(queue(customer(), body="Hello"), now=NOW)
    assert message.provider_message_id == "SMlocal"


def test_no_status_callback_when_turned_off(use_channels):
    use_channels(sms={**TWILIO, "OPTIONS": {**TWILIO["OPTIONS"], "STATUS_CALLBACK": False}})
    with responses.RequestsMock() as mock:
        mock.post(TWILIO_URL, status=201, json=sent())
        deliver_message(queue(customer(), body="Hello"), now=NOW)
        assert "StatusCallback" not in posted_form(mock.calls[0])


def test_consent_withdrawn_after_queueing_means_not_sent(twilio):
    profile = customer()
    message = queue(profile, body="Sale!")
    record_consent(profile, channel="sms", purpose="marketing", granted=False, now=NOW)

    message = deliver_message(message, now=NOW)

    assert message.status == MessageStatus.SUPPRESSED
    assert len(twilio.calls) == 0


# --- segments and cost ---------------------------------------------------------------------


def test_segment_count_drives_units_and_cost(use_channels, outbox):
    use_channels(sms=LOCMEM)
    profile = customer()

    single = queue(profile, body="a" * 160)
    double = queue(profile, body="a" * 161)
    emoji = queue(profile, body="Hi 😀 " + "a" * 70)  # UCS-2: 77 units -> 2 segments
    euro = queue(profile, body="€" * 80)  # 160 septets

    assert (single.units, single.cost) == (1, Decimal("0.05"))
    assert (double.units, double.cost) == (2, Decimal("0.10"))
    assert (emoji.units, emoji.cost, emoji.data["encoding"]) == (2, Decimal("0.10"), "UCS-2")
    assert (euro.units, euro.data["encoding"]) == (1, "GSM-7")
    assert Message.objects.get(pk=double.pk).cost == Decimal("0.10")


def test_more_segments_than_max_segments_is_refused_and_stores_nothing(use_channels):
    use_channels(sms={**LOCMEM, "OPTIONS": {**LOCMEM["OPTIONS"], "MAX_SEGMENTS": 2}})
    profile = customer()
    assert queue(profile, body="a" * 306).units == 2

    with pytest.raises(PermanentChannelError, match=r"3 segments .*MAX_SEGMENTS is 2"):
        queue(profile, body="a" * 307)
    assert Message.objects.count() == 1


def test_default_max_segments_is_six(use_channels):
    use_channels(sms=LOCMEM)
    profile = customer()
    assert queue(profile, body="a" * 918).units == 6
    with pytest.raises(PermanentChannelError, match="MAX_SEGMENTS is 6"):
        queue(profile, body="a" * 919)


def test_an_empty_text_is_refused(use_channels):
    use_channels(sms=LOCMEM)
    with pytest.raises(PermanentChannelError, match="empty"):
        queue(customer(), body="{% if False %}x{% endif %}  ")


def test_html_escaping_is_undone_in_the_text(use_channels, outbox):
    use_channels(sms=LOCMEM)
    profile = customer(first_name="Zoë O'Brien & <Co>")
    message = deliver_message(queue(profile, body="Hi {{ first_name }}!"), now=NOW)
    assert message.body_text == "Hi Zoë O'Brien & <Co>!"
    assert outbox[0].body == "Hi Zoë O'Brien & <Co>!"


def test_typographic_characters_are_made_gsm7(use_channels):
    use_channels(sms=LOCMEM)
    message = queue(customer(), body="It\u2019s \u201chalf\u201d price \u2013 today only\u2026")
    assert message.body_text == 'It\'s "half" price - today only...'
    assert message.data["encoding"] == "GSM-7"


def test_smart_encoding_can_be_turned_off(use_channels):
    use_channels(sms={**LOCMEM, "OPTIONS": {**LOCMEM["OPTIONS"], "SMART_ENCODING": False}})
    message = queue(customer(), body="It\u2019s")
    assert message.body_text == "It\u2019s"
    assert message.data["encoding"] == "UCS-2"


@pytest.mark.parametrize("template", ["test", "welcome", "abandoned_basket"])
def test_demo_templates_fit_two_segments_with_a_tracked_link(use_channels, template):
    use_channels(sms=LOCMEM)
    profile = customer(first_name="Alexandra")
    message = queue(profile, template=template)
    assert message.units <= 2, message.body_text
    assert "Omnichannel demo shop" in message.body_text
    if template != "test":
        assert f"{SITE}/omnichannel/s/" in message.body_text
        assert message.body_text.endswith("Reply STOP to opt out.")
    transactional = queue(profile, template=template, purpose="transactional")
    assert "STOP" not in transactional.body_text


def test_abandoned_basket_links_to_the_given_basket_url(use_channels):
    use_channels(sms=LOCMEM)
    message = queue(customer(), template="abandoned_basket", context={"basket_url": "/basket/"})
    assert "Finish your order: https://shop.example.com/omnichannel/s/" in message.body_text
    assert message.units == 2


# --- addresses ----------------------------------------------------------------------------------


def test_the_most_recent_phone_number_is_used(use_channels):
    use_channels(sms=LOCMEM)
    profile = customer("+447700900123")
    Identity.objects.filter(profile=profile).update(created_at=NOW - timedelta(days=9))
    Identity.objects.create(
        profile=profile, kind=IdentityKind.PHONE, value="+447700900999", created_at=NOW
    )
    assert get_channel("sms").get_address(profile) == "+447700900999"


def test_no_phone_no_message(use_channels):
    use_channels(sms=LOCMEM)
    profile = CustomerProfile.objects.create()
    Identity.objects.create(profile=profile, kind=IdentityKind.EMAIL, value="a@example.com")
    record_consent(profile, channel="sms", purpose="marketing", granted=True, now=NOW)
    with pytest.raises(NotReachable, match="no sms address"):
        queue(profile, body="Hi")


# --- local backends ------------------------------------------------------------------------------


def test_locmem_backend_keeps_texts_in_its_outbox(use_channels, outbox):
    use_channels(sms={**LOCMEM, "OPTIONS": {**LOCMEM["OPTIONS"], "FROM": "MyShop"}})
    message = deliver_message(queue(customer(), body="Hello {{ first_name }}"), now=NOW)

    assert message.status == MessageStatus.SENT
    assert message.provider_message_id.startswith("locmem-")
    (sms,) = outbox
    assert sms == SmsMessage(
        to="+447700900123",
        body="Hello Ann",
        sender="MyShop",
        status_callback=f"{SITE}/omnichannel/webhooks/sms/sms/?m={message.uuid.hex}",
        reference=message.uuid.hex,
    )


def test_console_backend_is_the_default_and_prints(use_channels, capsys):
    use_channels(
        sms={"BACKEND": "omnichannel.channels.sms.SmsChannel", "OPTIONS": {"FROM": "Shop"}}
    )
    assert get_channel("sms").backend_path.endswith("console.SmsBackend")

    message = deliver_message(queue(customer(), body="Hello there"), now=NOW)

    assert message.status == MessageStatus.SENT
    out = capsys.readouterr().out
    assert f"SMS {message.provider_message_id}" in out
    assert "To: +447700900123" in out
    assert "Segments: 1 (GSM-7)" in out
    assert "Hello there" in out


def test_console_backend_writes_to_a_given_stream():
    stream = io.StringIO()
    backend = console.SmsBackend(stream=stream)
    results = backend.send_messages([SmsMessage(to="+447700900123", body="Привет", sender="X")])
    assert results[0].startswith("console-")
    assert "Segments: 1 (UCS-2)" in stream.getvalue()


def test_outbox_mode_of_the_demo_writes_the_outbox(use_channels):
    use_channels(sms=django_settings.OMNICHANNEL["CHANNELS"]["sms"])
    message = deliver_message(queue(customer(), template="test"), now=NOW)

    assert message.status == MessageStatus.SENT
    entry = OutboxEntry.objects.get(message=message)
    assert entry.address == "+447700900123"
    assert entry.payload == {
        "backend": "omnichannel.channels.sms.backends.console.SmsBackend",
        "from": "OmniDemo",
        "to": "+447700900123",
        "body": message.body_text,
        "segments": 1,
        "encoding": "GSM-7",
    }


# --- configuration -------------------------------------------------------------------------------


def test_a_real_provider_needs_a_sender(use_channels):
    options = {key: value for key, value in TWILIO["OPTIONS"].items() if key != "FROM"}
    use_channels(sms={**TWILIO, "OPTIONS": options})
    with pytest.raises(ConfigurationError, match=r"\['FROM'\] is required"):
        get_channel("sms")


def test_twilio_needs_its_credentials(use_channels):
    options = {key: value for key, value in TWILIO["OPTIONS"].items() if key != "AUTH_TOKEN"}
    use_channels(sms={**TWILIO, "OPTIONS": options})
    with pytest.raises(ConfigurationError, match="AUTH_TOKEN"):
        get_channel("sms")


def test_unknown_backend_options_are_refused(use_channels):
    use_channels(sms={**TWILIO, "OPTIONS": {**TWILIO["OPTIONS"], "AUTH_TOKN": "typo"}})
    with pytest.raises(ConfigurationError, match="AUTH_TOKN"):
        get_channel("sms")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"BACKEND": "omnichannel.nope.SmsBackend"}, "cannot import"),
        ({"BACKEND": "omnichannel.channels.sms.SmsChannel"}, "not a BaseSmsBackend"),
        ({"FROM": "+12"}, "FROM"),
        ({"FROM": "Far too long a name"}, "FROM"),
        ({"MAX_SEGMENTS": 0}, "MAX_SEGMENTS"),
        ({"MAX_SEGMENTS": "many"}, "MAX_SEGMENTS"),
    ],
)
def test_bad_channel_options_are_clear(use_channels, options, match):
    use_channels(sms={**LOCMEM, "OPTIONS": {**LOCMEM["OPTIONS"], **options}})
    with pytest.raises(ConfigurationError, match=match):
        get_channel("sms")


def test_outbox_mode_needs_no_provider_settings(use_channels):
    use_channels(
        sms={
            "BACKEND": "omnichannel.channels.sms.SmsChannel",
            "OPTIONS": {"OUTBOX": True, "BACKEND": TWILIO["OPTIONS"]["BACKEND"]},
        }
    )
    assert isinstance(get_channel("sms"), SmsChannel)


def test_parse_retry_after():
    assert parse_retry_after(None) is None
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Mon, 02 Mar 2026 10:01:00 GMT", now=NOW) == 60.0
    assert parse_retry_after("soon") is None
