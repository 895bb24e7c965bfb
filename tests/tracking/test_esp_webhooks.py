"""ESP webhooks through anymail's real views: documented Postmark and Mailgun payloads posted
to /anymail/<esp>/tracking/ (basic auth; Mailgun's HMAC signature too) update our messages,
suppressions and consents. Messages are first sent through the real anymail backends with the
ESPs' APIs faked by `responses`, so the ids in the events are the ones the sends stored."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import responses
from django.db import OperationalError
from django.utils import timezone

from omnichannel.channels.models import (
    Message,
    MessageStatus,
    MessageStatusChange,
    Suppression,
    SuppressionReason,
)
from omnichannel.channels.sending import deliver_due_messages, queue_message
from omnichannel.exceptions import NotReachable
from omnichannel.profiles.consents import current_consents, has_consent
from omnichannel.profiles.models import Consent, ConsentSource, CustomerProfile
from omnichannel.signals import message_status_changed
from tests.channels.test_email import email_settings, make_profile, postmark_ok

pytestmark = pytest.mark.django_db

PAYLOADS = Path(__file__).parent / "payloads"
SECRET = "user:pass"
SIGNING_KEY = "mailgun-webhook-signing-key"
POSTMARK_HOOK = "/anymail/postmark/tracking/"
MAILGUN_HOOK = "/anymail/mailgun/tracking/"
POSTMARK_ID = "883953f4-6105-42a2-a16a-77a8eac79483"
MAILGUN_ID = "<20180812213139.1.BC6694A917BB7E6A@example.org>"
ADDRESS = "ann@example.com"


@pytest.fixture
def esps(settings):
    settings.ANYMAIL = {
        "WEBHOOK_SECRET": SECRET,
        "POSTMARK_SERVER_TOKEN": "server-token-for-tests",
        "MAILGUN_API_KEY": "mailgun-api-key",
        "MAILGUN_WEBHOOK_SIGNING_KEY": SIGNING_KEY,
    }
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mocked:
        mocked.add_callback(
            responses.POST,
            "https://api.postmarkapp.com/email",
            callback=postmark_ok({ADDRESS: POSTMARK_ID}),
        )
        mocked.add(
            responses.POST,
            "https://api.mailgun.net/v3/example.com/messages",
            json={"id": MAILGUN_ID, "message": "Queued. Thank you."},
        )
        yield mocked


def send(settings, esp: str, *, at: datetime, profile: CustomerProfile | None = None) -> Message:
    """Queue a marketing email for Ann and send it through ``esp``'s anymail backend."""
    settings.OMNICHANNEL = email_settings(EMAIL_BACKEND=f"anymail.backends.{esp}.EmailBackend")
    message = queue_message(
        profile or make_profile(ADDRESS),
        channel="email",
        purpose="marketing",
        template="welcome",
        now=at,
    )
    deliver_due_messages(now=at)
    message.refresh_from_db()
    assert message.status == MessageStatus.SENT
    return message


def load(name: str) -> dict[str, Any]:
    return json.loads((PAYLOADS / f"{name}.json").read_text())


def iso(at: datetime) -> str:
    return at.astimezone(timezone.get_fixed_timezone(0)).isoformat().replace("+00:00", "Z")


def postmark_event(
    name: str, *, at: datetime, message_id: str = POSTMARK_ID, **changes: Any
) -> dict[str, Any]:
    """A documented Postmark payload about our message: its id, recipient and time swapped in."""
    data = load(f"postmark_{name}")
    data["MessageID"] = message_id
    for key in ("Recipient", "Email"):
        if key in data:
            data[key] = ADDRESS
    for key in ("DeliveredAt", "ReceivedAt", "BouncedAt", "ChangedAt"):
        if key in data:
            data[key] = iso(at)
    data.update(changes)
    return data


def mailgun_event(
    name: str,
    *,
    at: datetime,
    message_id: str = MAILGUN_ID,
    metadata: dict[str, str] | None = None,
    key: str = SIGNING_KEY,
) -> dict[str, Any]:
    """A documented Mailgun payload about our message, signed as Mailgun signs it."""
    data = load(f"mailgun_{name}")
    event = data["event-data"]
    event["timestamp"] = at.timestamp()
    event["recipient"] = ADDRESS
    event["message"]["headers"]["message-id"] = message_id.strip("<>")
    if metadata is not None:
        event["user-variables"] = metadata
    signature = data["signature"]
    signature["timestamp"] = str(int(at.timestamp()))
    signature["signature"] = hmac.new(
        key.encode(), f"{signature['timestamp']}{signature['token']}".encode(), hashlib.sha256
    ).hexdigest()
    return data


def post(client, url: str, data: dict[str, Any], *, auth: str | None = SECRET):
    headers = {}
    if auth is not None:
        headers["HTTP_AUTHORIZATION"] = "Basic " + base64.b64encode(auth.encode()).decode()
    return client.post(url, data=json.dumps(data), content_type="application/json", **headers)


