"""Merging two profiles proven to be one person."""

from __future__ import annotations

import logging

from django.db import models, transaction

from ..signals import profiles_merged, profiles_merging
from .models import CustomerProfile, Event, Identity, IdentityKind, ProfileMerge

logger = logging.getLogger("omnichannel.profiles")


class MergeRefused(Exception):
    """The two profiles hold different user accounts: we never merge accounts."""


def choose_survivor(
    a: CustomerProfile, b: CustomerProfile
) -> tuple[CustomerProfile, CustomerProfile]:
    """Deterministic: the profile with a user account survives, else the older one (lower id)."""
    a_has_user, b_has_user = a.user_id is not None, b.user_id is not None
    if a_has_user != b_has_user:
        return (a, b) if a_has_user else (b, a)
    return (a, b) if a.pk < b.pk else (b, a)


def _holds_user_identity(profile_id: int) -> bool:
    return Identity.objects.filter(profile_id=profile_id, kind=IdentityKind.USER).exists()


@transaction.atomic
def merge_profiles(
    a: CustomerProfile, b: CustomerProfile, *, reason: str, event: Event | None = None
) -> CustomerProfile:
    """Move everything of one profile onto the other and delete it; return the survivor.

    Every model with a foreign key to CustomerProfile is moved generically, so models added by
    later parts of the app (messages, enrollments) follow without changes here. Models whose
    unique constraints could collide should resolve that in a ``profiles_merging`` receiver.
    Rows of models marked ``derived_from_events`` are dropped, not moved: the caller refreshes
    the survivor's aggregates (the fold does). Raises MergeRefused if both profiles hold a user
    account.
    """
    if a.pk == b.pk:
        return a
    survivor, merged = choose_survivor(a, b)
    if merged.user_id is not None or _holds_user_identity(merged.pk):
        raise MergeRefused(f"profiles {survivor.pk} and {merged.pk} hold different user accounts")
    profiles_merging.send(sender=CustomerProfile, survivor=survivor, merged=merged, reason=reason)

    moved: dict[str, int] = {}
    for relation in CustomerProfile._meta.related_objects:
        if not isinstance(relation, models.ManyToOneRel) or relation.one_to_one:
            continue
        field_name = relation.field.name
        manager = relation.related_model._base_manager
        if getattr(relation.related_model, "derived_from_events", False):
            manager.filter(**{field_name: merged.pk}).delete()  # recomputed for the survivor
            continue
        count = manager.filter(**{field_name: merged.pk}).update(**{field_name: survivor.pk})
        if count:
            moved[relation.related_model._meta.label_lower] = count

    for field in ("first_name", "last_name"):
        if not getattr(survivor, field) and getattr(merged, field):
            setattr(survivor, field, getattr(merged, field))
    survivor.created_at = min(survivor.created_at, merged.created_at)
    merged_id, merged_uuid = merged.pk, merged.uuid
    merged.delete()
    survivor.save(update_fields=["first_name", "last_name", "created_at"])
    ProfileMerge.objects.create(
        survivor=survivor,
        merged_profile_id=merged_id,
        merged_uuid=merged_uuid,
        reason=reason,
        event=event,
        moved=moved,
    )
    logger.info("merged profile %s into %s (%s)", merged_id, survivor.pk, reason)
    profiles_merged.send(
        sender=CustomerProfile,
        survivor=survivor,
        merged_id=merged_id,
        merged_uuid=merged_uuid,
        reason=reason,
    )
    return survivor
