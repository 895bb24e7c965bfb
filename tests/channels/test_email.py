"""The email channel through the real sending service: Postmark (anymail) with its API faked by
`responses`, Django's locmem and SMTP backends, and the demo outbox."""

from __future__ import annotations

import json
import smtplib
import socket
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests
import responses
from anymail.backends.postmark import EmailBackend as PostmarkBackend
from django.core import mail
from django.utils import timezone
from oscar.core.loading import get_model
from oscar.test import factories

from omnichannel.channels.email import EmailChannel, html_to_text, map_email_error
from omnichannel.channels.models import (
    ChannelThrottle,
    Message,
    MessageStatus,
    MessageStatusChange,
    OutboxEntry,
)
from omnichannel.channels.registry import get_channel
from omnichannel.channels.sending import deliver_due_messages, deliver_message, queue_message
from omnichannel.exceptions import (
    ConfigurationError,
    PermanentChannelError,
    RateLimited,
    TemporaryChannelError,
)
from omnichannel.profiles.consents import record_consent
from omnichannel.profiles.models import CustomerProfile, Identity, IdentityKind

pytestmark = pytest.mark.django_db

Basket = get_model("basket", "Basket")

SITE = "https://shop.example.com"
POSTMARK = "anymail.backends.postmark.EmailBackend"
POSTMARK_API = "https://api.postmarkapp.com/email"
FROM = "Demo Shop <shop@example.com>"


def email_settings(**options: Any) -> dict[str, Any]:
    """OMNICHANNEL with one email channel sending through ``options``."""
    return {
        "SITE_URL": SITE,
        "COST_CURRENCY": "GBP",
        "SEND_MAX_ATTEMPTS": 3,
        "SEND_RETRY_BASE_DELAY": 60,
        "SEND_RETRY_MAX_DELAY": 600,
        "THROTTLE_BASE_PAUSE": 30,
        "THROTTLE_MAX_PAUSE": 900,
        "CHANNELS": {
            "email": {
                "BACKEND": "omnichannel.channels.email.EmailChannel",
                "COST": "0.0008",
                "OPTIONS": {"FROM_EMAIL": FROM, **options},
            }
        },
    }


def make_profile(
    email: str = "ann@example.com",
    *,
    first_name: str = "Ann",
    last_name: str = "Smith",
    marketing: bool = True,
) -> CustomerProfile:
    """A person with an email identity and, by default, marketing consent for email."""
    profile = CustomerProfile.objects.create(first_name=first_name, last_name=last_name)
    Identity.objects.create(profile=profile, kind=IdentityKind.EMAIL, value=email)
    if marketing:
        record_consent(
            profile,
            channel="email",
            purpose="marketing",
            granted=True,
            now=timezone.now() - timedelta(days=1),
            source="web",
        )
    return profile


def postmark_ok(message_ids: dict[str, str] | None = None, *, rejected: set[str] = frozenset()):
    """A Postmark /email responder: echoes To, answers each address's MessageID, and a 422
    "inactive recipient" (ErrorCode 406) for the addresses in ``rejected``."""

    def reply(request):
        body = json.loads(request.body)
        address = body["To"].rsplit("<", 1)[-1].rstrip(">").lower()
        if address in rejected:
            return (
                422,
                {},
                json.dumps(
                    {
                        "ErrorCode": 406,
                        "Message": (
                            "You tried to send to a recipient that has been marked as "
                            f"inactive.\nFound inactive addresses: {address}.\nInactive "
                            "recipients are ones that have generated a hard bounce or a spam "
                            "complaint. "
                        ),
                    }
                ),
            )
        message_id = (message_ids or {}).get(address, f"pm-{address}")
        return (
            200,
            {},
            json.dumps(
                {
                    "To": body["To"],
                    "SubmittedAt": "2026-03-02T10:00:00.0000000Z",
                    "MessageID": message_id,
                    "ErrorCode": 0,
                    "Message": "OK",
                }
            ),
        )

    return reply


class CountingPostmarkBackend(PostmarkBackend):
    """anymail's Postmark backend, counting the HTTP sessions it opens."""

    sessions: list[object] = []

    def create_session(self):
        session = super().create_session()
        type(self).sessions.append(session)
        return session


