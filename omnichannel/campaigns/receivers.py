"""Receivers of the app's own signals: enroll on folded events, keep enrollments through merges.

Connected by ``OmnichannelConfig.ready()``, which imports this module (and with it the built-in
triggers, so that they are registered wherever campaigns run).
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.dispatch import receiver
from django.utils import timezone

from ..profiles.models import CustomerProfile
from ..signals import events_folded, profiles_merging
from .enrolling import enroll_from_events
from .models import Enrollment, EnrollmentAction, EnrollmentLog, EnrollmentState, ExitReason
from .triggers import builtin  # noqa: F401  (registers the built-in triggers)

logger = logging.getLogger("omnichannel.campaigns")


@receiver(events_folded, dispatch_uid="omnichannel.campaigns.events_folded")
def receive_events_folded(sender: Any, events: list, **kwargs: Any) -> None:
    """Enroll what the folded batch triggers. Never raises: the fold sends with ``send()``."""
    try:
        # A savepoint (a transaction in autocommit): on PostgreSQL a failed statement would
        # otherwise abort a caller's transaction.
        with transaction.atomic():
            enroll_from_events(events, now=timezone.now())
    except Exception:  # deliberate: enrolling must never break the fold
        logger.exception("enrolling from %d folded events failed", len(events))


#: Ended enrollments rank above active ones, then more steps done above fewer.
def _progress(row: dict[str, Any]) -> tuple[bool, int]:
    return (row["state"] != EnrollmentState.ACTIVE, row["step_position"])


@receiver(profiles_merging, dispatch_uid="omnichannel.campaigns.profiles_merging")
def receive_profiles_merging(
    sender: Any, survivor: CustomerProfile, merged: CustomerProfile, **kwargs: Any
) -> None:
    """Resolve enrollments both profiles hold (same campaign and subject) before the move.

    The person keeps the more advanced of the two: an ended one (they were already welcomed,
    or converted) over an active one, then the one with more steps done; on a tie the
    survivor's. The other is not deleted (its messages and history stay linked to it): it is
    ended as ``profile_merged`` and its subject key gets a ``~merged<id>`` suffix, so the merge's
    move cannot collide with the unique (campaign, profile, subject) constraint.
    """

    def both_hold(profile_id: int) -> Exists:
        return Exists(
            Enrollment.objects.filter(
                profile_id=profile_id,
                campaign_id=OuterRef("campaign_id"),
                subject_key=OuterRef("subject_key"),
            )
        )

    rows = list(
        Enrollment.objects.filter(
            (Q(profile_id=merged.pk) & Q(both_hold(survivor.pk)))
            | (Q(profile_id=survivor.pk) & Q(both_hold(merged.pk)))
        ).values("pk", "profile_id", "campaign_id", "subject_key", "state", "step_position")
    )
    if not rows:
        return
    pairs: dict[tuple[int, str], dict[int, dict[str, Any]]] = {}
    for row in rows:
        pairs.setdefault((row["campaign_id"], row["subject_key"]), {})[row["profile_id"]] = row
    now = timezone.now()
    losers = []
    for pair in pairs.values():
        kept, other = pair[survivor.pk], pair[merged.pk]
        if _progress(other) > _progress(kept):
            kept, other = other, kept
        losers.append((other, kept))
    suffix = f"~merged{merged.pk}"
    max_length = Enrollment._meta.get_field("subject_key").max_length
    for loser, _kept in losers:  # an UPDATE each: two profiles share few subjects
        ending = {}
        if loser["state"] == EnrollmentState.ACTIVE:
            ending = {
                "state": EnrollmentState.EXITED,
                "exit_reason": ExitReason.PROFILE_MERGED,
                "ended_at": now,
                "next_due_at": None,
            }
        Enrollment.objects.filter(pk=loser["pk"]).update(
            subject_key=loser["subject_key"][: max_length - len(suffix)] + suffix, **ending
        )
    EnrollmentLog.objects.bulk_create(
        [
            EnrollmentLog(
                enrollment_id=loser["pk"],
                at=now,
                action=EnrollmentAction.EXITED,
                detail=f"profiles {survivor.pk} and {merged.pk} merged: enrollment {kept['pk']} "
                "about the same subject goes on",
            )
            for loser, kept in losers
            if loser["state"] == EnrollmentState.ACTIVE
        ]
    )