def statuses(message: Message) -> list[tuple[str, str]]:
    return list(message.history.order_by("occurred_at", "id").values_list("status", "source"))


# --- Postmark -------------------------------------------------------------------------------


def test_postmark_delivery_open_and_click_move_the_message(client, settings, esps):
    t0 = timezone.now() - timedelta(hours=1)
    message = send(settings, "postmark", at=t0)
    assert message.provider_message_id == POSTMARK_ID

    for minute, name in enumerate(("delivery", "open", "click"), start=1):
        response = post(
            client, POSTMARK_HOOK, postmark_event(name, at=t0 + timedelta(minutes=minute))
        )
        assert response.status_code == 200

    message.refresh_from_db()
    assert message.status == MessageStatus.CLICKED
    assert message.delivered_at == t0 + timedelta(minutes=1)
    assert message.opened_at == t0 + timedelta(minutes=2)
    assert message.clicked_at == t0 + timedelta(minutes=3)
    assert statuses(message) == [
        ("queued", "omnichannel"),
        ("sent", "omnichannel"),
        ("delivered", "Postmark"),
        ("opened", "Postmark"),
        ("clicked", "Postmark"),
    ]
    click = message.history.get(status="clicked")
    assert click.detail == {
        "event": "clicked",
        "recipient": ADDRESS,
        "click_url": "https://example.com",
    }

    # A late or replayed delivery report changes only the history.
    post(client, POSTMARK_HOOK, postmark_event("delivery", at=t0 + timedelta(minutes=9)))
    message.refresh_from_db()
    assert message.status == MessageStatus.CLICKED
    assert message.delivered_at == t0 + timedelta(minutes=1)


def test_postmark_hard_bounce_suppresses_marketing_but_not_receipts(client, settings, esps):
    t0 = timezone.now() - timedelta(hours=1)
    message = send(settings, "postmark", at=t0)
    response = post(client, POSTMARK_HOOK, postmark_event("bounce", at=t0 + timedelta(minutes=1)))
    assert response.status_code == 200

    message.refresh_from_db()
    assert message.status == MessageStatus.BOUNCED
    assert message.bounced_at == t0 + timedelta(minutes=1)
    assert message.error.startswith("Postmark: bounced: The server was unable to deliver")
    suppression = Suppression.objects.get()
    assert (suppression.channel, suppression.address) == ("email", ADDRESS)
    assert suppression.reason == SuppressionReason.BOUNCED
    assert suppression.transactional_too is False
    assert suppression.message == message

    profile = message.profile
    with pytest.raises(NotReachable, match="address suppressed: Hard bounce"):
        queue_message(
            profile, channel="email", purpose="marketing", template="welcome", now=timezone.now()
        )
    receipt = queue_message(
        profile, channel="email", purpose="transactional", template="test", now=timezone.now()
    )
    assert receipt.status == MessageStatus.QUEUED and receipt.address == ADDRESS

    # A replayed bounce neither duplicates nor fails on the unique suppression.
    assert post(client, POSTMARK_HOOK, postmark_event("bounce", at=t0)).status_code == 200
    assert Suppression.objects.count() == 1


def test_postmark_soft_bounce_is_recorded_without_suppressing(client, settings, esps):
    t0 = timezone.now() - timedelta(hours=1)
    message = send(settings, "postmark", at=t0)
    soft = postmark_event(
        "bounce", at=t0 + timedelta(minutes=1), Type="SoftBounce", TypeCode=4096, Name="Soft bounce"
    )
    assert post(client, POSTMARK_HOOK, soft).status_code == 200
    message.refresh_from_db()
    assert message.status == MessageStatus.BOUNCED
    assert not Suppression.objects.exists()


def test_postmark_spam_complaint_suppresses_and_withdraws_consent(client, settings, esps):
    t0 = timezone.now() - timedelta(hours=1)
    message = send(settings, "postmark", at=t0)
    profile = message.profile
    assert has_consent(profile, channel="email", purpose="marketing")

    complaint = postmark_event("spam_complaint", at=t0 + timedelta(minutes=5))
    assert post(client, POSTMARK_HOOK, complaint).status_code == 200

    message.refresh_from_db()
    assert message.status == MessageStatus.COMPLAINED
    assert Suppression.objects.get().reason == SuppressionReason.COMPLAINED
    assert not has_consent(profile, channel="email", purpose="marketing")
    latest = current_consents(profile)[("email", "marketing")]
    assert latest.source == ConsentSource.PROVIDER
    assert latest.note == "Postmark: spam complaint"
    assert latest.created_at == t0 + timedelta(minutes=5)
    # Transactional consent is untouched by a marketing complaint.
    assert ("email", "transactional") not in current_consents(profile)

    # Replayed: no second withdrawal in the history.
    post(client, POSTMARK_HOOK, complaint)
    assert Consent.objects.filter(profile=profile, granted=False).count() == 1


