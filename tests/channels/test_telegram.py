"""The Telegram channel through the real sending service; only the Bot API is faked."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from io import StringIO
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
import time_machine
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from oscar.test.factories import create_basket, create_product

from omnichannel.channels.models import ChannelThrottle, MessageStatus, OutboxEntry
from omnichannel.channels.registry import get_channel
from omnichannel.channels.sending import deliver_due_messages, deliver_message, queue_message
from omnichannel.exceptions import ConfigurationError, NotReachable, PermanentChannelError
from omnichannel.profiles.consents import has_consent, record_consent
from omnichannel.profiles.models import CustomerProfile, Identity, IdentityKind
from omnichannel.tracking import tokens

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
SITE = "https://shop.example.com"
BOT_TOKEN = "123456:SECRET-bot-token"
API = f"https://api.telegram.org/bot{BOT_TOKEN}"
TELEGRAM = {
    "BACKEND": "omnichannel.channels.telegram.TelegramChannel",
    "COST": "0.002",
    "OPTIONS": {
        "BOT_TOKEN": BOT_TOKEN,
        "BOT_USERNAME": "shop_bot",
        "WEBHOOK_SECRET": "hook-secret_1",
    },
}


@pytest.fixture
def use_channels(settings):
    def use(**channels):
        settings.OMNICHANNEL = {
            **django_settings.OMNICHANNEL,
            "SITE_URL": SITE,
            "THROTTLE_BASE_PAUSE": 30,
            "CHANNELS": channels,
        }

    return use


@pytest.fixture
def bot(use_channels):
    use_channels(telegram=TELEGRAM)
    with responses.RequestsMock() as mock:
        yield mock


def sent_ok(message_id=42, chat_id=987654321):
    return {"ok": True, "result": {"message_id": message_id, "chat": {"id": chat_id}}}


def customer(chat_id="987654321", *, first_name="Ann", consent=True) -> CustomerProfile:
    profile = CustomerProfile.objects.create(first_name=first_name)
    Identity.objects.create(profile=profile, kind=IdentityKind.TELEGRAM, value=chat_id)
    if consent:
        record_consent(
            profile,
            channel="messenger",
            purpose="marketing",
            granted=True,
            now=NOW - timedelta(days=1),
            source="messenger",
        )
    return profile


def queue(profile, *, body=None, template="", purpose="marketing", **kwargs):
    inline = {"body.txt": body} if body is not None else None
    return queue_message(
        profile,
        channel="telegram",
        purpose=purpose,
        now=NOW,
        template=template,
        inline=inline,
        **kwargs,
    )


def sent_json(call) -> dict:
    return json.loads(call.request.body)


def test_send_message_payload_with_a_signed_click_button(bot):
    bot.post(f"{API}/sendMessage", json=sent_ok())
    message = queue(customer(), template="abandoned_basket", context={"basket_url": "/basket/"})

    assert deliver_due_messages(now=NOW) == 1

    (call,) = bot.calls
    payload = sent_json(call)
    assert call.request.req_kwargs["timeout"] == 10.0
    assert payload["chat_id"] == 987654321
    assert payload["parse_mode"] == "HTML"
    assert payload["text"].startswith("<b>Omnichannel demo shop</b>\nAnn, you left items")
    assert payload["text"].endswith("<i>Send /stop at any time to stop these messages.</i>")
    ((button,),) = payload["reply_markup"]["inline_keyboard"]
    assert button["text"] == "Back to my basket"
    url = urlsplit(button["url"])
    assert f"{url.scheme}://{url.netloc}" == SITE
    assert url.path.startswith("/omnichannel/c/")
    token = url.path.removeprefix("/omnichannel/c/").rstrip("/")
    assert tokens.read_token(tokens.CLICK, token) == {"m": message.uuid.hex, "u": f"{SITE}/basket/"}

    message.refresh_from_db()
    assert message.status == MessageStatus.SENT
    assert message.provider_message_id == "987654321:42"
    assert message.cost == Decimal("0.002")
    assert message.data == {"button_text": "Back to my basket", "button_url": "/basket/"}


def test_context_values_are_escaped_for_html(bot):
    bot.post(f"{API}/sendMessage", json=sent_ok())
    profile = customer(first_name="<b>Tom</b> & Jerry")
    deliver_message(queue(profile, body="<b>Hi</b> {{ first_name }}"), now=NOW)
    assert sent_json(bot.calls[0])["text"] == "<b>Hi</b> &lt;b&gt;Tom&lt;/b&gt; &amp; Jerry"


def test_plain_text_parse_mode_sends_the_text_unescaped(use_channels):
    use_channels(telegram={**TELEGRAM, "OPTIONS": {**TELEGRAM["OPTIONS"], "PARSE_MODE": ""}})
    with responses.RequestsMock() as bot:
        bot.post(f"{API}/sendMessage", json=sent_ok())
        profile = customer(first_name="Tom & Jerry")
        deliver_message(queue(profile, body="Hi {{ first_name }}"), now=NOW)
        payload = sent_json(bot.calls[0])
    assert payload == {"chat_id": 987654321, "text": "Hi Tom & Jerry"}


def test_a_button_needs_both_text_and_url(bot):
    bot.post(f"{API}/sendMessage", json=sent_ok())
    message = queue_message(
        customer(),
        channel="telegram",
        purpose="marketing",
        now=NOW,
        inline={"body.txt": "Hi", "button_text.txt": "Go", "button_url.txt": " "},
    )
    deliver_message(message, now=NOW)
    assert "reply_markup" not in sent_json(bot.calls[0])


def test_blocked_bot_fails_the_message_and_withdraws_consent(bot):
    bot.post(
        f"{API}/sendMessage",
        status=403,
        json={
            "ok": False,
            "error_code": 403,
            "description": "Forbidden: bot was blocked by the user",
        },
    )
    profile = customer()
    message = deliver_message(queue(profile, body="Sale!"), now=NOW)

    assert message.status == MessageStatus.FAILED
    assert "bot was blocked by the user" in message.error
    assert not has_consent(profile, channel="messenger", purpose="marketing")
    # The chat stays linked: pressing Start again resubscribes this profile.
    assert Identity.objects.filter(profile=profile, kind="telegram").exists()
    with pytest.raises(NotReachable, match="withdrawn"):
        queue(profile, body="Another sale")


def test_bad_request_fails_with_telegrams_description(bot):
    bot.post(
        f"{API}/sendMessage",
        status=400,
        json={"ok": False, "error_code": 400, "description": "Bad Request: chat not found"},
    )
    message = deliver_message(queue(customer(), body="Hi"), now=NOW)
    assert message.status == MessageStatus.FAILED
    assert message.error == "Telegram sendMessage 400: Bad Request: chat not found"


def test_429_pauses_the_channel_for_retry_after(bot):
    bot.post(
        f"{API}/sendMessage",
        status=429,
        json={
            "ok": False,
            "error_code": 429,
            "description": "Too Many Requests: retry after 45",
            "parameters": {"retry_after": 45},
        },
    )
    message = deliver_message(queue(customer(), body="Hi"), now=NOW)

    assert message.status == MessageStatus.QUEUED
    assert message.attempts == 0
    assert message.next_attempt_at == NOW + timedelta(seconds=45)
    assert ChannelThrottle.objects.get(channel="telegram").paused_until == NOW + timedelta(
        seconds=45
    )


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 502, "json": {"ok": False, "error_code": 502, "description": "Bad Gateway"}},
        {"status": 500, "body": "<html>oops</html>"},
        {"body": requests.ReadTimeout(f"read timed out: /bot{BOT_TOKEN}/sendMessage")},
        {"body": requests.ConnectionError(f"Max retries exceeded with url: /bot{BOT_TOKEN}/x")},
        {"status": 401, "json": {"ok": False, "error_code": 401, "description": "Unauthorized"}},
    ],
)
def test_5xx_timeouts_and_bad_tokens_are_retried_without_leaking_the_token(bot, fault):
    bot.post(f"{API}/sendMessage", **fault)
    message = deliver_message(queue(customer(), body="Hi"), now=NOW)

    assert message.status == MessageStatus.QUEUED
    assert message.next_attempt_at > NOW
    assert message.error.startswith("Telegram sendMessage")
    assert "SECRET-bot-token" not in message.error
    assert "SECRET-bot-token" not in str(message.history.values_list("detail", flat=True))


def test_the_most_recently_linked_chat_is_used(use_channels):
    use_channels(telegram=TELEGRAM)
    profile = customer("111")
    Identity.objects.filter(profile=profile).update(created_at=NOW - timedelta(days=3))
    Identity.objects.create(
        profile=profile, kind=IdentityKind.TELEGRAM, value="222", created_at=NOW
    )
    assert get_channel("telegram").get_address(profile) == "222"


def test_no_linked_chat_no_message(use_channels):
    use_channels(telegram=TELEGRAM)
    profile = CustomerProfile.objects.create()
    record_consent(profile, channel="messenger", purpose="marketing", granted=True, now=NOW)
    with pytest.raises(NotReachable, match="no telegram address"):
        queue(profile, body="Hi")


def test_start_link_carries_a_signed_profile_token(use_channels):
    use_channels(telegram=TELEGRAM)
    profile = CustomerProfile.objects.create()
    channel = get_channel("telegram")
    with time_machine.travel(NOW, tick=False):
        link = channel.start_link(profile)
    parts = urlsplit(link)
    token = parse_qs(parts.query)["start"][0]
    when = NOW
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://t.me/shop_bot"
    assert len(token) <= 64
    assert tokens.read_compact_token(tokens.TELEGRAM, token, now=when.timestamp()) == profile.pk


def test_a_too_long_message_is_refused(use_channels):
    use_channels(telegram=TELEGRAM)
    with pytest.raises(PermanentChannelError, match="4097 characters"):
        queue(customer(), body="<b>" + "a" * 4097 + "</b>")
    # Tags and entities do not count: 4096 visible characters are fine.
    assert queue(customer("5"), body="<b>" + "&amp;" * 4096 + "</b>").units == 1


@pytest.mark.parametrize("template", ["test", "welcome", "abandoned_basket"])
def test_demo_templates(use_channels, template):
    use_channels(telegram=TELEGRAM)
    message = queue(customer(), template=template)
    assert message.body_text.startswith("<b>")
    if template == "welcome":
        assert message.data == {"button_text": "Visit the shop", "button_url": f"{SITE}/"}
    if template == "abandoned_basket":
        assert message.data["button_url"] == "/basket/"  # Oscar's basket page by default


def test_abandoned_basket_names_the_first_product(use_channels):
    use_channels(telegram=TELEGRAM)
    basket = create_basket(empty=True)
    basket.add_product(create_product(title="Rain <jacket> & hat", price=Decimal("20.00")))
    message = queue(customer(), template="abandoned_basket", context={"basket": basket})
    assert "\u2022 Rain &lt;jacket&gt; &amp; hat" in message.body_text


def test_outbox_mode_writes_the_send_message_payload(use_channels):
    use_channels(telegram=django_settings.OMNICHANNEL["CHANNELS"]["telegram"])
    message = deliver_message(queue(customer(), template="welcome"), now=NOW)

    assert message.status == MessageStatus.SENT
    entry = OutboxEntry.objects.get(message=message)
    assert entry.payload["method"] == "sendMessage"
    assert entry.payload["json"]["chat_id"] == 987654321
    assert (
        entry.payload["json"]["reply_markup"]["inline_keyboard"][0][0]["text"] == "Visit the shop"
    )


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"BOT_TOKEN": ""}, "BOT_TOKEN"),
        ({"PARSE_MODE": "MarkdownV2"}, "PARSE_MODE"),
        ({"WEBHOOK_SECRET": "has spaces"}, "WEBHOOK_SECRET"),
        ({"TIMEOUT": "soon"}, "TIMEOUT"),
        ({"BOT_TOKN": "typo"}, "unknown keys"),
    ],
)
def test_bad_options_are_clear(use_channels, options, match):
    use_channels(telegram={**TELEGRAM, "OPTIONS": {**TELEGRAM["OPTIONS"], **options}})
    with pytest.raises(ConfigurationError, match=match):
        get_channel("telegram")


# --- omnichannel_telegram_webhook ---------------------------------------------------------------


def test_command_sets_the_webhook_with_the_secret(bot):
    bot.post(f"{API}/setWebhook", json={"ok": True, "result": True})
    out = StringIO()

    call_command("omnichannel_telegram_webhook", stdout=out)

    assert sent_json(bot.calls[0]) == {
        "url": f"{SITE}/omnichannel/webhooks/telegram/?channel=telegram",
        "secret_token": "hook-secret_1",
        "allowed_updates": ["message", "my_chat_member"],
        "drop_pending_updates": False,
    }
    assert (
        f"webhook set to {SITE}/omnichannel/webhooks/telegram/?channel=telegram" in out.getvalue()
    )


def test_command_reports_telegrams_refusal(bot):
    bot.post(
        f"{API}/setWebhook",
        status=400,
        json={
            "ok": False,
            "error_code": 400,
            "description": "Bad Request: bad webhook: An HTTPS URL must be provided for webhook",
        },
    )
    with pytest.raises(CommandError, match="An HTTPS URL must be provided"):
        call_command("omnichannel_telegram_webhook", "--url", "http://shop.example.com/hook")


def test_command_deletes_the_webhook(bot):
    bot.post(f"{API}/deleteWebhook", json={"ok": True, "result": True})
    call_command(
        "omnichannel_telegram_webhook", "--delete", "--drop-pending-updates", stdout=StringIO()
    )
    assert sent_json(bot.calls[0]) == {"drop_pending_updates": True}


def test_command_needs_a_secret_and_a_telegram_channel(use_channels):
    options = {k: v for k, v in TELEGRAM["OPTIONS"].items() if k != "WEBHOOK_SECRET"}
    use_channels(telegram={**TELEGRAM, "OPTIONS": options})
    with pytest.raises(CommandError, match="WEBHOOK_SECRET"):
        call_command("omnichannel_telegram_webhook")
    use_channels(sms={"BACKEND": "omnichannel.channels.sms.SmsChannel"})
    with pytest.raises(CommandError, match="no TelegramChannel"):
        call_command("omnichannel_telegram_webhook")
    with pytest.raises(CommandError, match="not a TelegramChannel"):
        call_command("omnichannel_telegram_webhook", "--channel", "sms")
