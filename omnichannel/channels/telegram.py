"""Telegram: messages from the shop's bot over the Bot API (``sendMessage``).

A person links their chat by opening ``start_link(profile)`` (``https://t.me/<bot>?start=<signed
token>``) and pressing Start: our webhook (``omnichannel:telegram-webhook``) reads the token,
stores the chat as a ``telegram`` Identity of the profile and records a messenger marketing
grant. ``/stop`` withdraws it; a bot blocked by the person (HTTP 403 on send, or the
``my_chat_member`` update) withdraws it too, and the identity is kept so that pressing Start
again (Telegram's "Restart bot") resubscribes the same profile.

Configuration (``OMNICHANNEL["CHANNELS"]["telegram"]``)::

    "telegram": {
        "BACKEND": "omnichannel.channels.telegram.TelegramChannel",
        "COST": "0",
        "OPTIONS": {
            "BOT_TOKEN": "123456:ABC...",          # from @BotFather
            "BOT_USERNAME": "myshop_bot",
            "WEBHOOK_SECRET": "long-random-string", # [A-Za-z0-9_-], 1-256 characters
        },
    }
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import requests
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone, translation
from django.utils.html import strip_tags
from django.utils.translation import gettext as _

from ..exceptions import (
    ChannelError,
    ConfigurationError,
    PermanentChannelError,
    RateLimited,
    TamperedToken,
    TemporaryChannelError,
)
from ..profiles.models import (
    Channel,
    ConsentSource,
    CustomerProfile,
    Identity,
    IdentityKind,
    ProfileMerge,
    Purpose,
)
from .base import BaseChannel, latest_identity_expression, latest_identity_values

if TYPE_CHECKING:
    from django.db.models import Expression

    from .models import Message

logger = logging.getLogger("omnichannel.channels.telegram")

DEFAULT_API_URL = "https://api.telegram.org"
DEFAULT_TIMEOUT = 10.0
#: Telegram's limit for a message's text, counted after entity parsing.
MAX_TEXT_LENGTH = 4096
#: Bot API parse modes we can escape for: HTML (Django's autoescaping is HTML escaping) and
#: plain text. Markdown needs its own escaping rules, which templates cannot apply.
PARSE_MODES = ("HTML", "")
_CHAT_ID_RE = re.compile(r"^-?\d{1,20}$")
_SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_OPTIONS = frozenset(
    {"BOT_TOKEN", "BOT_USERNAME", "API_URL", "WEBHOOK_SECRET", "PARSE_MODE", "TIMEOUT"}
)


class TelegramChannel(BaseChannel):
    """Messages to the person's linked Telegram chat, with an optional URL button."""

    consent_channel = "messenger"
    template_folder = "telegram"
    template_parts = {"body.txt": True, "button_text.txt": False, "button_url.txt": False}
    label = "Telegram"
    # The body is Telegram HTML: context values must be escaped (undone for plain text).
    escape_text_parts = True
    # The Bot API reports no deliveries: attribution counts the send.
    reports_deliveries = False

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        where = f"OMNICHANNEL['CHANNELS'][{name!r}]['OPTIONS']"
        unknown = set(self.options) - _OPTIONS
        if unknown:
            raise ConfigurationError(f"{where} has unknown keys {sorted(unknown)}")
        self.bot_token = str(self.options.get("BOT_TOKEN") or "")
        self.bot_username = str(self.options.get("BOT_USERNAME") or "").lstrip("@")
        self.api_url = str(self.options.get("API_URL") or DEFAULT_API_URL).rstrip("/")
        self.webhook_secret = str(self.options.get("WEBHOOK_SECRET") or "")
        self.parse_mode = self.options.get("PARSE_MODE", "HTML") or ""
        try:
            self.timeout = float(self.options.get("TIMEOUT", DEFAULT_TIMEOUT))
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"{where}['TIMEOUT'] must be a number of seconds") from exc
        if self.parse_mode not in PARSE_MODES:
            raise ConfigurationError(
                f"{where}['PARSE_MODE'] must be 'HTML' or '' (plain text), not "
                f"{self.parse_mode!r}: templates are escaped for HTML only"
            )
        if self.webhook_secret and not _SECRET_RE.match(self.webhook_secret):
            raise ConfigurationError(
                f"{where}['WEBHOOK_SECRET'] may only hold A-Z, a-z, 0-9, _ and - (1-256 "
                "characters): Telegram sends it back in a header"
            )
        if not self.outbox and not self.bot_token:
            raise ConfigurationError(f"{where}['BOT_TOKEN'] is required (from @BotFather)")

    # --- who can be reached -------------------------------------------------------------------

    def get_address(self, profile: CustomerProfile) -> str | None:
        """The chat id of the person's most recently linked Telegram chat."""
        return (
            profile.identities.filter(kind=IdentityKind.TELEGRAM)
            .order_by("-created_at", "-pk")
            .values_list("value", flat=True)
            .first()
        )

    def get_addresses(self, profiles: Sequence[CustomerProfile]) -> dict[int, str | None]:
        """``get_address`` for many profiles in one query."""
        if type(self).get_address is not TelegramChannel.get_address:
            return super().get_addresses(profiles)
        latest = latest_identity_values([p.pk for p in profiles], IdentityKind.TELEGRAM)
        return {profile.pk: latest.get(profile.pk) for profile in profiles}

    def address_expression(self) -> Expression | None:
        """The latest chat identity, as ``get_address`` picks it."""
        if type(self).get_address is not TelegramChannel.get_address:
            return None
        return latest_identity_expression(IdentityKind.TELEGRAM)

    def start_link(self, profile: CustomerProfile) -> str:
        """The deep link that links the chat of whoever opens it to ``profile`` (signed)."""
        from ..tracking.links import telegram_start_link

        if not self.bot_username:
            raise ConfigurationError(
                f"OMNICHANNEL['CHANNELS'][{self.name!r}]['OPTIONS']['BOT_USERNAME'] is needed "
                "for start links"
            )
        return telegram_start_link(self.bot_username, profile)

    # --- content -----------------------------------------------------------------------------

    def apply_rendered(self, message: Message, parts: dict[str, str]) -> None:
        """Keep the HTML body (context values were escaped by the template engine); the button
        text and URL are plain, so their escaping is undone. A button needs both parts."""
        super().apply_rendered(message, parts)
        if not self.parse_mode:
            message.body_text = html.unescape(message.body_text)
        visible = html.unescape(strip_tags(message.body_text)) if self.parse_mode else None
        length = len(visible if visible is not None else message.body_text)
        if not message.body_text:
            raise PermanentChannelError(f"{self.name}: the rendered message is empty")
        if length > MAX_TEXT_LENGTH:
            raise PermanentChannelError(
                f"{self.name}: the message has {length} characters; Telegram takes at most "
                f"{MAX_TEXT_LENGTH}"
            )
        text = html.unescape(message.data.pop("button_text", "")).strip()
        url = html.unescape(message.data.pop("button_url", "")).strip()
        if text and url:
            message.data["button_text"] = text
            message.data["button_url"] = url

    # --- sending -----------------------------------------------------------------------------

    def build_payload(self, message: Message) -> dict[str, Any]:
        """The sendMessage parameters; the button goes through our signed click redirect."""
        from ..tracking.links import click_url

        payload: dict[str, Any] = {
            "chat_id": api_chat_id(message.address),
            "text": message.body_text,
        }
        if self.parse_mode:
            payload["parse_mode"] = self.parse_mode
        if message.data.get("button_text") and message.data.get("button_url"):
            payload["reply_markup"] = {
                "inline_keyboard": [
                    [
                        {
                            "text": message.data["button_text"],
                            "url": click_url(message, message.data["button_url"]),
                        }
                    ]
                ]
            }
        return payload

    def send(self, message: Message) -> str:
        """sendMessage to the chat; the provider id is ``<chat_id>:<message_id>``."""
        try:
            result = self.call("sendMessage", self.build_payload(message))
        except PermanentChannelError as exc:
            if _error_code(exc) == 403 and message.profile is not None:
                # "Forbidden: bot was blocked by the user" (or the account is gone).
                withdraw_consent(
                    message.profile,
                    note=f"Telegram chat {message.address}: {exc.reason}",
                )
            raise
        message_id = result.get("message_id") if isinstance(result, dict) else None
        if message_id is None:
            raise PermanentChannelError(
                "Telegram accepted the message without a message_id", provider_response=result
            )
        return f"{message.address}:{message_id}"

    def outbox_payload(self, message: Message) -> dict[str, Any]:
        return {"method": "sendMessage", "json": self.build_payload(message)}

    def call(self, method: str, payload: dict[str, Any]) -> Any:
        """Call a Bot API method; its ``result``, or a mapped ChannelError.

        The bot token is part of the URL: it is kept out of every error message.
        """
        url = f"{self.api_url}/bot{self.bot_token}/{method}"
        try:
            response = requests.post(url, json=payload, timeout=self.timeout)
        except requests.Timeout:
            # "from None": the exception's text holds the URL, and so the bot token.
            raise TemporaryChannelError(
                f"Telegram {method}: no answer within {self.timeout} s"
            ) from None
        except requests.RequestException as exc:
            raise TemporaryChannelError(
                f"Telegram {method}: unreachable ({type(exc).__name__})"
            ) from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            data = {}
        if response.ok and data.get("ok"):
            return data.get("result")
        status = response.status_code
        code = data.get("error_code") or status
        reason = f"Telegram {method} {code}: {data.get('description') or response.reason}"
        reason = reason.replace(self.bot_token, "<BOT_TOKEN>") if self.bot_token else reason
        if code == 429:
            parameters = data.get("parameters") if isinstance(data.get("parameters"), dict) else {}
            retry_after = parameters.get("retry_after") or response.headers.get("Retry-After")
            try:
                seconds = float(retry_after) if retry_after is not None else None
            except (TypeError, ValueError):
                seconds = None
            raise RateLimited(reason, retry_after=seconds, provider_response=data)
        if status >= 500 or code in (401, 404):
            # 401/404 mean a wrong or revoked BOT_TOKEN: ours to fix, retried meanwhile.
            raise TemporaryChannelError(reason, provider_response=data)
        raise PermanentChannelError(reason, provider_response=data)

    def reply(self, chat_id: int | str, text: str) -> bool:
        """Send a plain text to a chat (webhook replies); False when it could not be sent.

        In outbox mode the reply goes to the outbox like any message.
        """
        payload = {"chat_id": chat_id, "text": text}
        if self.outbox:
            from .models import OutboxEntry

            OutboxEntry.objects.create(
                channel=self.name,
                address=str(chat_id),
                body_text=text,
                payload={"method": "sendMessage", "json": payload},
            )
            return True
        try:
            self.call("sendMessage", payload)
        except ChannelError as exc:
            # The chat is linked (or not) whatever happens to the reply.
            logger.warning("%s: reply to chat %s failed: %s", self.name, chat_id, exc)
            return False
        return True


