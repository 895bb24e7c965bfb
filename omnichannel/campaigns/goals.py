"""What ends an enrollment before its steps run out: items bought, orders placed, subjects gone.

Shared by the engine (exit checks) and the content (an item reminder shows only what is left).
Every function works on a batch with a fixed number of queries.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

from django.db import transaction

from ..profiles.models import Event, EventType
from ..segments.models import PurchasedProduct
from .models import Enrollment, ExitReason
from .triggers import registry

logger = logging.getLogger("omnichannel.campaigns")


def trigger_of(enrollment: Enrollment):  # type: ignore[no-untyped-def]
    """The trigger of the enrollment's campaign, or None (mass campaigns, unknown keys)."""
    key = enrollment.campaign.trigger
    return registry[key] if key and key in registry else None


def remaining_items(
    enrollments: Sequence[Enrollment], *, errors: dict[int, str] | None = None
) -> dict[int, list[int] | ExitReason]:
    """Item reminders: enrollment pk -> products still to remind about, or why it is over.

    The trigger says what the subject holds now (a basket's lines, a wishlist); products the
    person bought since enrolling, online or offline, are dropped. Enrollments of triggers that
    do not remind about items are left out. With ``errors``, a trigger that fails is logged and
    its enrollments go there (pk -> why) instead of failing the whole batch.
    """
    by_trigger: dict[str, list[Enrollment]] = defaultdict(list)
    for enrollment in enrollments:
        trigger = trigger_of(enrollment)
        if trigger is not None and trigger.reminds_items:
            by_trigger[trigger.key].append(enrollment)
    current: dict[int, list[int] | ExitReason] = {}
    for key, group in by_trigger.items():
        if errors is None:
            found = registry[key].current_items(group)
        else:
            try:
                with transaction.atomic():  # a failed query must not poison the caller's
                    found = registry[key].current_items(group)
            except Exception as exc:  # one broken trigger, not the whole tick
                logger.exception("trigger %s: current_items failed", key)
                errors.update({e.pk: f"trigger {key} failed: {type(exc).__name__}" for e in group})
                continue
        for enrollment in group:
            # A trigger that says nothing about an enrollment: its subject is gone.
            current[enrollment.pk] = found.get(enrollment.pk, ExitReason.SUBJECT_GONE)
    listed = {pk: items for pk, items in current.items() if isinstance(items, list)}
    if not listed:
        return current
    by_pk = {e.pk: e for e in enrollments}
    bought = _bought_since(
        [by_pk[pk] for pk in listed], {pid for items in listed.values() for pid in items}
    )
    for pk, items in listed.items():
        enrollment = by_pk[pk]
        left = [
            pid
            for pid in items
            if not _bought_after(bought.get((enrollment.profile_id, pid)), enrollment.enrolled_at)
        ]
        if left:
            current[pk] = left
        elif items:
            current[pk] = ExitReason.BOUGHT_ITEMS
        else:
            current[pk] = ExitReason.SUBJECT_GONE
    return current


def _bought_after(last_bought_at: datetime | None, since: datetime) -> bool:
    return last_bought_at is not None and last_bought_at >= since


def _bought_since(
    enrollments: Sequence[Enrollment], product_ids: set[int]
) -> dict[tuple[int, int], datetime]:
    """(profile, product) -> when last bought, for the given people and products."""
    if not product_ids:
        return {}
    since = min(e.enrolled_at for e in enrollments)
    rows = PurchasedProduct.objects.filter(
        profile_id__in={e.profile_id for e in enrollments},
        product_id__in=product_ids,
        last_bought_at__gte=since,
    ).values_list("profile_id", "product_id", "last_bought_at")
    return {(profile_id, product_id): at for profile_id, product_id, at in rows}


def converted(enrollments: Sequence[Enrollment]) -> set[int]:
    """Pks of enrollments whose person placed an order (online or offline) after enrolling.

    Only for triggers with ``order_converts`` that do not remind about items (an item
    reminder ends by its items instead), and for mass campaigns.
    """
    candidates = []
    for enrollment in enrollments:
        trigger = trigger_of(enrollment)
        if trigger is None or (trigger.order_converts and not trigger.reminds_items):
            candidates.append(enrollment)
    if not candidates:
        return set()
    since = min(_since(e) for e in candidates)
    latest: dict[int, datetime] = {}
    rows = Event.objects.filter(
        profile_id__in={e.profile_id for e in candidates},
        type=EventType.ORDER_PLACED,
        occurred_at__gt=since,
    ).values_list("profile_id", "occurred_at")
    for profile_id, occurred_at in rows:
        if profile_id not in latest or occurred_at > latest[profile_id]:
            latest[profile_id] = occurred_at
    # The trigger's own moment counts too: an order event stamped a little ahead (a till's
    # clock) must not convert the thank-you it triggered.
    return {e.pk for e in candidates if e.profile_id in latest and latest[e.profile_id] > _since(e)}


def _since(enrollment: Enrollment) -> datetime:
    activity = enrollment.last_activity_at
    return max(enrollment.enrolled_at, activity) if activity else enrollment.enrolled_at
