"""Absolute URLs for the links we put in messages (all signed; see tokens.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlencode

from django.urls import reverse

from ..conf import app_settings
from . import tokens

if TYPE_CHECKING:
    from ..channels.models import Message
    from ..profiles.models import CustomerProfile


def site_url() -> str:
    """The shop's base URL without a trailing slash: SITE_URL, else https:// + Site domain."""
    if app_settings.SITE_URL:
        return str(app_settings.SITE_URL).rstrip("/")
    from django.contrib.sites.models import Site

    return f"https://{Site.objects.get_current().domain}".rstrip("/")


def absolute(path_or_url: str) -> str:
    """Make a shop path absolute; full URLs are returned unchanged."""
    if "://" in path_or_url:
        return path_or_url
    return site_url() + "/" + path_or_url.lstrip("/")


def click_url(message: Message, url: str) -> str:
    """Our signed redirect to ``url`` that records a click on ``message``."""
    token = tokens.make_token(tokens.CLICK, {"m": message.uuid.hex, "u": absolute(url)})
    return absolute(reverse("omnichannel:click", args=[token]))


#: Links one message can carry as short links (index encoded in the token's integer).
SHORT_LINKS_PER_MESSAGE = 100


def short_click_url(message: Message, url: str) -> str:
    """A short signed redirect for text where every character costs (SMS): about 70 characters
    with the domain, against 200 or more for click_url.

    The target is kept on the message (``data["links"]``), which must be saved after rendering
    (queue_message does); the token signs only the message id and the link's index.
    """
    if message.pk is None:
        raise ValueError("short links need a saved message")
    targets = message.data.setdefault("links", [])
    target = absolute(url)
    if target in targets:
        index = targets.index(target)
    else:
        if len(targets) >= SHORT_LINKS_PER_MESSAGE:
            raise ValueError(f"at most {SHORT_LINKS_PER_MESSAGE} short links per message")
        targets.append(target)
        index = len(targets) - 1
    token = tokens.make_compact_token(
        tokens.SHORT_CLICK, message.pk * SHORT_LINKS_PER_MESSAGE + index
    )
    return absolute(reverse("omnichannel:short-click", args=[token]))


def open_pixel_url(message: Message) -> str:
    token = tokens.make_token(tokens.OPEN, {"m": message.uuid.hex})
    return absolute(reverse("omnichannel:open", args=[token]))


def unsubscribe_url(message: Message) -> str:
    """One-click unsubscribe from marketing on the message's channel (RFC 8058 target)."""
    token = tokens.make_token(
        tokens.UNSUBSCRIBE,
        {"p": message.profile.uuid.hex if message.profile else None, "m": message.uuid.hex},
    )
    return absolute(reverse("omnichannel:unsubscribe", args=[token]))


def preferences_url(profile: CustomerProfile) -> str:
    token = tokens.make_token(tokens.PREFERENCES, {"p": profile.uuid.hex})
    return absolute(reverse("omnichannel:preferences", args=[token]))


def basket_restore_url(
    basket_id: int, profile: CustomerProfile | None = None, *, message: Message | None = None
) -> str:
    """A link that reopens this basket on any device (signed, expiring, this basket only).

    With ``message``, following the link records a click on it.
    """
    payload: dict[str, object] = {"b": basket_id, "p": profile.uuid.hex if profile else None}
    if message is not None:
        payload["m"] = message.uuid.hex
    token = tokens.make_token(tokens.BASKET, payload)
    return absolute(reverse("omnichannel:basket-restore", args=[token]))


def telegram_start_link(bot_username: str, profile: CustomerProfile) -> str:
    """https://t.me/<bot>?start=<token>: opening it in Telegram links the chat to ``profile``."""
    token = tokens.make_compact_token(tokens.TELEGRAM, profile.pk)
    return f"https://t.me/{bot_username.lstrip('@')}?{urlencode({'start': token})}"