def test_postmark_unsubscribe_withdraws_marketing_consent(client, settings, esps):
    t0 = timezone.now() - timedelta(hours=1)
    message = send(settings, "postmark", at=t0)
    change = postmark_event("subscription_change", at=t0 + timedelta(minutes=3))
    assert post(client, POSTMARK_HOOK, change).status_code == 200
    message.refresh_from_db()
    assert message.status == MessageStatus.UNSUBSCRIBED
    assert not has_consent(message.profile, channel="email", purpose="marketing")
    assert not Suppression.objects.exists()  # consent, not a suppression, records the wish


def test_wrong_secret_or_signature_is_refused_and_changes_nothing(client, settings, esps):
    t0 = timezone.now() - timedelta(hours=1)
    message = send(settings, "postmark", at=t0)
    before = statuses(message)
    at = t0 + timedelta(minutes=1)

    assert (
        post(client, POSTMARK_HOOK, postmark_event("bounce", at=at), auth="user:wrong").status_code
        == 400
    )
    assert (
        post(client, POSTMARK_HOOK, postmark_event("bounce", at=at), auth=None).status_code == 400
    )
    forged = mailgun_event("failed_permanent", at=at, key="not-the-signing-key")
    assert post(client, MAILGUN_HOOK, forged).status_code == 400
    genuine_without_auth = mailgun_event("failed_permanent", at=at)
    assert post(client, MAILGUN_HOOK, genuine_without_auth, auth=None).status_code == 400

    message.refresh_from_db()
    assert message.status == MessageStatus.SENT
    assert statuses(message) == before
    assert not Suppression.objects.exists()


def test_unknown_message_id_is_logged_and_ignored(client, settings, esps, caplog):
    t0 = timezone.now() - timedelta(hours=1)
    message = send(settings, "postmark", at=t0)
    before = statuses(message)
    unknown = postmark_event(
        "bounce",
        at=t0,
        message_id="11111111-2222-3333-4444-555555555555",
        Metadata={"omnichannel_message": "not-a-uuid"},
    )
    with caplog.at_level(logging.WARNING, logger="omnichannel.tracking"):
        assert post(client, POSTMARK_HOOK, unknown).status_code == 200
        assert (
            post(
                client, POSTMARK_HOOK, postmark_event("open", at=t0, message_id="nope")
            ).status_code
            == 200
        )
    assert "unknown message id 'nope'" in caplog.text
    assert statuses(message) == before
    assert not Suppression.objects.exists()
    assert MessageStatusChange.objects.count() == len(before)


# --- Mailgun --------------------------------------------------------------------------------


def test_mailgun_delivered_opened_clicked(client, settings, esps):
    t0 = timezone.now() - timedelta(hours=1)
    message = send(settings, "mailgun", at=t0)
    assert message.provider_message_id == MAILGUN_ID
    form = parse_qs(esps.calls[-1].request.body)
    assert form["v:omnichannel_message"] == [message.uuid.hex]
    assert form["o:tag"] == ["marketing", "email"]  # Mailgun takes several tags
    assert form["o:tracking-opens"] == ["yes"]
    assert form["h:List-Unsubscribe-Post"] == ["List-Unsubscribe=One-Click"]

    metadata = {"omnichannel_message": message.uuid.hex}
    for minute, name in enumerate(("delivered", "opened", "clicked"), start=1):
        event = mailgun_event(name, at=t0 + timedelta(minutes=minute), metadata=metadata)
        assert post(client, MAILGUN_HOOK, event).status_code == 200

    message.refresh_from_db()
    assert message.status == MessageStatus.CLICKED
    assert [s for s, _ in statuses(message)] == ["queued", "sent", "delivered", "opened", "clicked"]
    assert {source for s, source in statuses(message) if s not in ("queued", "sent")} == {"Mailgun"}
    assert message.history.get(status="clicked").detail["click_url"] == "https://example.com/test"


def test_mailgun_event_found_by_metadata_when_the_id_was_not_stored_yet(client, settings, esps):
    t0 = timezone.now() - timedelta(hours=1)
    message = send(settings, "mailgun", at=t0)
    # The webhook can arrive before the sender recorded the ESP's id.
    Message.objects.filter(pk=message.pk).update(provider_message_id="")
    event = mailgun_event(
        "delivered",
        at=t0 + timedelta(minutes=1),
        metadata={"omnichannel_message": message.uuid.hex},
    )
    assert post(client, MAILGUN_HOOK, event).status_code == 200
    message.refresh_from_db()
    assert message.status == MessageStatus.DELIVERED
    assert message.provider_message_id == MAILGUN_ID


