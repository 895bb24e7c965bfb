"""Telegram updates and Twilio delivery reports posted to our webhooks through the test client."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from datetime import datetime, timezone

import pytest
import responses
from django.conf import settings as django_settings
from django.urls import reverse

from omnichannel.channels.models import Message, MessageStatus, OutboxEntry
from omnichannel.channels.sending import deliver_message, queue_message
from omnichannel.channels.sms.backends.twilio import twilio_signature
from omnichannel.profiles.consents import has_consent, record_consent
from omnichannel.profiles.models import (
    Consent,
    CustomerProfile,
    Identity,
    IdentityKind,
    ProfileMerge,
)
from omnichannel.tracking import tokens

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
SITE = "https://shop.example.com"
BOT_TOKEN = "123456:SECRET-bot-token"
SEND_URL = f"https://api.telegram.org/bot{BOT_TOKEN}/sendMessage"
SECRET = "hook-secret_1"
CHAT = 1111111
TELEGRAM = {
    "BACKEND": "omnichannel.channels.telegram.TelegramChannel",
    "OPTIONS": {"BOT_TOKEN": BOT_TOKEN, "BOT_USERNAME": "shop_bot", "WEBHOOK_SECRET": SECRET},
}
AUTH_TOKEN = "twilio-auth-token"
TWILIO_URL = "https://api.twilio.com/2010-04-01/Accounts/AC0123/Messages.json"
TWILIO = {
    "BACKEND": "omnichannel.channels.sms.SmsChannel",
    "COST": "0.04",
    "OPTIONS": {
        "BACKEND": "omnichannel.channels.sms.backends.twilio.SmsBackend",
        "FROM": "+447700900000",
        "ACCOUNT_SID": "AC0123",
        "AUTH_TOKEN": AUTH_TOKEN,
    },
}
SID = "SM0123456789abcdef0123456789abcdef"


@pytest.fixture
def use_channels(settings):
    def use(**channels):
        settings.OMNICHANNEL = {
            **django_settings.OMNICHANNEL,
            "SITE_URL": SITE,
            "CHANNELS": channels,
        }

    return use


@pytest.fixture
def bot(use_channels):
    use_channels(telegram=TELEGRAM, sms=TWILIO)
    with responses.RequestsMock() as mock:
        yield mock


# --- Telegram ------------------------------------------------------------------------------------


def update(text, *, chat_id=CHAT, chat_type="private", update_id=10000):
    """A Bot API Update as Telegram posts it for a text message."""
    return {
        "update_id": update_id,
        "message": {
            "message_id": 1365,
            "from": {
                "id": chat_id,
                "is_bot": False,
                "first_name": "Ann",
                "username": "ann",
                "language_code": "en",
            },
            "chat": {"id": chat_id, "first_name": "Ann", "username": "ann", "type": chat_type},
            "date": 1772445600,
            "text": text,
            "entities": [{"offset": 0, "length": len(text.split()[0]), "type": "bot_command"}],
        },
    }


def post_update(client, payload, *, secret=SECRET, query=""):
    headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret is not None else {}
    body = payload if isinstance(payload, (str, bytes)) else json.dumps(payload)
    return client.post(
        reverse("omnichannel:telegram-webhook") + query,
        data=body,
        content_type="application/json",
        headers=headers,
    )


def start_token(profile, *, age=0.0) -> str:
    """A /start token made ``age`` seconds ago."""
    return tokens.make_compact_token(tokens.TELEGRAM, profile.pk, now=time.time() - age)


def underscore_token(profile) -> str:
    """A valid /start token whose base64url signature contains "_" (one in five do)."""
    stamp = time.time()
    while True:
        token = tokens.make_compact_token(tokens.TELEGRAM, profile.pk, now=stamp)
        if token.count("_") > 2:
            return token
        stamp -= 1


def replied(bot) -> list[dict]:
    return [json.loads(call.request.body) for call in bot.calls]


def expect_reply(bot, status=200):
    bot.post(SEND_URL, status=status, json={"ok": status == 200, "result": {"message_id": 7}})


def test_start_with_a_valid_token_links_the_chat_records_consent_and_replies(client, bot):
    expect_reply(bot)
    profile = CustomerProfile.objects.create(first_name="Ann")

    response = post_update(client, update(f"/start {start_token(profile)}"))

    assert response.status_code == 200
    identity = Identity.objects.get(kind=IdentityKind.TELEGRAM)
    assert (identity.profile, identity.value) == (profile, str(CHAT))
    consent = Consent.objects.get(profile=profile)
    assert (consent.channel, consent.purpose, consent.granted) == ("messenger", "marketing", True)
    assert consent.source == "messenger"
    assert str(CHAT) in consent.note
    (reply,) = replied(bot)
    assert reply["chat_id"] == CHAT
    assert reply["text"].startswith("Done! This chat is linked to your account at Omnichannel")


def test_a_token_whose_signature_contains_an_underscore_links_the_chat(client, bot):
    expect_reply(bot)
    profile = CustomerProfile.objects.create()
    post_update(client, update(f"/start {underscore_token(profile)}"))
    assert Identity.objects.get(kind=IdentityKind.TELEGRAM).profile == profile


def test_a_linked_person_can_then_be_sent_a_telegram_message(client, bot):
    expect_reply(bot)
    profile = CustomerProfile.objects.create(first_name="Ann")
    post_update(client, update(f"/start {start_token(profile)}"))

    bot.post(SEND_URL, json={"ok": True, "result": {"message_id": 99}})
    message = queue_message(
        profile, channel="telegram", purpose="marketing", now=NOW, template="welcome"
    )
    message = deliver_message(message, now=NOW)

    assert message.status == MessageStatus.SENT
    assert message.provider_message_id == f"{CHAT}:99"
    assert replied(bot)[-1]["chat_id"] == CHAT
    assert "Welcome to Omnichannel demo shop, Ann!" in replied(bot)[-1]["text"]


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(lambda p: start_token(p)[:-2] + "xx", id="tampered"),
        pytest.param(lambda p: start_token(p, age=31 * 86400), id="expired"),
        pytest.param(lambda p: start_token(p).replace("_", "-", 1), id="malformed"),
        pytest.param(
            lambda p: tokens.make_compact_token(tokens.TokenKind("other"), p.pk), id="other-kind"
        ),
    ],
)
def test_a_bad_token_links_nothing_and_says_the_link_expired(client, bot, token):
    expect_reply(bot)
    profile = CustomerProfile.objects.create()

    response = post_update(client, update(f"/start {token(profile)}"))

    assert response.status_code == 200
    assert not Identity.objects.exists()
    assert not Consent.objects.exists()
    (reply,) = replied(bot)
    assert reply["text"].startswith("Sorry, this link has expired or is not valid")


def test_a_token_of_an_erased_profile_links_nothing(client, bot):
    expect_reply(bot)
    profile = CustomerProfile.objects.create()
    token = start_token(profile)
    profile.delete()
    post_update(client, update(f"/start {token}"))
    assert not Identity.objects.exists()
    assert "expired" in replied(bot)[0]["text"]


def test_a_token_of_a_merged_profile_links_the_survivor(client, bot):
    expect_reply(bot)
    survivor = CustomerProfile.objects.create()
    merged = CustomerProfile.objects.create()
    token = start_token(merged)
    ProfileMerge.objects.create(
        survivor=survivor, merged_profile_id=merged.pk, merged_uuid=merged.uuid, reason="test"
    )
    merged.delete()

    post_update(client, update(f"/start {token}"))

    assert Identity.objects.get(kind=IdentityKind.TELEGRAM).profile == survivor


@pytest.mark.parametrize("secret", ["wrong-secret", "", None])
def test_a_wrong_or_missing_secret_is_refused_and_changes_nothing(client, bot, secret):
    profile = CustomerProfile.objects.create()

    response = post_update(client, update(f"/start {start_token(profile)}"), secret=secret)

    assert response.status_code == 403
    assert not Identity.objects.exists()
    assert not Consent.objects.exists()
    assert not bot.calls


def test_no_configured_secret_refuses_every_update(client, use_channels):
    options = {k: v for k, v in TELEGRAM["OPTIONS"].items() if k != "WEBHOOK_SECRET"}
    use_channels(telegram={**TELEGRAM, "OPTIONS": options})
    profile = CustomerProfile.objects.create()
    response = post_update(client, update(f"/start {start_token(profile)}"), secret="")
    assert response.status_code == 403
    assert not Identity.objects.exists()


def test_malformed_bodies_get_400_and_other_methods_405(client, bot):
    assert post_update(client, "{not json").status_code == 400
    assert post_update(client, b"\xff\xfe").status_code == 400
    assert post_update(client, "[1, 2]").status_code == 400
    assert client.get(reverse("omnichannel:telegram-webhook")).status_code == 405


@pytest.mark.parametrize(
    "payload",
    [
        {"update_id": 1, "edited_message": update("/start x")["message"]},
        update("hello there"),
        update("/start abc", chat_id=-100123, chat_type="group"),
        {"update_id": 2, "message": "not an object"},
        {"update_id": 3, "message": {"chat": {"id": "x", "type": "private"}, "text": "/stop"}},
        {"update_id": 4, "callback_query": {"id": "1"}},
    ],
)
def test_other_updates_are_acknowledged_and_ignored(client, bot, payload):
    response = post_update(client, payload)
    assert response.status_code == 200
    assert not Identity.objects.exists()
    assert not bot.calls


def test_a_failed_reply_does_not_lose_the_link(client, bot):
    bot.post(
        SEND_URL,
        status=403,
        json={"ok": False, "error_code": 403, "description": "Forbidden: bot was blocked"},
    )
    profile = CustomerProfile.objects.create()

    response = post_update(client, update(f"/start {start_token(profile)}"))

    assert response.status_code == 200
    assert Identity.objects.get(kind=IdentityKind.TELEGRAM).profile == profile
    assert has_consent(profile, channel="messenger", purpose="marketing")


def test_a_chat_linked_to_another_profile_moves_to_the_token_s_profile(client, bot):
    expect_reply(bot)
    old = CustomerProfile.objects.create()
    Identity.objects.create(
        profile=old, kind=IdentityKind.TELEGRAM, value=str(CHAT), created_at=NOW
    )
    new = CustomerProfile.objects.create()

    post_update(client, update(f"/start@shop_bot {start_token(new)}"))

    identity = Identity.objects.get(kind=IdentityKind.TELEGRAM)
    assert identity.profile == new
    assert identity.created_at > NOW
    assert has_consent(new, channel="messenger", purpose="marketing")
    assert not old.identities.exists()


def test_stop_withdraws_and_start_resubscribes_a_linked_chat(client, bot):
    expect_reply(bot)
    profile = CustomerProfile.objects.create()
    post_update(client, update(f"/start {start_token(profile)}"))

    post_update(client, update("/stop", update_id=10001))
    assert not has_consent(profile, channel="messenger", purpose="marketing")
    assert Consent.objects.filter(profile=profile).latest("pk").note.startswith("/stop")
    assert replied(bot)[-1]["text"].startswith("You will no longer get news and offers")
    with pytest.raises(Exception, match="withdrawn"):
        queue_message(profile, channel="telegram", purpose="marketing", now=NOW, template="test")

    post_update(client, update("/start", update_id=10002))
    assert has_consent(profile, channel="messenger", purpose="marketing")
    assert replied(bot)[-1]["text"].startswith("Welcome back!")


def test_stop_and_start_from_an_unlinked_chat_change_nothing(client, bot):
    expect_reply(bot)
    post_update(client, update("/stop"))
    post_update(client, update("/start", update_id=10001))
    assert not Consent.objects.exists()
    assert not Identity.objects.exists()
    texts = [reply["text"] for reply in replied(bot)]
    assert texts[0].startswith("This chat is not linked")
    assert texts[1].startswith("Hello! To get news and offers")


def test_blocking_the_bot_withdraws_consent(client, bot):
    profile = CustomerProfile.objects.create()
    Identity.objects.create(profile=profile, kind=IdentityKind.TELEGRAM, value=str(CHAT))
    record_consent(profile, channel="messenger", purpose="marketing", granted=True, now=NOW)
    blocked = {
        "update_id": 10003,
        "my_chat_member": {
            "chat": {"id": CHAT, "first_name": "Ann", "type": "private"},
            "from": {"id": CHAT, "is_bot": False, "first_name": "Ann"},
            "date": 1772445600,
            "old_chat_member": {"user": {"id": 1, "is_bot": True}, "status": "member"},
            "new_chat_member": {
                "user": {"id": 1, "is_bot": True},
                "status": "kicked",
                "until_date": 0,
            },
        },
    }
    assert post_update(client, blocked).status_code == 200
    assert not has_consent(profile, channel="messenger", purpose="marketing")
    assert not bot.calls


def test_replies_go_to_the_outbox_in_outbox_mode(client, use_channels):
    use_channels(telegram={**TELEGRAM, "OPTIONS": {**TELEGRAM["OPTIONS"], "OUTBOX": True}})
    profile = CustomerProfile.objects.create()
    post_update(client, update(f"/start {start_token(profile)}"))
    entry = OutboxEntry.objects.get()
    assert entry.address == str(CHAT)
    assert entry.body_text.startswith("Done!")
    assert entry.payload["json"]["chat_id"] == CHAT


def test_the_channel_can_be_named(client, use_channels):
    other = {**TELEGRAM, "OPTIONS": {**TELEGRAM["OPTIONS"], "WEBHOOK_SECRET": "second-bot"}}
    use_channels(telegram=TELEGRAM, telegram_b2b=other, sms=TWILIO)
    profile = CustomerProfile.objects.create()
    payload = update(f"/start {start_token(profile)}")
    with responses.RequestsMock() as mock:
        mock.post(SEND_URL, json={"ok": True, "result": {"message_id": 1}})
        assert post_update(client, payload, query="?channel=telegram_b2b").status_code == 403
        response = post_update(client, payload, secret="second-bot", query="?channel=telegram_b2b")
    assert response.status_code == 200
    assert post_update(client, payload, query="?channel=sms").status_code == 404
    assert post_update(client, payload, query="?channel=nope").status_code == 404


def test_another_channels_broken_settings_do_not_stop_telegram(client, use_channels):
    broken_sms = {**TWILIO, "OPTIONS": {**TWILIO["OPTIONS"], "FROM": ""}}
    use_channels(sms=broken_sms, telegram=TELEGRAM)
    profile = CustomerProfile.objects.create()
    with responses.RequestsMock() as mock:
        mock.post(SEND_URL, json={"ok": True, "result": {"message_id": 1}})
        response = post_update(client, update(f"/start {start_token(profile)}"))
    assert response.status_code == 200
    assert Identity.objects.get(kind=IdentityKind.TELEGRAM).profile == profile


# --- Twilio delivery reports ---------------------------------------------------------------------


def reference_signature(url: str, params: dict[str, str]) -> str:
    """Twilio's algorithm written out here, independently of the code under test."""
    data = url + "".join(key + params[key] for key in sorted(params))
    digest = hmac.new(AUTH_TOKEN.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def sent_sms(bot) -> Message:
    bot.post(TWILIO_URL, status=201, json={"sid": SID, "status": "queued"})
    profile = CustomerProfile.objects.create()
    Identity.objects.create(profile=profile, kind=IdentityKind.PHONE, value="+447700900123")
    message = queue_message(
        profile, channel="sms", purpose="transactional", now=NOW, inline={"body.txt": "Hi"}
    )
    message = deliver_message(message, now=NOW)
    assert message.provider_message_id == SID
    return message


def callback(status, **extra) -> dict[str, str]:
    """The form Twilio posts to a StatusCallback."""
    return {
        "ApiVersion": "2010-04-01",
        "AccountSid": "AC0123",
        "SmsSid": SID,
        "SmsStatus": status,
        "MessageSid": SID,
        "MessageStatus": status,
        "From": "+447700900000",
        "To": "+447700900123",
        **extra,
    }


def post_callback(client, params, *, signature=None, channel="sms", url=None):
    path = reverse("omnichannel:sms-status", args=[channel])
    signed_url = url or f"{SITE}{path}"
    return client.post(
        path,
        data=params,
        headers={"X-Twilio-Signature": signature or reference_signature(signed_url, params)},
    )


def test_twilio_signature_matches_twilios_documented_example():
    params = {
        "CallSid": ["CA1234567890ABCDE"],
        "Caller": ["+14158675309"],
        "Digits": ["1234"],
        "From": ["+14158675309"],
        "To": ["+18005551212"],
    }
    signature = twilio_signature("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", params)
    assert signature == "RSOYDt4T1cUTdK1PDd93/VVr8B8="


def test_a_signed_delivered_callback_moves_the_message_to_delivered(client, bot):
    message = sent_sms(bot)

    response = post_callback(client, callback("delivered"))

    assert response.status_code == 200
    message.refresh_from_db()
    assert message.status == MessageStatus.DELIVERED
    assert message.delivered_at is not None
    change = message.history.get(status=MessageStatus.DELIVERED)
    assert change.source == "sms"
    assert change.detail["provider_status"] == "delivered"


def test_a_wrong_signature_gets_403_and_changes_nothing(client, bot):
    message = sent_sms(bot)
    history = message.history.count()

    bad = post_callback(client, callback("delivered"), signature="c2lnbmF0dXJl")
    forged = post_callback(client, callback("delivered"), url="https://evil.example.com/x")
    unsigned = client.post(
        reverse("omnichannel:sms-status", args=["sms"]), data=callback("delivered")
    )

    assert (bad.status_code, forged.status_code, unsigned.status_code) == (403, 403, 403)
    message.refresh_from_db()
    assert message.status == MessageStatus.SENT
    assert message.history.count() == history


def test_the_request_url_is_accepted_too_behind_a_rewriting_proxy(client, bot):
    message = sent_sms(bot)
    path = reverse("omnichannel:sms-status", args=["sms"])
    response = post_callback(client, callback("delivered"), url=f"http://testserver{path}")
    assert response.status_code == 200
    message.refresh_from_db()
    assert message.status == MessageStatus.DELIVERED


def test_undelivered_fails_the_message_with_the_error_code(client, bot):
    message = sent_sms(bot)
    response = post_callback(client, callback("undelivered", ErrorCode="30003"))
    assert response.status_code == 200
    message.refresh_from_db()
    assert message.status == MessageStatus.FAILED
    assert message.error == "Twilio error 30003: unreachable destination handset"
    assert message.history.get(status=MessageStatus.FAILED).detail["ErrorCode"] == "30003"


def test_a_late_sent_report_does_not_move_delivered_back(client, bot):
    message = sent_sms(bot)
    post_callback(client, callback("delivered"))
    post_callback(client, callback("sent"))
    message.refresh_from_db()
    assert message.status == MessageStatus.DELIVERED
    assert message.history.filter(status=MessageStatus.SENT).count() == 2


def test_statuses_we_do_not_track_are_acknowledged(client, bot):
    message = sent_sms(bot)
    assert post_callback(client, callback("queued")).status_code == 200
    assert post_callback(client, callback("sending")).status_code == 200
    message.refresh_from_db()
    assert message.status == MessageStatus.SENT


def test_an_unknown_sid_is_logged_and_ignored(client, bot, caplog):
    sent_sms(bot)
    params = {**callback("delivered"), "MessageSid": "SMunknown", "SmsSid": "SMunknown"}
    with caplog.at_level(logging.INFO, logger="omnichannel.channels.sms"):
        response = post_callback(client, params)
    assert response.status_code == 200
    assert "SMunknown" in caplog.text
    assert not Message.objects.filter(status=MessageStatus.DELIVERED).exists()


def test_a_signed_callback_without_a_sid_is_a_bad_request(client, bot):
    params = {"MessageStatus": "delivered"}
    assert post_callback(client, params).status_code == 400


def test_callbacks_for_other_channels_are_not_found(client, use_channels):
    use_channels(
        sms=TWILIO,
        local={
            "BACKEND": "omnichannel.channels.sms.SmsChannel",
            "OPTIONS": {"BACKEND": "omnichannel.channels.sms.backends.locmem.SmsBackend"},
        },
        telegram=TELEGRAM,
    )
    assert post_callback(client, callback("delivered"), channel="nope").status_code == 404
    assert post_callback(client, callback("delivered"), channel="telegram").status_code == 404
    # The locmem backend takes no delivery reports.
    assert post_callback(client, callback("delivered"), channel="local").status_code == 404
    path = reverse("omnichannel:sms-status", args=["sms"])
    assert client.get(path).status_code == 405


def test_delivery_reports_reach_a_channel_in_outbox_mode_too(client, use_channels):
    use_channels(sms={**TWILIO, "OPTIONS": {**TWILIO["OPTIONS"], "OUTBOX": True}})
    assert post_callback(client, callback("delivered")).status_code == 200
    assert post_callback(client, callback("delivered"), signature="bad").status_code == 403


def test_expired_start_tokens_respect_the_setting(client, bot, settings):
    expect_reply(bot)
    settings.OMNICHANNEL = {**settings.OMNICHANNEL, "TELEGRAM_LINK_MAX_AGE": 60}
    profile = CustomerProfile.objects.create()
    post_update(client, update(f"/start {start_token(profile, age=120)}"))
    assert not Identity.objects.exists()


def test_a_report_that_beats_the_stored_sid_is_matched_by_the_callback_reference(client, bot):
    message = sent_sms(bot)
    Message.objects.filter(pk=message.pk).update(provider_message_id="")  # not stored yet
    path = reverse("omnichannel:sms-status", args=["sms"]) + f"?m={message.uuid.hex}"
    params = callback("delivered")
    response = client.post(
        path,
        data=params,
        headers={"X-Twilio-Signature": reference_signature(f"{SITE}{path}", params)},
    )
    assert response.status_code == 200
    message.refresh_from_db()
    assert message.status == MessageStatus.DELIVERED
    assert message.provider_message_id == SID
