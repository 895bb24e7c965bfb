"""Recording what happened to a message: one history row per report, first times on the row."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from ..signals import message_status_changed
from .models import OUTCOMES, PROGRESS, Message, MessageStatus, MessageStatusChange

logger = logging.getLogger("omnichannel.channels")

_PROGRESS_RANK = {status: rank for rank, status in enumerate(PROGRESS)}


def next_status(current: str, reported: str) -> str:
    """The status a message shows after a report: progress only moves forward, an outcome
    (failed, bounced, ...) replaces progress, and a first outcome is not replaced by another
    except by a complaint or an unsubscribe (the person's own act matters most)."""
    if reported in _PROGRESS_RANK:
        if current in _PROGRESS_RANK and _PROGRESS_RANK[reported] > _PROGRESS_RANK[current]:
            return reported
        return current
    if current in OUTCOMES and reported not in (
        MessageStatus.COMPLAINED,
        MessageStatus.UNSUBSCRIBED,
    ):
        return current
    return reported


def record_status(
    message: Message | int,
    status: str,
    *,
    at: datetime,
    now: datetime | None = None,
    source: str = "",
    detail: dict[str, Any] | None = None,
    error: str = "",
) -> Message:
    """Add a report about ``message``; returns the updated message.

    ``at`` is when it happened (a provider's timestamp), ``now`` when we learnt it (the
    clock's time unless given: a late report must not be dated back to ``at``, or the
    attribution's re-checks would not see it). The ``<status>_at`` column keeps the earliest
    report of each status, so a replayed or late webhook changes nothing but the history.
    """
    if status not in MessageStatus.values:
        raise ValueError(f"unknown message status {status!r}")
    message_id = message.pk if isinstance(message, Message) else message
    with transaction.atomic():
        locked = Message.objects.select_for_update().get(pk=message_id)
        previous = locked.status
        fields = ["status", "status_changed_at"]
        column = f"{status}_at"
        current_first = getattr(locked, column)
        if current_first is None or at < current_first:
            setattr(locked, column, at)
            fields.append(column)
        locked.status = next_status(previous, status)
        if locked.status != previous:
            locked.status_changed_at = at
        if error:
            locked.error = error[:2000]
            fields.append("error")
        locked.save(update_fields=fields)
        MessageStatusChange.objects.create(
            message=locked,
            status=status,
            occurred_at=at,
            recorded_at=now or timezone.now(),
            source=source[:64],
            detail=detail or {},
        )
    if locked.status != previous:
        # send_robust: the status is stored; a failing receiver (a host's) is logged, and must
        # not make a webhook or a delivery run fail after the fact.
        for receiver, response in message_status_changed.send_robust(
            sender=Message, message=locked, previous=previous, reported=status
        ):
            if isinstance(response, Exception):
                logger.error(
                    "message_status_changed receiver %r failed on message %s: %r",
                    receiver,
                    locked.pk,
                    response,
                )
    return locked
