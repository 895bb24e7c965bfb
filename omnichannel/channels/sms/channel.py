"""The SMS channel: renders a plain text, counts its segments (the cost), hands it to a backend.

Configuration (``OMNICHANNEL["CHANNELS"]["sms"]``)::

    "sms": {
        "BACKEND": "omnichannel.channels.sms.SmsChannel",
        "COST": "0.04",                    # per segment
        "OPTIONS": {
            "BACKEND": "omnichannel.channels.sms.backends.twilio.SmsBackend",
            "FROM": "+447700900000",       # number, short code or alphanumeric sender id
            "ACCOUNT_SID": "AC...", "AUTH_TOKEN": "...",   # passed to the backend
            "MAX_SEGMENTS": 6,
        },
    }
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.module_loading import import_string

from ...exceptions import ChannelError, ConfigurationError, PermanentChannelError
from ...profiles.models import ConsentSource, IdentityKind, Purpose
from ..base import BaseChannel, SendResult, latest_identity_expression, latest_identity_values
from .backends.base import (
    BaseSmsBackend,
    InvalidRecipient,
    RecipientOptedOut,
    SmsMessage,
    StatusReport,
)
from .encoding import gsm_normalise, sms_encoding, sms_length, sms_segments

if TYPE_CHECKING:
    from django.db.models import Expression

    from ...profiles.models import CustomerProfile
    from ..models import Message

logger = logging.getLogger("omnichannel.channels.sms")

DEFAULT_BACKEND = "omnichannel.channels.sms.backends.console.SmsBackend"
DEFAULT_MAX_SEGMENTS = 6

#: Options the channel reads itself; every other option goes to the backend.
CHANNEL_OPTIONS = ("BACKEND", "FROM", "MAX_SEGMENTS", "SMART_ENCODING", "STATUS_CALLBACK")

# E.164 number, short code, or alphanumeric sender id (at most 11 characters, one letter at
# least: an all-digit id would be read as a number).
_SENDER_RE = re.compile(r"^(\+[1-9]\d{6,14}|\d{3,8}|(?=.*[A-Za-z])[A-Za-z0-9 ._&-]{1,11})$")


class SmsChannel(BaseChannel):
    """Texts to the person's latest phone number, billed per segment."""

    consent_channel = "sms"
    template_folder = "sms"
    template_parts = {"body.txt": True}
    label = "SMS"
    # Every character costs: {% tracked_url %} makes short links (about 70 characters).
    short_links = True

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        where = f"OMNICHANNEL['CHANNELS'][{name!r}]['OPTIONS']"
        options = dict(self.options)
        self.backend_path = str(options.pop("BACKEND", None) or DEFAULT_BACKEND)
        self.sender = str(options.pop("FROM", "") or "").strip()
        try:
            self.max_segments = int(options.pop("MAX_SEGMENTS", DEFAULT_MAX_SEGMENTS))
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"{where}['MAX_SEGMENTS'] must be an integer") from exc
        if self.max_segments < 1:
            raise ConfigurationError(f"{where}['MAX_SEGMENTS'] must be at least 1")
        self.smart_encoding = bool(options.pop("SMART_ENCODING", True))
        self.status_callback = bool(options.pop("STATUS_CALLBACK", True))
        #: Everything else is the provider's business (ACCOUNT_SID, AUTH_TOKEN, API_URL, ...).
        self.backend_options = options
        try:
            self.backend_class: type[BaseSmsBackend] = import_string(self.backend_path)
        except ImportError as exc:
            raise ConfigurationError(
                f"{where}['BACKEND']: cannot import {self.backend_path!r}: {exc}"
            ) from exc
        backend_class: Any = self.backend_class
        if not (isinstance(backend_class, type) and issubclass(backend_class, BaseSmsBackend)):
            raise ConfigurationError(
                f"{where}['BACKEND']: {self.backend_path!r} is not a BaseSmsBackend subclass"
            )
        if self.sender and not _SENDER_RE.match(self.sender):
            raise ConfigurationError(
                f"{where}['FROM'] = {self.sender!r} is neither an E.164 number (+447700900000), a "
                "short code nor an alphanumeric sender id of at most 11 characters"
            )
        self.batch_size = self.backend_class.batch_size
        self._backend: BaseSmsBackend | None = None
        if not self.outbox:
            # Fail at start-up, not at the first send, when a real provider lacks settings.
            self.get_backend()

    def get_backend(self) -> BaseSmsBackend:
        """The backend instance (built once); ConfigurationError when its settings are wrong."""
        if self._backend is None:
            if self.backend_class.requires_sender and not self.sender:
                raise ConfigurationError(
                    f"OMNICHANNEL['CHANNELS'][{self.name!r}]['OPTIONS']['FROM'] is required by "
                    f"{self.backend_path}: the sender number (E.164), short code or "
                    "alphanumeric sender id registered with the provider"
                )
            self._backend = self.backend_class(**self.backend_options)
        return self._backend

    # --- who can be reached -------------------------------------------------------------------

    def get_address(self, profile: CustomerProfile) -> str | None:
        """The person's most recently added phone number (E.164)."""
        return (
            profile.identities.filter(kind=IdentityKind.PHONE)
            .order_by("-created_at", "-pk")
            .values_list("value", flat=True)
            .first()
        )

    def get_addresses(self, profiles: Sequence[CustomerProfile]) -> dict[int, str | None]:
        """``get_address`` for many profiles in one query."""
        if type(self).get_address is not SmsChannel.get_address:
            return super().get_addresses(profiles)
        latest = latest_identity_values([p.pk for p in profiles], IdentityKind.PHONE)
        return {profile.pk: latest.get(profile.pk) for profile in profiles}

    def address_expression(self) -> Expression | None:
        """The latest phone identity, as ``get_address`` picks it."""
        if type(self).get_address is not SmsChannel.get_address:
            return None
        return latest_identity_expression(IdentityKind.PHONE)

    # --- content -----------------------------------------------------------------------------

    def apply_rendered(self, message: Message, parts: dict[str, str]) -> None:
        """Store the text as the person will read it, and refuse one longer than MAX_SEGMENTS.

        ``.txt`` parts are rendered without HTML autoescaping (BaseChannel.escape_text_parts),
        so ``Tom's`` stays ``Tom's``.
        """
        super().apply_rendered(message, parts)
        body = message.body_text.strip()
        if self.smart_encoding:
            body = gsm_normalise(body)
        if not body:
            raise PermanentChannelError(f"{self.name}: the rendered text is empty")
        segments = sms_segments(body)
        if segments > self.max_segments:
            raise PermanentChannelError(
                f"{self.name}: the text needs {segments} segments ({sms_length(body)} "
                f"{'septets' if sms_encoding(body) == 'GSM-7' else 'UCS-2 units'}, "
                f"{sms_encoding(body)}); MAX_SEGMENTS is {self.max_segments}"
            )
        message.body_text = body
        message.data["segments"] = segments
        message.data["encoding"] = sms_encoding(body)

    def units(self, message: Message) -> int:
        """Segments of the rendered text: what the provider bills."""
        return max(sms_segments(message.body_text), 1)

    # --- sending -----------------------------------------------------------------------------

    def status_callback_url(self, message: Message | None = None) -> str:
        """Absolute URL of our delivery report webhook for this channel ('' when not routed).

        It names the message (``?m=<uuid>``): a report can arrive before the batch that sent
        the text has stored the provider's id, and is then matched by this instead.
        """
        if not self.status_callback:
            return ""
        from ...tracking.links import absolute

        try:
            url = absolute(reverse("omnichannel:sms-status", args=[self.name]))
            return f"{url}?m={message.uuid.hex}" if message is not None else url
        except NoReverseMatch:
            logger.warning("omnichannel.urls not included: no delivery reports for %s", self.name)
            return ""

    def to_sms(self, message: Message) -> SmsMessage:
        return SmsMessage(
            to=message.address,
            body=message.body_text,
            sender=self.sender,
            status_callback=self.status_callback_url(message),
            reference=message.uuid.hex,
        )

    def send(self, message: Message) -> str:
        return self.send_via_batch(message)

    def send_batch(self, messages: Sequence[Message]) -> list[SendResult]:
        if self.outbox:
            return super().send_batch(messages)
        backend = self.get_backend()
        with backend:
            results = list(backend.send_messages([self.to_sms(m) for m in messages]))
        for message, result in zip(messages, results, strict=False):
            if isinstance(result, (RecipientOptedOut, InvalidRecipient)):
                self._learn_from(message, result)
        return results

    def _learn_from(self, message: Message, error: ChannelError) -> None:
        """Remember a refusal that will repeat: an opt-out (consent) or a dead number."""
        from ...profiles.consents import record_consent
        from ..models import Suppression, SuppressionReason

        try:
            if isinstance(error, RecipientOptedOut) and message.profile is not None:
                record_consent(
                    message.profile,
                    channel=self.consent_channel,
                    purpose=Purpose.MARKETING,
                    granted=False,
                    now=timezone.now(),
                    source=ConsentSource.PROVIDER,
                    note=f"opted out at the SMS provider: {error.reason}",
                )
            elif isinstance(error, InvalidRecipient):
                Suppression.objects.get_or_create(
                    channel=self.name,
                    address=message.address,
                    defaults={
                        "reason": SuppressionReason.INVALID,
                        "transactional_too": True,
                        "message_id": message.pk,
                        "detail": error.reason[:500],
                    },
                )
        except Exception:  # the send result is stored whatever happens here
            logger.exception("could not record %s for message %s", type(error).__name__, message.pk)

    def outbox_payload(self, message: Message) -> dict[str, Any]:
        return {
            "backend": self.backend_path,
            "from": self.sender,
            "to": message.address,
            "body": message.body_text,
            "segments": message.data.get("segments"),
            "encoding": message.data.get("encoding"),
        }

    # --- delivery reports --------------------------------------------------------------------

    def record_status_reports(
        self, reports: Sequence[StatusReport], *, now: datetime, reference: str = ""
    ) -> int:
        """Apply a provider's delivery reports to our messages; returns how many matched.

        ``reference`` is the message uuid our callback URL carried: it matches a report that
        beat the storing of the provider's id (which is then stored). An unknown provider id
        (a text sent by something else on the same account, or a message deleted since) is
        logged and ignored.
        """
        from ..models import Message
        from ..status import record_status

        matched = 0
        for report in reports:
            if not report.status:
                continue
            message = (
                Message.objects.filter(
                    channel=self.name, provider_message_id=report.provider_message_id
                )
                .only("pk")
                .first()
            )
            if message is None and reference:
                message = self._match_reference(reference, report.provider_message_id)
            if message is None:
                logger.info(
                    "%s: delivery report for unknown message %s ignored",
                    self.name,
                    report.provider_message_id,
                )
                continue
            record_status(
                message,
                report.status,
                at=now,
                now=now,
                source=self.name,
                detail={"provider_status": report.provider_status, **report.detail},
                error=report.error,
            )
            matched += 1
        return matched

    def _match_reference(self, reference: str, provider_message_id: str) -> Message | None:
        from ..models import Message

        try:
            public_id = uuid.UUID(reference)
        except ValueError:
            return None
        message = Message.objects.filter(channel=self.name, uuid=public_id).only("pk").first()
        if message is not None and provider_message_id:
            Message.objects.filter(pk=message.pk, provider_message_id="").update(
                provider_message_id=provider_message_id[:255]
            )
        return message
