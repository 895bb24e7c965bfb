"""Twilio's Programmable Messaging over its REST API (no SDK needed: one form POST per text).

Options: ``ACCOUNT_SID`` and ``AUTH_TOKEN`` (required), ``API_URL`` (default
``https://api.twilio.com``; point it elsewhere for a proxy or a fake), ``TIMEOUT`` (seconds per
request, default 10). Delivery reports come back to ``omnichannel:sms-status`` and are
authenticated by Twilio's ``X-Twilio-Signature`` (HMAC-SHA1 with the auth token).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

import requests
from django.core.exceptions import PermissionDenied
from django.utils.crypto import constant_time_compare

from ....exceptions import (
    ChannelError,
    ConfigurationError,
    PermanentChannelError,
    RateLimited,
    TemporaryChannelError,
)
from ...models import MessageStatus
from .base import (
    BaseSmsBackend,
    InvalidRecipient,
    RecipientOptedOut,
    SmsMessage,
    SmsResult,
    StatusReport,
    parse_retry_after,
)

if TYPE_CHECKING:
    from django.http import HttpRequest

logger = logging.getLogger("omnichannel.channels.sms")

DEFAULT_API_URL = "https://api.twilio.com"
DEFAULT_TIMEOUT = 10.0

#: Twilio error codes meaning the number can never receive texts: the address is suppressed.
INVALID_NUMBER_CODES = frozenset({21211, 21614})
#: The person replied STOP to this sender: their SMS marketing consent is withdrawn.
OPTED_OUT_CODES = frozenset({21610})

#: Twilio's MessageStatus in status callbacks -> our MessageStatus (others are ignored).
STATUS_MAP = {
    "sent": MessageStatus.SENT,
    "delivered": MessageStatus.DELIVERED,
    "undelivered": MessageStatus.FAILED,
    "failed": MessageStatus.FAILED,
    # Only for channels with read receipts (WhatsApp, RCS) sent through the same account.
    "read": MessageStatus.OPENED,
}

#: The delivery errors met most often, so the message log says more than a number.
ERROR_DESCRIPTIONS = {
    "30001": "queue overflow",
    "30002": "account suspended",
    "30003": "unreachable destination handset",
    "30004": "message blocked",
    "30005": "unknown destination handset",
    "30006": "landline or unreachable carrier",
    "30007": "message filtered by the carrier",
    "30008": "unknown error",
    "30034": "message from an unregistered number (US A2P 10DLC)",
}


def twilio_signature(auth_token: str, url: str, params: dict[str, list[str]]) -> str:
    """Twilio's request signature: base64(HMAC-SHA1(auth token, url + sorted name/values))."""
    payload = url
    for name in sorted(set(params)):
        for value in sorted(set(params[name])):
            payload += name + value
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