def api_chat_id(address: str) -> int | str:
    """The chat id as Telegram gives it: an integer (a channel's @username stays a string)."""
    return int(address) if _CHAT_ID_RE.match(address) else address


def _error_code(exc: PermanentChannelError) -> int | None:
    response = exc.provider_response
    return response.get("error_code") if isinstance(response, dict) else None


# --- services behind the webhook ---------------------------------------------------------------


def resolve_profile(profile_id: int) -> CustomerProfile | None:
    """The profile with this id, or the one it was merged into; None if it was erased."""
    for _hop in range(10):  # merges chain; a loop would be a bug, not a reason to hang
        profile = CustomerProfile.objects.filter(pk=profile_id).first()
        if profile is not None:
            return profile
        merge = ProfileMerge.objects.filter(merged_profile_id=profile_id).first()
        if merge is None:
            return None
        profile_id = merge.survivor_id
    return None


def linked_profile(chat_id: int | str) -> CustomerProfile | None:
    identity = (
        Identity.objects.filter(kind=IdentityKind.TELEGRAM, value=str(chat_id))
        .select_related("profile")
        .first()
    )
    return identity.profile if identity else None


def link_chat(profile: CustomerProfile, chat_id: int | str, *, now: datetime) -> Identity:
    """Make ``chat_id`` a telegram Identity of ``profile`` and record a messenger grant.

    A chat linked to another profile moves to this one: whoever opened the signed link holds
    both the chat and the link made for ``profile``, and messages for the old profile must
    not reach a chat that now belongs to someone who proved to be this person.
    """
    value = str(chat_id)
    with transaction.atomic():
        identity = (
            Identity.objects.select_for_update()
            .filter(kind=IdentityKind.TELEGRAM, value=value)
            .first()
        )
        if identity is None:
            try:
                with transaction.atomic():
                    identity = Identity.objects.create(
                        profile=profile, kind=IdentityKind.TELEGRAM, value=value, created_at=now
                    )
            except IntegrityError:
                # Linked by a concurrent update for the same chat: take that row.
                identity = Identity.objects.select_for_update().get(
                    kind=IdentityKind.TELEGRAM, value=value
                )
        if identity.profile_id != profile.pk:
            logger.info(
                "telegram chat %s moves from profile %s to %s (signed /start link)",
                value,
                identity.profile_id,
                profile.pk,
            )
            identity.profile = profile
            # "Most recent chat" is what get_address sends to: this one is new to the profile.
            identity.created_at = now
            identity.save(update_fields=["profile", "created_at"])
        grant_consent(profile, now=now, note=f"Telegram chat {value} linked with /start")
    return identity


