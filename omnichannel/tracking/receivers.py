"""Receivers for providers' reports: anymail's ``tracking`` signal (every ESP's webhooks).

anymail validates the webhook (basic auth, the ESP's signature) and normalises each event;
we find our Message and record what happened. Mapping of anymail event types:

=================================  ==========================================================
queued, sent                       sent (a no-op when the message is further along)
delivered / opened / clicked       delivered / opened / clicked
bounced                            bounced; a hard bounce suppresses the address for marketing
rejected, failed                   failed; an ESP rejecting a known-bad address suppresses it
complained                         complained; suppressed, and email marketing consent withdrawn
unsubscribed                       unsubscribed; email marketing consent withdrawn
deferred, autoresponded,           nothing stored (logged at debug): a deferral is followed by
subscribed, unknown                delivered or bounced, and an auto-reply is not engagement
=================================  ==========================================================

A report we cannot match (another system's mail on the same ESP account) is logged and
ignored. Errors in our handling are logged and swallowed so a bad event never makes the ESP
retry forever, **except database errors**: those propagate, anymail answers 500, and the ESP
delivers the report again later instead of it being lost.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any

from anymail.signals import AnymailTrackingEvent, EventType, RejectReason, tracking
from django.db import DatabaseError, transaction
from django.dispatch import receiver
from django.utils import timezone

from ..channels.email import METADATA_KEY
from ..channels.models import Message, MessageStatus, Suppression, SuppressionReason
from ..channels.status import record_status
from ..exceptions import InvalidIdentity
from ..profiles.consents import current_consents, record_consent
from ..profiles.models import Channel, ConsentSource, Purpose
from ..profiles.normalise import normalise_email

logger = logging.getLogger("omnichannel.tracking")

#: anymail event type -> Message status it records.
EVENT_STATUS: dict[str, str] = {
    EventType.QUEUED: MessageStatus.SENT,
    EventType.SENT: MessageStatus.SENT,
    EventType.DELIVERED: MessageStatus.DELIVERED,
    EventType.OPENED: MessageStatus.OPENED,
    EventType.CLICKED: MessageStatus.CLICKED,
    EventType.BOUNCED: MessageStatus.BOUNCED,
    EventType.REJECTED: MessageStatus.FAILED,
    EventType.FAILED: MessageStatus.FAILED,
    EventType.COMPLAINED: MessageStatus.COMPLAINED,
    EventType.UNSUBSCRIBED: MessageStatus.UNSUBSCRIBED,
}

#: Bounces anymail reports as "bounced" that are not permanent (Postmark's own Type field):
#: the message bounced, but the address may work tomorrow, so it is not suppressed.
SOFT_BOUNCE_TYPES = frozenset({"SoftBounce", "Transient", "DnsError", "VirusNotification"})

#: Why an ESP refused to send ("rejected") -> our suppression: it knows the address is bad.
REJECT_SUPPRESSION: dict[str, str] = {
    RejectReason.BOUNCED: SuppressionReason.BOUNCED,
    RejectReason.INVALID: SuppressionReason.INVALID,
    RejectReason.SPAM: SuppressionReason.COMPLAINED,
}

#: Detail text kept per report (MTA responses can be long).
DETAIL_LIMIT = 300


@receiver(tracking, dispatch_uid="omnichannel.tracking.receive_tracking")
def receive_tracking(
    sender: Any, event: AnymailTrackingEvent, esp_name: str, **kwargs: Any
) -> None:
    """Record an ESP's delivery or engagement report on our Message."""
    try:
        handle_tracking_event(event, esp_name=esp_name, now=timezone.now())
    except DatabaseError:
        # Not swallowed: anymail answers 500 and the ESP retries, so the report is not lost.
        raise
    except Exception:  # a malformed event must not make the ESP retry it forever
        logger.exception(
            "%s tracking event %r for message %r could not be recorded",
            esp_name,
            getattr(event, "event_type", None),
            getattr(event, "message_id", None),
        )


def find_message(event: AnymailTrackingEvent) -> Message | None:
    """Our Message for ``event``: by the ESP's message id, else by the metadata we sent."""
    if event.message_id:
        message = (
            Message.objects.filter(provider_message_id=str(event.message_id)[:255])
            .order_by("-pk")
            .first()
        )
        if message is not None:
            return message
    metadata = event.metadata if isinstance(event.metadata, dict) else {}
    reference = metadata.get(METADATA_KEY)
    if reference:
        try:
            public_id = uuid.UUID(str(reference))
        except ValueError:
            logger.warning("tracking event with a malformed message reference %r", reference)
            return None
        return Message.objects.filter(uuid=public_id).first()
    return None