def test_mailgun_permanent_failure_suppresses_temporary_one_is_not_recorded(client, settings, esps):
    t0 = timezone.now() - timedelta(hours=1)
    message = send(settings, "mailgun", at=t0)
    deferred = mailgun_event("failed_temporary", at=t0 + timedelta(minutes=1))
    assert post(client, MAILGUN_HOOK, deferred).status_code == 200
    message.refresh_from_db()
    assert message.status == MessageStatus.SENT
    assert [s for s, _ in statuses(message)] == ["queued", "sent"]

    failed = mailgun_event("failed_permanent", at=t0 + timedelta(minutes=30))
    assert post(client, MAILGUN_HOOK, failed).status_code == 200
    message.refresh_from_db()
    assert message.status == MessageStatus.BOUNCED
    assert "5.1.1 The email account that you tried to reach does not exist" in message.error
    assert Suppression.objects.get(address=ADDRESS).reason == SuppressionReason.BOUNCED


def test_mailgun_complaint_withdraws_consent(client, settings, esps):
    t0 = timezone.now() - timedelta(hours=1)
    message = send(settings, "mailgun", at=t0)
    complaint = mailgun_event("complained", at=t0 + timedelta(minutes=2))
    assert post(client, MAILGUN_HOOK, complaint).status_code == 200
    message.refresh_from_db()
    assert message.status == MessageStatus.COMPLAINED
    assert not has_consent(message.profile, channel="email", purpose="marketing")
    assert Suppression.objects.get().reason == SuppressionReason.COMPLAINED
    with pytest.raises(NotReachable):
        queue_message(
            message.profile,
            channel="email",
            purpose="marketing",
            template="welcome",
            now=timezone.now(),
        )


# --- faults ---------------------------------------------------------------------------------


@pytest.fixture
def failing_suppression_save():
    """Saving a Suppression fails with a chosen exception (a database fault, a bug)."""
    from django.db.models.signals import pre_save

    raised: list[BaseException] = []

    def receiver(**kwargs: Any) -> None:
        if raised:
            raise raised[0]

    pre_save.connect(receiver, sender=Suppression, dispatch_uid="test-failing-suppression")
    yield raised
    pre_save.disconnect(sender=Suppression, dispatch_uid="test-failing-suppression")


def test_a_database_error_reaches_anymail_so_the_esp_retries(
    client, settings, esps, failing_suppression_save
):
    t0 = timezone.now() - timedelta(hours=1)
    message = send(settings, "postmark", at=t0)
    failing_suppression_save.append(OperationalError("database is locked"))
    complaint = postmark_event("spam_complaint", at=t0 + timedelta(minutes=1))
    # anymail's view lets it through: Django answers 500 and Postmark sends the event again.
    with pytest.raises(OperationalError):
        post(client, POSTMARK_HOOK, complaint)
    message.refresh_from_db()
    assert message.status == MessageStatus.SENT  # all or nothing: status, suppression, consent
    assert not Suppression.objects.exists()
    assert has_consent(message.profile, channel="email", purpose="marketing")

    failing_suppression_save.clear()  # the retry succeeds
    assert post(client, POSTMARK_HOOK, complaint).status_code == 200
    message.refresh_from_db()
    assert message.status == MessageStatus.COMPLAINED
    assert not has_consent(message.profile, channel="email", purpose="marketing")


def test_other_errors_are_logged_and_the_webhook_answers_200(
    client, settings, esps, failing_suppression_save, caplog
):
    t0 = timezone.now() - timedelta(hours=1)
    message = send(settings, "postmark", at=t0)
    failing_suppression_save.append(ValueError("a bug"))
    with caplog.at_level(logging.ERROR, logger="omnichannel.tracking"):
        response = post(client, POSTMARK_HOOK, postmark_event("bounce", at=t0))
    assert response.status_code == 200
    assert "could not be recorded" in caplog.text
    assert "a bug" in caplog.text
    message.refresh_from_db()
    assert message.status == MessageStatus.SENT  # rolled back as a whole, and logged


def test_a_failing_host_receiver_does_not_undo_the_report(client, settings, esps, caplog):
    t0 = timezone.now() - timedelta(hours=1)
    message = send(settings, "postmark", at=t0)

    def receiver(**kwargs: Any) -> None:
        raise ValueError("a bug in a host's receiver")

    message_status_changed.connect(receiver, dispatch_uid="test-failing-host-receiver")
    try:
        with caplog.at_level(logging.ERROR, logger="omnichannel.channels"):
            response = post(client, POSTMARK_HOOK, postmark_event("delivery", at=t0))
    finally:
        message_status_changed.disconnect(dispatch_uid="test-failing-host-receiver")
    assert response.status_code == 200
    assert "a bug in a host's receiver" in caplog.text
    message.refresh_from_db()
    assert message.status == MessageStatus.DELIVERED
