"""Queueing and delivering messages: the database holds the truth, workers move it in batches.

``queue_message`` checks reach, renders and stores a ``queued`` message. ``deliver_due_messages``
(the beat task) claims due messages in one UPDATE, commits, calls the providers outside any
transaction, then records each result. A message is claimed (``sending``, with a lease) before
its provider is called, and a message still ``sending`` when its lease expires is marked failed
rather than sent again: the provider may already have taken it, and sending twice is worse than
not at all.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone, translation

from ..conf import app_settings
from ..exceptions import (
    ChannelError,
    NotReachable,
    PermanentChannelError,
    RateLimited,
    SendCancelled,
)
from ..profiles.models import CustomerProfile, Purpose
from ..signals import pre_send
from .base import BaseChannel, Reach, SendResult
from .models import ChannelThrottle, Message, MessageStatus, MessageStatusChange
from .registry import get_channel
from .status import record_status

logger = logging.getLogger("omnichannel.channels")


def message_context(
    message: Message, profile: CustomerProfile, channel: BaseChannel, extra: dict[str, Any]
) -> dict[str, Any]:
    """What every message template sees, plus the caller's ``extra``."""
    from ..tracking import links

    context: dict[str, Any] = {
        "message": message,
        "profile": profile,
        "channel": channel,
        "first_name": profile.first_name,
        "shop_name": getattr(settings, "OSCAR_SHOP_NAME", ""),
        "site_url": links.site_url(),
        "preferences_url": links.preferences_url(profile),
        "unsubscribe_url": links.unsubscribe_url(message),
        "is_marketing": message.purpose == Purpose.MARKETING,
        "short_links": channel.short_links,
    }
    context.update(extra)
    return context


def queue_message(
    profile: CustomerProfile,
    *,
    channel: str,
    purpose: str,
    now: datetime,
    template: str = "",
    inline: dict[str, str] | None = None,
    context: dict[str, Any] | None = None,
    dedupe_key: str | None = None,
    send_at: datetime | None = None,
    tags: Iterable[str] = (),
) -> Message:
    """Render and store a message for delivery; returns it (status ``queued``).

    Raises NotReachable when the person has no address on the channel, no consent for the
    purpose, or a suppressed address. With ``dedupe_key``, a second call returns the first
    message instead of queueing another.
    """
    if purpose not in Purpose.values:
        raise ValueError(f"unknown purpose {purpose!r}; expected one of {Purpose.values}")
    backend = get_channel(channel)
    if dedupe_key:
        existing = Message.objects.filter(dedupe_key=dedupe_key).first()
        if existing is not None:
            return existing
    reach = backend.reachability(profile, purpose)
    if not reach.ok:
        raise NotReachable(reach.reason)
    language = profile.language or settings.LANGUAGE_CODE
    try:
        with transaction.atomic():
            message = Message.objects.create(
                profile=profile,
                channel=channel,
                purpose=purpose,
                address=reach.address or "",
                template=template,
                language=language,
                tags=list(tags),
                currency=backend.currency,
                dedupe_key=dedupe_key or None,
                status=MessageStatus.QUEUED,
                status_changed_at=now,
                created_at=now,
                queued_at=now,
                next_attempt_at=send_at or now,
            )
            with translation.override(language):
                backend.render(
                    message,
                    message_context(message, profile, backend, context or {}),
                    template=template,
                    inline=inline,
                )
            message.units = backend.units(message)
            message.cost = backend.cost_of(message).quantize(Decimal("0.00001"))
            message.save()
            MessageStatusChange.objects.create(
                message=message,
                status=MessageStatus.QUEUED,
                occurred_at=now,
                recorded_at=now,
                source="omnichannel",
            )
    except IntegrityError:
        if dedupe_key:
            existing = Message.objects.filter(dedupe_key=dedupe_key).first()
            if existing is not None:
                return existing
        raise
    return message


# --- delivery --------------------------------------------------------------------------------


def retry_delay(attempt: int) -> float:
    """Seconds before retry ``attempt`` (1-based): exponential backoff with full jitter, capped."""
    base = float(app_settings.SEND_RETRY_BASE_DELAY)
    cap = float(app_settings.SEND_RETRY_MAX_DELAY)
    ceiling = min(cap, base * 2 ** max(attempt - 1, 0))
    # Full jitter (AWS architecture blog): spreads a burst of failures over the window.
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311  (not cryptographic)


