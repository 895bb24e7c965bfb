"""Snapshots: a segment's members frozen at one moment, written in one INSERT ... SELECT."""

from __future__ import annotations

from datetime import datetime

from django.db import connection, transaction
from django.db.models import F

from .models import Segment, SegmentSnapshot, SegmentSnapshotMember


@transaction.atomic
def snapshot_segment(segment: Segment, *, now: datetime, note: str = "") -> SegmentSnapshot:
    """Freeze the members of ``segment`` as of ``now``; raises RuleError if its rules are bad.

    The members go in with one ``INSERT INTO ... SELECT`` built from the segment's queryset, so
    a million members never pass through Python.
    """
    members = segment.queryset(now=now).order_by().values(member=F("pk"))
    select_sql, params = members.query.sql_with_params()  # compile first: a RuleError stops here
    snapshot = SegmentSnapshot.objects.create(
        segment=segment, created_at=now, note=note[:255], rules=segment.rules
    )
    quote = connection.ops.quote_name
    table = quote(SegmentSnapshotMember._meta.db_table)
    snapshot_column = quote(SegmentSnapshotMember._meta.get_field("snapshot").column)
    profile_column = quote(SegmentSnapshotMember._meta.get_field("profile").column)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} ({snapshot_column}, {profile_column}) "  # noqa: S608
            f"SELECT %s, members.{quote('member')} FROM ({select_sql}) AS members",
            [snapshot.pk, *params],
        )
        size = max(cursor.rowcount, 0)
    snapshot.size = size
    snapshot.save(update_fields=["size"])
    return snapshot
