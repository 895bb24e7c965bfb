"""Read-side helpers for the admin: live preview of unsaved rules, a profile's segments."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import IntegerField, Value

from ..profiles.models import CustomerProfile
from .models import Segment
from .rules import RuleError, compile_rules, compiling, validate_rules

logger = logging.getLogger("omnichannel.segments")

#: Segments asked about in one UNION ALL query (SQLite's limit is 500 terms).
UNION_CHUNK = 200


@dataclass
class Preview:
    """What the admin shows while rules are edited."""

    rules: dict[str, Any]
    count: int
    sample: list[CustomerProfile]


def preview_rules(
    data: object, *, now: datetime, sample_size: int = 10, segment_id: int | None = None
) -> Preview:
    """Validate ``data`` and evaluate it: the size and the first members by id.

    Raises RuleError (with the place of each problem) for invalid rules. Two queries over
    profiles: the count, and the sample.
    """
    rules = validate_rules(data, segment_id=segment_id)
    queryset = CustomerProfile.objects.filter(compile_rules(rules, now=now, segment_id=segment_id))
    count = queryset.count()
    sample = list(queryset.order_by("pk")[:sample_size]) if count else []
    return Preview(rules=rules, count=count, sample=sample)


def segments_of_profile(profile: CustomerProfile, *, now: datetime) -> list[Segment]:
    """The segments this profile is in: two queries, whatever the number of segments.

    One query reads the segments; one ``UNION ALL`` asks, segment by segment, whether this
    profile matches (each branch filters on the profile's id first, so the database looks at
    this profile's rows only). Segments whose rules no longer compile are left out (logged).
    """
    segments = list(Segment.objects.order_by("name"))
    branches = []
    with compiling():  # references to other segments read their rules once for all
        for segment in segments:
            try:
                q = compile_rules(segment.rules, now=now, segment_id=segment.pk)
            except RuleError as exc:
                logger.warning("segment %s has invalid rules: %s", segment.pk, exc.messages)
                continue
            branches.append(
                CustomerProfile.objects.filter(pk=profile.pk)
                .filter(q)
                .annotate(segment_id=Value(segment.pk, output_field=IntegerField()))
                .values_list("segment_id", flat=True)
            )
    found: set[int] = set()
    # SQLite allows 500 terms in a compound SELECT.
    for start in range(0, len(branches), UNION_CHUNK):
        first, *rest = branches[start : start + UNION_CHUNK]
        found.update(first.union(*rest, all=True) if rest else first)
    return [segment for segment in segments if segment.pk in found]