def paused_channels(now: datetime) -> set[str]:
    return set(
        ChannelThrottle.objects.filter(paused_until__gt=now).values_list("channel", flat=True)
    )


def claim_due_messages(
    *, now: datetime, limit: int, ids: Iterable[int] | None = None
) -> list[Message]:
    """Mark up to ``limit`` due queued messages ``sending`` under one claim; return them.

    The claim is one UPDATE of rows still queued, tagged with a token of this run, so two
    workers never get the same message on any database; on PostgreSQL the candidate rows are
    read with SKIP LOCKED so workers do not wait on each other.
    """
    claim = uuid.uuid4().hex
    lease = now + timedelta(seconds=int(app_settings.SENDING_LEASE))
    with transaction.atomic():
        candidates = Message.objects.filter(
            status=MessageStatus.QUEUED, next_attempt_at__lte=now
        ).order_by("next_attempt_at", "id")
        if ids is not None:
            candidates = candidates.filter(pk__in=list(ids))
        paused = paused_channels(now)
        if paused:
            candidates = candidates.exclude(channel__in=paused)
        if connection.features.has_select_for_update_skip_locked:
            candidates = candidates.select_for_update(skip_locked=True)
        chosen = list(candidates.values_list("id", flat=True)[:limit])
        if not chosen:
            return []
        Message.objects.filter(pk__in=chosen, status=MessageStatus.QUEUED).update(
            status=MessageStatus.SENDING,
            status_changed_at=now,
            sending_at=now,
            claimed_by=claim,
            lease_expires_at=lease,
            attempts=F("attempts") + 1,
        )
    return list(
        Message.objects.filter(claimed_by=claim, status=MessageStatus.SENDING)
        .select_related("profile")
        .order_by("id")
    )


def deliver_due_messages(*, now: datetime, limit: int | None = None) -> int:
    """Claim and send due messages, channel by channel in provider-sized batches.

    Returns how many were claimed. Also fails messages whose sending lease expired.
    """
    fail_stale_sends(now=now)
    claimed = claim_due_messages(now=now, limit=limit or int(app_settings.DELIVERY_BATCH_SIZE))
    _deliver_by_channel(claimed, now=now)
    return len(claimed)


def deliver_messages(ids: Iterable[int], *, now: datetime) -> int:
    """Claim and send the given messages if they are queued and due (a campaign batch's task).

    Returns how many were claimed; messages another worker took, or not yet due, are left.
    """
    ids = list(ids)
    if not ids:
        return 0
    claimed = claim_due_messages(now=now, limit=len(ids), ids=ids)
    _deliver_by_channel(claimed, now=now)
    return len(claimed)


def _deliver_by_channel(claimed: list[Message], *, now: datetime) -> None:
    by_channel: dict[str, list[Message]] = defaultdict(list)
    for message in claimed:
        by_channel[message.channel].append(message)
    for name, messages in by_channel.items():
        _deliver_claimed(name, messages, now=now)


def deliver_message(message: Message, *, now: datetime) -> Message:
    """Send one queued message now (e.g. an admin's test send); returns it refreshed.

    A message that is not queued (already sent, or claimed by a worker) is returned as it is.
    """
    claimed = claim_due_messages(now=now, limit=1, ids=[message.pk])
    if claimed:
        _deliver_claimed(claimed[0].channel, claimed, now=now)
    return Message.objects.get(pk=message.pk)