@pytest.fixture
def postmark(settings):
    settings.OMNICHANNEL = email_settings(
        EMAIL_BACKEND=POSTMARK, UNSUBSCRIBE_MAILTO="unsubscribe@example.com"
    )
    settings.ANYMAIL = {"POSTMARK_SERVER_TOKEN": "server-token-for-tests"}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mocked:
        yield mocked


@pytest.fixture
def locmem(settings):
    settings.OMNICHANNEL = email_settings(
        EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend", REPLY_TO="help@example.com"
    )
    mail.outbox = []
    return mail.outbox


def sent_json(mocked: responses.RequestsMock, index: int = -1) -> dict[str, Any]:
    return json.loads(mocked.calls[index].request.body)


def headers_of(payload: dict[str, Any]) -> dict[str, str]:
    return {item["Name"]: item["Value"] for item in payload.get("Headers", [])}


# --- address, rendering ---------------------------------------------------------------------


def test_address_is_the_account_email_else_the_latest_identity(locmem, django_user_model):
    channel = get_channel("email")
    profile = CustomerProfile.objects.create()
    assert channel.get_address(profile) is None
    now = timezone.now()
    Identity.objects.create(
        profile=profile, kind="email", value="old@example.com", created_at=now - timedelta(days=9)
    )
    Identity.objects.create(profile=profile, kind="email", value="new@example.com", created_at=now)
    assert channel.get_address(profile) == "new@example.com"
    profile.user = django_user_model.objects.create_user("u", " Ann@Example.COM ", "pw")
    profile.save()
    assert channel.get_address(profile) == "ann@example.com"
    assert (
        channel.reachability(profile, "marketing").reason == "marketing consent for email not given"
    )


def test_welcome_email_is_inlined_responsive_and_has_a_derived_text_part(locmem):
    profile = make_profile()
    message = queue_message(
        profile, channel="email", purpose="marketing", template="welcome", now=timezone.now()
    )
    assert message.subject == "Welcome to Omnichannel demo shop, Ann"
    html = message.body_html
    # css-inline moved the rules onto the elements and kept the media queries in <head>.
    assert '<a class="button-a" href="https://shop.example.com" style="color: #ffffff;' in html
    head = html.split("</head>", 1)[0]
    assert "@media only screen and (max-width: 620px)" in head
    assert "prefers-color-scheme: dark" in head
    assert ".content { padding: 32px" not in head  # inlined, not left in the <style>
    # Email clients' own click tracking: our redirect is not used by default.
    assert "/omnichannel/c/" not in html
    # The footer: the preference centre always, the unsubscribe link for marketing.
    assert "/omnichannel/preferences/" in html and "/omnichannel/unsubscribe/" in html
    text = message.body_text
    assert text.startswith("Omnichannel demo shop (https://shop.example.com)")
    assert "Welcome, Ann!" in text
    assert "Start shopping (https://shop.example.com)" in text
    assert (
        "Choose which messages you get (https://shop.example.com/omnichannel/preferences/" in text
    )
    assert "<" not in text and "{" not in text
    assert "Thanks for joining us" not in text  # the hidden preheader is not repeated


def test_transactional_footer_has_no_unsubscribe_link(locmem):
    profile = make_profile(marketing=False)
    message = queue_message(
        profile, channel="email", purpose="transactional", template="test", now=timezone.now()
    )
    assert "/omnichannel/preferences/" in message.body_html
    assert "/omnichannel/unsubscribe/" not in message.body_html
    # test has its own text template.
    assert message.body_text.startswith("Hello Ann,")
    assert "Visit the shop: https://shop.example.com" in message.body_text


