"""Signed tokens for the links in messages: click, open, unsubscribe, preferences, basket.

Every token is signed with the project's SECRET_KEY and a salt per kind, so a token made for
one purpose is refused by every other. Tampered, expired or malformed tokens raise
TamperedToken (a SuspiciousOperation: Django answers 400 unless a view catches it).
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

from django.core import signing
from django.utils.crypto import constant_time_compare, salted_hmac

from ..conf import app_settings
from ..exceptions import TamperedToken


@dataclass(frozen=True)
class TokenKind:
    """A kind of link: its salt, and the setting that gives its lifetime (None: no expiry)."""

    salt: str
    max_age_setting: str | None = None

    @property
    def max_age(self) -> int | None:
        if self.max_age_setting is None:
            return None
        return int(getattr(app_settings, self.max_age_setting))


CLICK = TokenKind("omnichannel.tracking.click", "CLICK_LINK_MAX_AGE")
OPEN = TokenKind("omnichannel.tracking.open")
UNSUBSCRIBE = TokenKind("omnichannel.tracking.unsubscribe")
PREFERENCES = TokenKind("omnichannel.tracking.preferences", "PREFERENCES_LINK_MAX_AGE")
BASKET = TokenKind("omnichannel.tracking.basket", "BASKET_LINK_MAX_AGE")
TELEGRAM = TokenKind("omnichannel.tracking.telegram", "TELEGRAM_LINK_MAX_AGE")
#: Short click links (SMS): the token names the message and the link's index in it.
SHORT_CLICK = TokenKind("omnichannel.tracking.short-click", "CLICK_LINK_MAX_AGE")


def make_token(kind: TokenKind, payload: dict[str, Any]) -> str:
    """Sign ``payload`` (JSON-serialisable) for ``kind``; URL-safe."""
    return signing.dumps(payload, salt=kind.salt, compress=True)


def read_token(kind: TokenKind, token: str) -> dict[str, Any]:
    """The payload of a token made by make_token for the same kind; TamperedToken otherwise."""
    try:
        payload = signing.loads(token, salt=kind.salt, max_age=kind.max_age)
    except signing.SignatureExpired as exc:
        raise TamperedToken(f"this link has expired ({exc})") from exc
    except signing.BadSignature as exc:
        raise TamperedToken("this link is not valid: it was altered or truncated") from exc
    if not isinstance(payload, dict):
        raise TamperedToken("this link is not valid")
    return payload


# --- Compact tokens for Telegram's /start parameter (at most 64 chars of [A-Za-z0-9_-]) -------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _int36(value: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        value, rem = divmod(value, 36)
        out = digits[rem] + out
        if not value:
            return out


def make_compact_token(kind: TokenKind, value: int, *, now: float | None = None) -> str:
    """``<value>_<time>_<mac>`` in base 36 and base64url: 30-odd characters."""
    stamp = _int36(int(now if now is not None else time.time()))
    body = f"{_int36(value)}_{stamp}"
    mac = _b64(salted_hmac(kind.salt, body, algorithm="sha256").digest()[:12])
    return f"{body}_{mac}"


def read_compact_token(kind: TokenKind, token: str, *, now: float | None = None) -> int:
    """The integer signed by make_compact_token; TamperedToken when altered or expired."""
    # The MAC is base64url and may itself contain "_": split off the first two fields only.
    parts = token.split("_", 2) if isinstance(token, str) and len(token) <= 64 else []
    if len(parts) != 3:
        raise TamperedToken("this link is not valid")
    body = f"{parts[0]}_{parts[1]}"
    expected = _b64(salted_hmac(kind.salt, body, algorithm="sha256").digest()[:12])
    if not constant_time_compare(expected, parts[2]):
        raise TamperedToken("this link is not valid: it was altered or truncated")
    try:
        value, stamp = int(parts[0], 36), int(parts[1], 36)
    except ValueError as exc:
        raise TamperedToken("this link is not valid") from exc
    max_age = kind.max_age
    current = now if now is not None else time.time()
    if max_age is not None and current - stamp > max_age:
        raise TamperedToken("this link has expired")
    return value