def _deliver_claimed(name: str, messages: list[Message], *, now: datetime) -> None:
    try:
        backend = get_channel(name)
    except Exception as exc:  # noqa: BLE001  (a removed channel fails its messages, not the run)
        for message in messages:
            _finish(message, PermanentChannelError(str(exc)), now=now)
        return
    if any(m.needs_render for m in messages):
        # Campaign messages are created without content; they are rendered as they go, so
        # items, prices and stock are current. One that fails to render is failed, not sent.
        from ..campaigns.content import render_pending_messages

        messages = render_pending_messages(backend, messages, now=now)
    reach = _reach_of(backend, messages)
    sendable = [m for m in messages if _still_allowed(backend, m, now=now, reach=reach)]
    size = max(backend.batch_size, 1)
    for start in range(0, len(sendable), size):
        batch = _renew_lease(sendable[start : start + size])
        if not batch:
            continue
        try:
            results: list[SendResult] = backend.send_batch(batch)
        except ChannelError as exc:
            results = [exc] * len(batch)
        except Exception as exc:  # a bug in a backend must not lose the batch (logged)
            logger.exception("channel %s crashed sending %d messages", name, len(batch))
            results = [PermanentChannelError(f"{type(exc).__name__}: {exc}")] * len(batch)
        if len(results) != len(batch):
            logger.error("channel %s returned %d results for %d", name, len(results), len(batch))
            results = [*results, *[PermanentChannelError("no result from channel")] * len(batch)]
        limited = next((r for r in results if isinstance(r, RateLimited)), None)
        until = _throttle(name, limited, now=now) if limited is not None else None
        for message, result in zip(batch, results, strict=False):
            if isinstance(result, RateLimited):
                _requeue_after_throttle(message, result, until=until or now)
            else:
                _finish(message, result, now=now)
        if limited is not None:
            # The provider asked us to stop: the rest of the claim waits for the pause too.
            for message in sendable[start + size :]:
                _requeue_after_throttle(message, limited, until=until or now)
            return


def _renew_lease(batch: list[Message]) -> list[Message]:
    """Extend the lease of a batch about to go, and keep only the messages still ours.

    A claim of many messages on a slow provider can outlast SENDING_LEASE; renewing per batch
    keeps fail_stale_sends (another worker's run) from failing messages we are about to send,
    and a message it did fail is not sent.
    """
    lease = timezone.now() + timedelta(seconds=int(app_settings.SENDING_LEASE))
    by_claim: dict[str, list[int]] = defaultdict(list)
    for message in batch:
        by_claim[message.claimed_by].append(message.pk)
    kept: set[int] = set()
    for claim, pks in by_claim.items():
        if not claim:
            continue
        mine = Message.objects.filter(pk__in=pks, claimed_by=claim, status=MessageStatus.SENDING)
        mine.update(lease_expires_at=lease)
        kept.update(mine.values_list("pk", flat=True))
    return [message for message in batch if message.pk in kept]


def _requeue_after_throttle(message: Message, error: RateLimited, *, until: datetime) -> None:
    # Not the message's fault: the attempt does not count.
    Message.objects.filter(pk=message.pk, status=MessageStatus.SENDING).update(
        status=MessageStatus.QUEUED,
        next_attempt_at=until,
        attempts=F("attempts") - 1,
        claimed_by="",
        lease_expires_at=None,
        error=f"rate limited: {error.reason}"[:2000],
    )


def _reach_of(backend: BaseChannel, messages: list[Message]) -> dict[tuple[str, int], Reach]:
    """(purpose, profile pk) -> reachability, for a whole claim in a few queries."""
    found: dict[tuple[str, int], Reach] = {}
    by_purpose: dict[str, dict[int, CustomerProfile]] = defaultdict(dict)
    for message in messages:
        if message.profile is not None:
            by_purpose[message.purpose][message.profile.pk] = message.profile
    for purpose, profiles in by_purpose.items():
        for pk, reach in backend.reachability_many(list(profiles.values()), purpose).items():
            found[(purpose, pk)] = reach
    return found


def _still_allowed(
    backend: BaseChannel,
    message: Message,
    *,
    now: datetime,
    reach: dict[tuple[str, int], Reach] | None = None,
) -> bool:
    """Consent and suppression are checked again at send time: they may have changed."""
    reason = ""
    if message.profile is None:
        reason = "the person's profile was erased"
    else:
        known = (reach or {}).get((message.purpose, message.profile.pk))
        current = known or backend.reachability(message.profile, message.purpose)
        if not current.ok:
            reason = current.reason
    if not reason:
        # send_robust: a host's receiver that breaks must not stop the delivery run.
        for receiver, response in pre_send.send_robust(
            sender=type(backend), message=message, channel=backend
        ):
            if isinstance(response, SendCancelled):
                reason = f"cancelled: {response}"
                break
            if isinstance(response, Exception):
                logger.error(
                    "pre_send receiver %r failed on message %s: %r", receiver, message.pk, response
                )
    if reason:
        Message.objects.filter(pk=message.pk).update(claimed_by="", lease_expires_at=None)
        record_status(message, MessageStatus.SUPPRESSED, at=now, source="omnichannel", error=reason)
        return False
    return True