def grant_consent(profile: CustomerProfile, *, now: datetime, note: str) -> None:
    from ..profiles.consents import record_consent

    record_consent(
        profile,
        channel=Channel.MESSENGER,
        purpose=Purpose.MARKETING,
        granted=True,
        now=now,
        source=ConsentSource.MESSENGER,
        note=note,
    )


def withdraw_consent(profile: CustomerProfile, *, note: str, now: datetime | None = None) -> None:
    """Withdraw messenger marketing consent (/stop, a blocked bot); the chat stays linked."""
    from ..profiles.consents import has_consent, record_consent

    if not has_consent(profile, channel=Channel.MESSENGER, purpose=Purpose.MARKETING):
        return
    record_consent(
        profile,
        channel=Channel.MESSENGER,
        purpose=Purpose.MARKETING,
        granted=False,
        now=now or timezone.now(),
        source=ConsentSource.MESSENGER,
        note=note,
    )


def _shop() -> str:
    return getattr(settings, "OSCAR_SHOP_NAME", "") or _("our shop")


def handle_update(channel: TelegramChannel, update: dict[str, Any], *, now: datetime) -> str:
    """Act on one authenticated Bot API Update; returns what was done (for logs and tests).

    Handles ``/start <token>`` (link), ``/start`` (resubscribe a linked chat), ``/stop``
    (withdraw) in private chats, and ``my_chat_member`` (the person blocked the bot).
    Everything else is ignored.
    """
    member = update.get("my_chat_member")
    if isinstance(member, dict):
        return _handle_member(member, now=now)
    message = update.get("message")
    if not isinstance(message, dict):
        return "ignored"
    chat = message.get("chat")
    text = message.get("text")
    if not isinstance(chat, dict) or chat.get("type") != "private" or not isinstance(text, str):
        return "ignored"
    chat_id = chat.get("id")
    if not isinstance(chat_id, int) or isinstance(chat_id, bool):
        return "ignored"
    sender = message.get("from") if isinstance(message.get("from"), dict) else {}
    command, _sep, argument = text.strip().partition(" ")
    command = command.split("@", 1)[0].lower()
    language = sender.get("language_code") if isinstance(sender.get("language_code"), str) else None
    with translation.override(language or settings.LANGUAGE_CODE):
        if command == "/start":
            return _handle_start(channel, chat_id, argument.strip(), now=now)
        if command == "/stop":
            return _handle_stop(channel, chat_id, now=now)
    return "ignored"


