"""Receivers of the segments package: derived rows stay right when events fold, profiles merge."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from ..profiles.models import EventType
from ..signals import events_folded, profiles_merged, profiles_merging

logger = logging.getLogger("omnichannel.segments")


@receiver(events_folded, dispatch_uid="omnichannel.segments.purchased_products")
def receive_events_folded(sender: Any, events: list, profile_ids: set[int], **kwargs: Any) -> None:
    """Rewrite the purchased products of the people whose orders were just folded."""
    from .purchases import refresh_purchased_products

    buyers = {
        event.profile_id
        for event in events
        if event.type == EventType.ORDER_PLACED and event.profile_id is not None
    }
    if not buyers:
        return
    try:
        refresh_purchased_products(buyers)
    except Exception:  # the fold committed; each buyer's next order repairs the rows
        logger.exception("could not refresh purchased products of %s profiles", len(buyers))


@receiver(profiles_merging, dispatch_uid="omnichannel.segments.snapshot_members")
def receive_profiles_merging(sender: Any, survivor: Any, merged: Any, **kwargs: Any) -> None:
    """Drop the merged profile's snapshot rows where the survivor is a member too.

    The merge then moves the remaining rows to the survivor without breaking the unique
    (snapshot, profile) constraint.
    """
    from .models import SegmentSnapshotMember

    SegmentSnapshotMember.objects.filter(
        profile_id=merged.pk,
        snapshot_id__in=SegmentSnapshotMember.objects.filter(profile_id=survivor.pk).values(
            "snapshot_id"
        ),
    ).delete()


@receiver(profiles_merged, dispatch_uid="omnichannel.segments.merged_purchases")
def receive_profiles_merged(sender: Any, survivor: Any, **kwargs: Any) -> None:
    """The merged profile's purchased products were dropped: recompute the survivor's."""
    from .purchases import refresh_purchased_products

    try:
        with transaction.atomic():  # a savepoint: a failure here must not abort the merge
            refresh_purchased_products([survivor.pk])
    except Exception:  # derived rows: the survivor's next order repairs them
        logger.exception("could not refresh purchased products of profile %s", survivor.pk)


def _connect_category_signals() -> None:
    from .conditions import forget_category_subtrees

    # A lazy "app_label.Model" sender: Oscar's catalogue may be forked under another app.
    for signal in (post_save, post_delete):
        signal.connect(
            forget_category_subtrees,
            sender="catalogue.Category",
            dispatch_uid=f"omnichannel.segments.category_subtrees.{signal is post_save}",
        )


_connect_category_signals()