def _finish(message: Message, result: SendResult, *, now: datetime) -> None:
    """Store one send result."""
    base = Message.objects.filter(pk=message.pk, status=MessageStatus.SENDING)
    if isinstance(result, str):
        # By pk alone: the provider's webhook may already have moved the message on (delivered)
        # before we get here, and later reports find the message by this id.
        Message.objects.filter(pk=message.pk).update(
            provider_message_id=result[:255],
            provider=message.provider or message.channel,
            claimed_by="",
            lease_expires_at=None,
            error="",
        )
        record_status(message, MessageStatus.SENT, at=now, source="omnichannel")
        return
    attempts = Message.objects.filter(pk=message.pk).values_list("attempts", flat=True).first()
    if isinstance(result, PermanentChannelError) or (attempts or 0) >= int(
        app_settings.SEND_MAX_ATTEMPTS
    ):
        base.update(claimed_by="", lease_expires_at=None)
        record_status(
            message,
            MessageStatus.FAILED,
            at=now,
            source=message.channel,
            error=result.reason,
            detail={"attempts": attempts, "permanent": isinstance(result, PermanentChannelError)},
        )
        return
    base.update(
        status=MessageStatus.QUEUED,
        next_attempt_at=now + timedelta(seconds=retry_delay(attempts or 1)),
        claimed_by="",
        lease_expires_at=None,
        error=result.reason[:2000],
    )
    MessageStatusChange.objects.create(
        message_id=message.pk,
        status=MessageStatus.QUEUED,
        occurred_at=now,
        recorded_at=now,
        source=message.channel,
        detail={"retry": attempts, "error": result.reason[:500]},
    )


def _throttle(channel: str, error: RateLimited, *, now: datetime) -> datetime:
    """Pause the channel after a 429; consecutive 429s double the pause up to the cap."""
    with transaction.atomic():
        throttle, _ = ChannelThrottle.objects.select_for_update().get_or_create(
            channel=channel, defaults={"paused_until": now}
        )
        recent = throttle.paused_until >= now - timedelta(
            seconds=int(app_settings.THROTTLE_MAX_PAUSE)
        )
        throttle.consecutive = throttle.consecutive + 1 if recent else 1
        pause = float(app_settings.THROTTLE_BASE_PAUSE) * 2 ** (throttle.consecutive - 1)
        if error.retry_after:
            pause = max(pause, float(error.retry_after))
        pause = min(pause, float(app_settings.THROTTLE_MAX_PAUSE))
        until = max(throttle.paused_until, now + timedelta(seconds=pause))
        throttle.paused_until = until
        throttle.reason = error.reason[:500]
        throttle.save()
    logger.warning("channel %s rate limited: paused for %.0f s (%s)", channel, pause, error.reason)
    return until


def fail_stale_sends(*, now: datetime) -> int:
    """Mark failed the messages whose worker died mid-send (their lease expired)."""
    stale = list(
        Message.objects.filter(status=MessageStatus.SENDING, lease_expires_at__lt=now).values_list(
            "pk", flat=True
        )
    )
    failed = 0
    for pk in stale:
        # Only if it is still stale now: its worker may have renewed the lease or finished.
        released = Message.objects.filter(
            pk=pk, status=MessageStatus.SENDING, lease_expires_at__lt=now
        ).update(claimed_by="", lease_expires_at=None)
        if not released:
            continue
        failed += 1
        record_status(
            pk,
            MessageStatus.FAILED,
            at=now,
            source="omnichannel",
            error="the worker stopped while sending; not retried, so it cannot be sent twice",
        )
    if failed:
        logger.warning("%d messages were still sending after their lease: failed", failed)
    return failed