def test_click_redirect_and_open_pixel_when_the_esp_does_not_track(settings):
    settings.OMNICHANNEL = {
        **email_settings(EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend"),
        "EMAIL_CLICK_REDIRECT": True,
        "EMAIL_OPEN_PIXEL": True,
    }
    profile = make_profile()
    message = queue_message(
        profile, channel="email", purpose="marketing", template="welcome", now=timezone.now()
    )
    assert 'class="button-a" href="https://shop.example.com/omnichannel/c/' in message.body_html
    pixel = message.body_html.rsplit("<img", 1)[1]
    assert pixel.startswith(' src="https://shop.example.com/omnichannel/o/')
    assert "</body>" in pixel
    # Our redirect counts clicks, so the ESP's own wrapper is off by default.
    email = get_channel("email").build_email(message)
    assert email.track_clicks is False and email.track_opens is True


def test_a_message_needs_a_body(locmem):
    profile = make_profile()
    with pytest.raises(ConfigurationError, match=r"neither body\.html nor body\.txt"):
        queue_message(
            profile,
            channel="email",
            purpose="marketing",
            inline={"subject.txt": "Hello"},
            now=timezone.now(),
        )
    assert not Message.objects.exists()
    text_only = queue_message(
        profile,
        channel="email",
        purpose="marketing",
        inline={"subject.txt": "Hello", "body.txt": "Plain {{ first_name }}"},
        now=timezone.now(),
    )
    assert (text_only.body_text, text_only.body_html) == ("Plain Ann", "")


def test_abandoned_basket_lists_the_lines_with_prices_and_a_button(locmem, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    profile = make_profile()
    product = factories.create_product(title="Blue kettle", price=Decimal("24.50"))
    image = factories.ProductImageFactory(product=product)
    basket = factories.create_basket(empty=True)
    basket.add_product(product, quantity=2)
    basket.add_product(factories.create_product(title="Toaster", price=Decimal("19.99")))
    # As a campaign would load it: from the database, without a request's pricing strategy.
    basket = Basket.objects.get(pk=basket.pk)
    message = queue_message(
        profile,
        channel="email",
        purpose="marketing",
        template="abandoned_basket",
        context={"basket": basket, "basket_url": f"{SITE}/omnichannel/basket/abc/"},
        now=timezone.now(),
    )
    assert message.subject == "Ann, you left something in your basket"
    assert "Blue kettle" in message.body_html
    assert "£49.00" in message.body_html and "£19.99" in message.body_html
    # The kettle has a picture (absolute URL: mail is read outside the shop); the toaster none.
    assert (
        f'<img src="{SITE}{image.original.url}" width="64" alt="Blue kettle"' in message.body_html
    )
    assert message.body_html.count("<img") == 1
    assert "Blue kettle\nQuantity: 2 £49.00\n\nToaster £19.99" in message.body_text
    assert 'href="https://shop.example.com/omnichannel/basket/abc/"' in message.body_html
    assert "Quantity: 2" in message.body_text
    assert "Back to my basket (https://shop.example.com/omnichannel/basket/abc/)" in (
        message.body_text
    )


def test_html_to_text_keeps_structure_and_links():
    html = (
        "<html><head><title>t</title><style>p{color:red}</style></head><body>"
        '<div style="display: none">hidden</div><h1>Title</h1><p>One&nbsp;<b>two</b></p>'
        '<ul><li>a</li><li><a href="https://x.example/">link</a></li></ul>'
        '<p><a href="https://x.example/">https://x.example/</a><br>next</p></body></html>'
    )
    assert html_to_text(html) == (
        "Title\n\nOne two\n\n- a\n- link (https://x.example/)\n\nhttps://x.example/\nnext"
    )


# --- Postmark (anymail) against its faked API ----------------------------------------------


def test_postmark_receives_the_full_email_and_its_id_is_stored(postmark):
    postmark.add_callback(
        responses.POST,
        POSTMARK_API,
        callback=postmark_ok({"ann@example.com": "b7bc2f4a-e38e-4336-af7d-e6c392c2f817"}),
    )
    profile = make_profile()
    now = timezone.now()
    message = queue_message(
        profile,
        channel="email",
        purpose="marketing",
        template="welcome",
        tags=["spring-sale"],
        now=now,
    )
    assert deliver_due_messages(now=now) == 1

    message.refresh_from_db()
    assert message.status == MessageStatus.SENT
    assert message.provider_message_id == "b7bc2f4a-e38e-4336-af7d-e6c392c2f817"
    assert message.cost == Decimal("0.0008") and message.currency == "GBP"

    request = postmark.calls[0].request
    assert request.headers["X-Postmark-Server-Token"] == "server-token-for-tests"
    payload = sent_json(postmark)
    assert payload["From"] == FROM
    assert payload["To"] == "Ann Smith <ann@example.com>"
    assert payload["Subject"] == "Welcome to Omnichannel demo shop, Ann"
    assert payload["HtmlBody"] == message.body_html
    assert payload["TextBody"] == message.body_text
    assert payload["Metadata"] == {"omnichannel_message": message.uuid.hex}
    # Postmark takes one tag: the message's own comes first.
    assert payload["Tag"] == "spring-sale"
    assert payload["TrackOpens"] is True
    assert payload["TrackLinks"] == "HtmlAndText"
    headers = headers_of(payload)
    assert headers["Message-ID"] == f"<{message.uuid.hex}.omnichannel@example.com>"
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    https, mailto = headers["List-Unsubscribe"].split(", ")
    assert https.startswith("<https://shop.example.com/omnichannel/unsubscribe/")
    assert mailto == f"<mailto:unsubscribe@example.com?subject=unsubscribe-{message.uuid.hex}>"


def test_postmark_transactional_email_has_no_list_unsubscribe(postmark):
    postmark.add_callback(responses.POST, POSTMARK_API, callback=postmark_ok())
    profile = make_profile(marketing=False)
    message = queue_message(
        profile, channel="email", purpose="transactional", template="test", now=timezone.now()
    )
    message = deliver_message(message, now=timezone.now())
    assert message.status == MessageStatus.SENT
    payload = sent_json(postmark)
    assert "List-Unsubscribe" not in headers_of(payload)
    assert payload["Tag"] == "transactional"


def test_postmark_422_fails_the_message_with_postmarks_reason(postmark):
    postmark.add(
        responses.POST,
        POSTMARK_API,
        status=422,
        json={"ErrorCode": 300, "Message": "Invalid 'From' address: 'shop@example.com'."},
    )
    message = queue_message(
        make_profile(), channel="email", purpose="marketing", template="welcome",
        now=timezone.now(),
    )  # fmt: skip
    message = deliver_message(message, now=timezone.now())
    assert message.status == MessageStatus.FAILED
    assert message.error == "Postmark 422: Invalid 'From' address: 'shop@example.com'."
    assert message.history.get(status=MessageStatus.FAILED).detail["permanent"] is True
    assert len(postmark.calls) == 1  # not retried


def test_postmark_500_is_retried_later_then_sent(postmark):
    postmark.add(responses.POST, POSTMARK_API, status=500, json={"Message": "Internal error"})
    postmark.add_callback(responses.POST, POSTMARK_API, callback=postmark_ok())
    now = timezone.now()
    message = queue_message(
        make_profile(), channel="email", purpose="marketing", template="welcome", now=now
    )
    deliver_due_messages(now=now)
    message.refresh_from_db()
    assert message.status == MessageStatus.QUEUED
    assert message.next_attempt_at > now
    assert message.error == "Postmark 500: Internal error"
    assert deliver_due_messages(now=now) == 0  # not due yet

    later = message.next_attempt_at + timedelta(seconds=1)
    assert deliver_due_messages(now=later) == 1
    message.refresh_from_db()
    assert message.status == MessageStatus.SENT
    assert message.provider_message_id == "pm-ann@example.com"
    assert message.attempts == 2
    assert len(postmark.calls) == 2


def test_postmark_timeout_is_a_temporary_error(postmark):
    postmark.add(responses.POST, POSTMARK_API, body=requests.exceptions.ConnectTimeout("slow"))
    now = timezone.now()
    message = queue_message(
        make_profile(), channel="email", purpose="marketing", template="welcome", now=now
    )
    message = deliver_message(message, now=now)
    assert message.status == MessageStatus.QUEUED
    assert message.next_attempt_at > now
    assert "ConnectTimeout" in message.error


def test_postmark_429_pauses_the_channel_and_requeues(postmark):
    postmark.add(
        responses.POST,
        POSTMARK_API,
        status=429,
        headers={"Retry-After": "120"},
        json={"ErrorCode": 429, "Message": "Rate limit exceeded"},
    )
    now = timezone.now()
    first = queue_message(
        make_profile(), channel="email", purpose="marketing", template="welcome", now=now
    )
    second = queue_message(
        make_profile("bob@example.com", first_name="Bob"),
        channel="email",
        purpose="marketing",
        template="welcome",
        now=now,
    )
    assert deliver_due_messages(now=now) == 2
    assert len(postmark.calls) == 1  # the second was not attempted after the 429
    throttle = ChannelThrottle.objects.get(channel="email")
    assert throttle.paused_until == now + timedelta(seconds=120)
    for message in (first, second):
        message.refresh_from_db()
        assert message.status == MessageStatus.QUEUED
        assert message.next_attempt_at == throttle.paused_until
        assert message.attempts == 0
        assert message.error == "rate limited: Postmark 429: Rate limit exceeded"
    assert deliver_due_messages(now=now + timedelta(seconds=60)) == 0  # paused


def test_a_batch_of_three_with_one_rejected_recipient_goes_over_one_session(postmark, settings):
    CountingPostmarkBackend.sessions = []
    settings.OMNICHANNEL = email_settings(
        EMAIL_BACKEND=f"{__name__}.CountingPostmarkBackend", BATCH_SIZE=10
    )
    postmark.add_callback(
        responses.POST, POSTMARK_API, callback=postmark_ok(rejected={"bob@example.com"})
    )
    now = timezone.now()
    people = [
        make_profile("ann@example.com"),
        make_profile("bob@example.com", first_name="Bob"),
        make_profile("cy@example.com", first_name="Cy"),
    ]
    messages = [
        queue_message(p, channel="email", purpose="marketing", template="welcome", now=now)
        for p in people
    ]
    assert deliver_due_messages(now=now) == 3
    assert len(postmark.calls) == 3
    # One session for the batch, plus one reopened after the refused recipient.
    assert len(CountingPostmarkBackend.sessions) == 2
    ann, bob, cy = (Message.objects.get(pk=m.pk) for m in messages)
    assert (ann.status, ann.provider_message_id) == (MessageStatus.SENT, "pm-ann@example.com")
    assert (cy.status, cy.provider_message_id) == (MessageStatus.SENT, "pm-cy@example.com")
    assert bob.status == MessageStatus.FAILED
    assert bob.provider_message_id == ""
    assert bob.error.startswith("recipient refused: You tried to send to a recipient")
    assert "bob@example.com" in bob.error


def test_send_batch_returns_one_result_per_message(postmark):
    postmark.add_callback(
        responses.POST, POSTMARK_API, callback=postmark_ok(rejected={"bob@example.com"})
    )
    now = timezone.now()
    messages = [
        queue_message(
            make_profile(address, first_name="", last_name=""),
            channel="email",
            purpose="marketing",
            template="welcome",
            now=now,
        )
        for address in ("ann@example.com", "bob@example.com", "cy@example.com")
    ]
    results = get_channel("email").send_batch(messages)
    assert results[0] == "pm-ann@example.com" and results[2] == "pm-cy@example.com"
    assert isinstance(results[1], PermanentChannelError)
    assert sent_json(postmark, 0)["To"] == "ann@example.com"  # no name: the bare address


# --- Django backends and the outbox ---------------------------------------------------------


def test_locmem_gets_a_multipart_email_with_our_message_id(locmem):
    profile = make_profile()
    now = timezone.now()
    message = queue_message(profile, channel="email", purpose="marketing", template="test", now=now)
    message = deliver_message(message, now=now)
    assert message.status == MessageStatus.SENT
    assert len(locmem) == 1
    email = locmem[0]
    assert email.to == ["Ann Smith <ann@example.com>"]
    assert email.from_email == FROM
    assert email.reply_to == ["help@example.com"]
    assert email.body == message.body_text
    assert email.alternatives[0][1] == "text/html"
    assert email.alternatives[0][0] == message.body_html
    assert email.extra_headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # Without anymail the id is our own Message-ID, stable across retries.
    assert message.provider_message_id == f"<{message.uuid.hex}.omnichannel@example.com>"
    parsed = email.message()
    assert parsed["Message-ID"] == message.provider_message_id
    assert parsed.get_content_type() == "multipart/alternative"


def test_outbox_mode_stores_the_email_as_it_would_be_sent(settings):
    settings.OMNICHANNEL = email_settings(EMAIL_BACKEND=POSTMARK, OUTBOX=True)
    mail.outbox = []
    profile = make_profile()
    now = timezone.now()
    message = queue_message(
        profile, channel="email", purpose="marketing", template="welcome", tags=["demo"], now=now
    )
    with responses.RequestsMock() as mocked:  # nothing may reach Postmark
        message = deliver_message(message, now=now)
        assert not mocked.calls
    assert message.status == MessageStatus.SENT
    entry = OutboxEntry.objects.get()
    assert message.provider_message_id == f"outbox-{entry.pk}"
    assert (entry.address, entry.subject) == ("ann@example.com", message.subject)
    assert entry.body_html == message.body_html and entry.body_text == message.body_text
    payload = entry.payload
    assert payload["backend"] == POSTMARK
    assert payload["to"] == ["Ann Smith <ann@example.com>"]
    assert payload["from"] == FROM
    assert payload["metadata"] == {"omnichannel_message": message.uuid.hex}
    assert payload["tags"] == ["demo"]
    assert payload["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert payload["headers"]["List-Unsubscribe"].startswith(f"<{SITE}/omnichannel/unsubscribe/")
    assert payload["parts"] == ["text/plain", "text/html"]
    assert not mail.outbox


def test_smtp_connection_refused_is_temporary(settings):
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.OMNICHANNEL = email_settings(
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend"
    )
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", port, 2
    now = timezone.now()
    message = queue_message(
        make_profile(), channel="email", purpose="marketing", template="welcome", now=now
    )
    message = deliver_message(message, now=now)
    assert message.status == MessageStatus.QUEUED
    assert message.error.startswith("ConnectionRefusedError")
    assert MessageStatusChange.objects.filter(message=message, status="queued").count() == 2


SMTP_CASES = [
    (
        smtplib.SMTPRecipientsRefused({"a@x.example": (550, b"no such user")}),
        PermanentChannelError,
        "550 no such user",
    ),
    (
        smtplib.SMTPRecipientsRefused({"a@x.example": (451, b"try later")}),
        TemporaryChannelError,
        "451 try later",
    ),
    (smtplib.SMTPDataError(554, b"rejected as spam"), PermanentChannelError, "SMTP 554"),
    (smtplib.SMTPSenderRefused(421, b"busy", "s@example.com"), TemporaryChannelError, "SMTP 421"),
    (smtplib.SMTPServerDisconnected("gone"), TemporaryChannelError, "gone"),
    (ConnectionRefusedError(111, "Connection refused"), TemporaryChannelError, "refused"),
    (TimeoutError("timed out"), TemporaryChannelError, "timed out"),
]


@pytest.mark.parametrize(("exc", "kind", "text"), SMTP_CASES)
def test_smtp_errors_map_by_code(exc, kind, text):
    error = map_email_error(exc)
    assert type(error) is kind
    assert text in error.reason


def test_unknown_options_are_refused(settings):
    settings.OMNICHANNEL = email_settings(FROM="x@example.com")
    with pytest.raises(ConfigurationError, match=r"unknown keys \['FROM'\]"):
        get_channel("email")


def test_rate_limited_carries_retry_after_from_an_http_date(postmark):
    when = timezone.now() + timedelta(minutes=5)
    postmark.add(
        responses.POST,
        POSTMARK_API,
        status=429,
        headers={"Retry-After": when.strftime("%a, %d %b %Y %H:%M:%S GMT")},
        json={"Message": "slow down"},
    )
    message = queue_message(
        make_profile(), channel="email", purpose="marketing", template="welcome",
        now=timezone.now(),
    )  # fmt: skip
    channel = get_channel("email")
    assert isinstance(channel, EmailChannel)
    with pytest.raises(RateLimited) as caught:
        channel.send(message)
    assert 240 < caught.value.retry_after <= 300


def test_names_with_line_breaks_and_international_domains_still_send(locmem):
    """Names come from checkouts and API payloads; a header injection attempt or an IDN
    domain must neither crash the batch nor reach the headers."""
    now = timezone.now()
    tricky = make_profile("jo@münchen.de", first_name="Jo\nBcc: evil@example.com", last_name="")
    plain = make_profile("ann@example.com")
    messages = [
        queue_message(person, channel="email", purpose="marketing", template="test", now=now)
        for person in (tricky, plain)
    ]
    deliver_due_messages(now=now)
    for message in messages:
        message.refresh_from_db()
        assert message.status == MessageStatus.SENT, message.error
    assert locmem[0].to == ['"Jo Bcc: evil@example.com" <jo@münchen.de>']
    headers = locmem[0].message()
    assert "xn--mnchen-3ya.de" in headers["To"]
    assert headers["Bcc"] is None  # the name stayed inside the quoted display name