def _handle_start(channel: TelegramChannel, chat_id: int, token: str, *, now: datetime) -> str:
    from ..tracking import tokens

    if not token:
        profile = linked_profile(chat_id)
        if profile is None:
            channel.reply(
                chat_id,
                _(
                    "Hello! To get news and offers from %(shop)s here, open the Telegram link "
                    "on your account page or in one of our emails."
                )
                % {"shop": _shop()},
            )
            return "start-unlinked"
        # A linked chat pressing Start (again, or "Restart bot" after unblocking it).
        grant_consent(profile, now=now, note=f"Telegram chat {chat_id} pressed Start")
        channel.reply(
            chat_id,
            _("Welcome back! You will get news and offers from %(shop)s here. Send /stop to stop.")
            % {"shop": _shop()},
        )
        return "resubscribed"
    try:
        profile_id = tokens.read_compact_token(tokens.TELEGRAM, token, now=now.timestamp())
    except TamperedToken as exc:
        logger.info("telegram chat %s: start token refused (%s)", chat_id, exc)
        profile = None
    else:
        profile = resolve_profile(profile_id)
    if profile is None:
        channel.reply(
            chat_id,
            _(
                "Sorry, this link has expired or is not valid, so this chat is not linked. "
                "Please open a new link from %(shop)s."
            )
            % {"shop": _shop()},
        )
        return "expired"
    link_chat(profile, chat_id, now=now)
    channel.reply(
        chat_id,
        _(
            "Done! This chat is linked to your account at %(shop)s: you will get our news and "
            "offers here. Send /stop at any time to stop them."
        )
        % {"shop": _shop()},
    )
    return "linked"


def _handle_stop(channel: TelegramChannel, chat_id: int, *, now: datetime) -> str:
    profile = linked_profile(chat_id)
    if profile is None:
        channel.reply(
            chat_id, _("This chat is not linked to an account at %(shop)s.") % {"shop": _shop()}
        )
        return "stop-unlinked"
    withdraw_consent(profile, now=now, note=f"/stop in Telegram chat {chat_id}")
    channel.reply(
        chat_id,
        _("You will no longer get news and offers here. Send /start to get them again."),
    )
    return "stopped"


def _handle_member(member: dict[str, Any], *, now: datetime) -> str:
    chat = member.get("chat") if isinstance(member.get("chat"), dict) else {}
    new = member.get("new_chat_member") if isinstance(member.get("new_chat_member"), dict) else {}
    if chat.get("type") != "private" or new.get("status") != "kicked":
        return "ignored"
    profile = linked_profile(chat.get("id", ""))
    if profile is None:
        return "ignored"
    withdraw_consent(profile, now=now, note=f"Telegram chat {chat.get('id')} blocked the bot")
    return "blocked"