def handle_tracking_event(
    event: AnymailTrackingEvent, *, esp_name: str, now: datetime
) -> Message | None:
    """Record one normalised anymail event; returns the message it concerned, if we know it."""
    status = EVENT_STATUS.get(event.event_type)
    if status is None:
        logger.debug(
            "%s %s event for %s not recorded", esp_name, event.event_type, event.message_id
        )
        return None
    message = find_message(event)
    if message is None:
        logger.warning(
            "%s %s event for unknown message id %r (recipient %s): ignored",
            esp_name,
            event.event_type,
            event.message_id,
            event.recipient,
        )
        return None
    at = event.timestamp or now
    if timezone.is_naive(at):
        at = timezone.make_aware(at, dt_timezone.utc)
    # A sender's clock ahead of ours must not date a report (or a withdrawal) in the future.
    at = min(at, now)
    with transaction.atomic():
        if not message.provider_message_id and event.message_id:
            # The webhook can beat the send's own bookkeeping; keep the id for later events.
            Message.objects.filter(pk=message.pk, provider_message_id="").update(
                provider_message_id=str(event.message_id)[:255]
            )
        error = ""
        if status in (MessageStatus.BOUNCED, MessageStatus.FAILED):
            error = _short(event.description or event.mta_response or event.reject_reason or "")
            error = f"{esp_name}: {event.event_type}" + (f": {error}" if error else "")
        message = record_status(
            message,
            status,
            at=at,
            now=now,
            source=esp_name,
            detail=_detail(event),
            error=error,
        )
        _apply_side_effects(message, event, esp_name=esp_name, at=at)
    return message


def _apply_side_effects(
    message: Message, event: AnymailTrackingEvent, *, esp_name: str, at: datetime
) -> None:
    """Suppressions and consent withdrawals that a report implies."""
    kind = event.event_type
    if kind == EventType.BOUNCED and _is_hard_bounce(event):
        _suppress(message, event, SuppressionReason.BOUNCED, esp_name=esp_name, at=at)
    elif kind == EventType.REJECTED and event.reject_reason in REJECT_SUPPRESSION:
        _suppress(message, event, REJECT_SUPPRESSION[event.reject_reason], esp_name=esp_name, at=at)
    elif kind == EventType.COMPLAINED:
        _suppress(message, event, SuppressionReason.COMPLAINED, esp_name=esp_name, at=at)
        _withdraw_marketing(message, note=f"{esp_name}: spam complaint", at=at)
    elif kind == EventType.UNSUBSCRIBED:
        _withdraw_marketing(message, note=f"{esp_name}: unsubscribed at the ESP", at=at)


def _is_hard_bounce(event: AnymailTrackingEvent) -> bool:
    esp_event = event.esp_event if isinstance(event.esp_event, dict) else {}
    if esp_event.get("Type") in SOFT_BOUNCE_TYPES:
        return False
    return event.reject_reason in (None, RejectReason.BOUNCED, RejectReason.INVALID)


def _address(message: Message, event: AnymailTrackingEvent) -> str:
    if message.address:
        return message.address
    try:
        return normalise_email(event.recipient or "")
    except InvalidIdentity:
        return ""


def _suppress(
    message: Message,
    event: AnymailTrackingEvent,
    reason: str,
    *,
    esp_name: str,
    at: datetime,
) -> None:
    address = _address(message, event)
    if not address:
        return
    _, created = Suppression.objects.get_or_create(
        channel=message.channel,
        address=address,
        defaults={
            "reason": reason,
            # An address that does not exist cannot take a receipt either.
            "transactional_too": reason == SuppressionReason.INVALID,
            "message": message,
            "detail": _short(
                f"{esp_name} {event.event_type}: "
                f"{event.description or event.mta_response or event.reject_reason or ''}"
            ),
            "created_at": at,
        },
    )
    if created:
        logger.info("%s %s: suppressed %s (%s)", esp_name, event.event_type, address, reason)


def _withdraw_marketing(message: Message, *, note: str, at: datetime) -> None:
    """Record that the person no longer wants marketing email (unless already withdrawn)."""
    profile = message.profile
    if profile is None:
        return
    latest = current_consents(profile).get((Channel.EMAIL, Purpose.MARKETING))
    if latest is not None and not latest.granted:
        return  # a replayed webhook adds nothing to the history
    record_consent(
        profile,
        channel=Channel.EMAIL,
        purpose=Purpose.MARKETING,
        granted=False,
        now=at,
        source=ConsentSource.PROVIDER,
        note=note,
    )


def _short(text: str) -> str:
    return " ".join(str(text).split())[:DETAIL_LIMIT]


def _detail(event: AnymailTrackingEvent) -> dict[str, Any]:
    detail = {
        "event": event.event_type,
        "event_id": event.event_id,
        "recipient": event.recipient,
        "click_url": event.click_url,
        "reject_reason": event.reject_reason,
        "description": _short(event.description) if event.description else None,
        "mta_response": _short(event.mta_response) if event.mta_response else None,
    }
    return {key: value for key, value in detail.items() if value}
