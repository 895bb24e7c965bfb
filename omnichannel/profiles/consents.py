"""Consent per channel and purpose: history is kept, the latest record wins."""

from __future__ import annotations

from datetime import datetime

from django.db.models import OuterRef, Subquery

from .models import Channel, Consent, ConsentSource, CustomerProfile, Purpose


def record_consent(
    profile: CustomerProfile,
    *,
    channel: str,
    purpose: str,
    granted: bool,
    now: datetime,
    source: str = ConsentSource.WEB,
    note: str = "",
) -> Consent:
    """Append a grant or withdrawal; raises ValueError for an unknown channel or purpose."""
    if channel not in Channel.values:
        raise ValueError(f"unknown channel {channel!r}; expected one of {Channel.values}")
    if purpose not in Purpose.values:
        raise ValueError(f"unknown purpose {purpose!r}; expected one of {Purpose.values}")
    if source not in ConsentSource.values:
        raise ValueError(f"unknown source {source!r}; expected one of {ConsentSource.values}")
    return Consent.objects.create(
        profile=profile,
        channel=channel,
        purpose=purpose,
        granted=granted,
        source=source,
        note=note[:255],
        created_at=now,
    )


def current_consents(profile: CustomerProfile) -> dict[tuple[str, str], Consent]:
    """The latest consent record per (channel, purpose) of a profile."""
    latest: dict[tuple[str, str], Consent] = {}
    for consent in profile.consents.order_by("-created_at", "-pk"):
        latest.setdefault((consent.channel, consent.purpose), consent)
    return latest


def has_consent(profile: CustomerProfile, *, channel: str, purpose: str) -> bool:
    """Whether the latest record for this channel and purpose is a grant."""
    consent = (
        profile.consents.filter(channel=channel, purpose=purpose)
        .order_by("-created_at", "-pk")
        .first()
    )
    return bool(consent and consent.granted)


def latest_consent_subquery(channel: str, purpose: str) -> Subquery:
    """``granted`` of the latest record, for annotating a CustomerProfile queryset (NULL: none)."""
    return Subquery(
        Consent.objects.filter(profile=OuterRef("pk"), channel=channel, purpose=purpose)
        .order_by("-created_at", "-pk")
        .values("granted")[:1]
    )