class SmsBackend(BaseSmsBackend):
    """``omnichannel.channels.sms.backends.twilio.SmsBackend``: Twilio's Messages API."""

    option_names = frozenset({"ACCOUNT_SID", "AUTH_TOKEN", "API_URL", "TIMEOUT"})
    requires_sender = True
    # One request per text, over one kept-alive session per batch.
    batch_size = 50

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        missing = [key for key in ("ACCOUNT_SID", "AUTH_TOKEN") if not self.options.get(key)]
        if missing:
            raise ConfigurationError(
                f"the Twilio SMS backend needs {' and '.join(missing)} in the channel's OPTIONS "
                "(from the Twilio console: Account Info)"
            )
        self.account_sid = str(self.options["ACCOUNT_SID"])
        self.auth_token = str(self.options["AUTH_TOKEN"])
        self.api_url = str(self.options.get("API_URL") or DEFAULT_API_URL).rstrip("/")
        try:
            self.timeout = float(self.options.get("TIMEOUT", DEFAULT_TIMEOUT))
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"Twilio TIMEOUT must be a number of seconds: {exc}") from exc
        self.session: requests.Session | None = None

    @property
    def messages_url(self) -> str:
        return f"{self.api_url}/2010-04-01/Accounts/{self.account_sid}/Messages.json"

    def open(self) -> None:
        if self.session is None:
            self.session = requests.Session()
            self.session.auth = (self.account_sid, self.auth_token)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    # --- sending -----------------------------------------------------------------------------

    def send_messages(self, messages: Sequence[SmsMessage]) -> list[SmsResult]:
        opened_here = self.session is None
        self.open()
        results: list[SmsResult] = []
        try:
            for index, message in enumerate(messages):
                try:
                    results.append(self.send_one(message))
                except RateLimited as exc:
                    # The account is over its rate: the rest would get 429s too.
                    results.extend([exc] * (len(messages) - index))
                    break
                except ChannelError as exc:
                    results.append(exc)
        finally:
            if opened_here:
                self.close()
        return results

    def send_one(self, message: SmsMessage) -> str:
        """POST one text; Twilio's message sid, or a mapped ChannelError."""
        self.open()
        session = cast(requests.Session, self.session)
        form = {"To": message.to, "From": message.sender, "Body": message.body}
        if message.status_callback:
            form["StatusCallback"] = message.status_callback
        try:
            response = session.post(self.messages_url, data=form, timeout=self.timeout)
        except requests.Timeout as exc:
            raise TemporaryChannelError(f"Twilio did not answer within {self.timeout} s") from exc
        except requests.RequestException as exc:
            raise TemporaryChannelError(f"Twilio unreachable: {type(exc).__name__}") from exc
        return self.parse_send_response(response)

    def parse_send_response(self, response: requests.Response) -> str:
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            data = {}
        status = response.status_code
        if 200 <= status < 300:
            sid = data.get("sid")
            if not sid:
                # Twilio may have taken it: a retry could send it twice, so give up on it.
                raise PermanentChannelError(
                    f"Twilio answered {status} without a message sid", provider_response=data
                )
            return str(sid)
        code = data.get("code")
        reason = f"Twilio {status}"
        if code:
            reason += f" (error {code})"
        reason += f": {data.get('message') or response.reason or response.text[:200]}"
        if status == 429:
            raise RateLimited(
                reason,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
                provider_response=data,
            )
        if status >= 500 or status in (401, 408):
            # 401 is our credentials, not the recipient: retried with backoff while staff fix
            # ACCOUNT_SID/AUTH_TOKEN, instead of failing every queued text at once.
            raise TemporaryChannelError(reason, provider_response=data)
        if code in OPTED_OUT_CODES:
            raise RecipientOptedOut(reason, provider_response=data)
        if code in INVALID_NUMBER_CODES:
            raise InvalidRecipient(reason, provider_response=data)
        raise PermanentChannelError(reason, provider_response=data)

    # --- delivery reports --------------------------------------------------------------------

    def is_valid_signature(self, request: HttpRequest, urls: Iterable[str]) -> bool:
        signature = request.headers.get("X-Twilio-Signature", "")
        if not signature:
            return False
        params = {key: request.POST.getlist(key) for key in request.POST}
        return any(
            constant_time_compare(twilio_signature(self.auth_token, url, params), signature)
            for url in urls
        )

    def parse_status_report(self, request: HttpRequest, *, url: str) -> list[StatusReport]:
        # Twilio signs the URL it called: the one we gave (from SITE_URL). Behind a proxy that
        # rewrites scheme or host the request's own URL differs, so both are tried.
        candidates = dict.fromkeys([url, request.build_absolute_uri()])
        if not self.is_valid_signature(request, candidates):
            raise PermissionDenied("bad or missing X-Twilio-Signature")
        sid = request.POST.get("MessageSid") or request.POST.get("SmsSid")
        twilio_status = (
            request.POST.get("MessageStatus") or request.POST.get("SmsStatus") or ""
        ).lower()
        if not sid or not twilio_status:
            raise ValueError("a Twilio status callback needs MessageSid and MessageStatus")
        error = ""
        code = request.POST.get("ErrorCode", "")
        if code:
            description = request.POST.get("ErrorMessage") or ERROR_DESCRIPTIONS.get(code, "")
            error = f"Twilio error {code}" + (f": {description}" if description else "")
        elif twilio_status in ("failed", "undelivered"):
            error = f"Twilio: {twilio_status}"
        return [
            StatusReport(
                provider_message_id=sid,
                status=STATUS_MAP.get(twilio_status, ""),
                provider_status=twilio_status,
                error=error,
                detail={
                    key: request.POST[key]
                    for key in ("MessageStatus", "ErrorCode", "ErrorMessage", "To", "From")
                    if request.POST.get(key)
                },
            )
        ]
