"""Enrolling people in triggered campaigns: from folded events, from scans, in bulk.

Triggers say who should be enrolled (``EnrollmentSpec`` rows); this module decides who is, with
a fixed number of queries per batch whatever its size:

* only live campaigns enroll (``Campaign.is_live``);
* only members of the audience segment (everyone when it is empty), never members of the
  exclusion segment;
* one enrollment per (campaign, profile, subject): the unique constraint decides, rows are
  inserted with ``ON CONFLICT DO NOTHING``;
* ``Campaign.reenroll_after``: nobody is enrolled again within that long of their latest
  enrollment in the campaign, whatever its subject (repeatable triggers put a time bucket in
  the subject key, so that a later enrollment has a key of its own);
* a spec with ``restart=True`` for an existing active enrollment pushes its next step back
  (new basket activity restarts the abandoned-basket timer) instead of enrolling.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from django.db import connection, transaction
from django.db.models import (
    Case,
    CharField,
    DateTimeField,
    Exists,
    F,
    JSONField,
    OuterRef,
    Q,
    Value,
    When,
)
from django.db.models.functions import Cast, Coalesce, Greatest

from ..profiles.recording import savepoint_if_in_transaction
from .groups import is_held_out
from .models import (
    Campaign,
    CampaignKind,
    CampaignStatus,
    Enrollment,
    EnrollmentAction,
    EnrollmentLog,
    EnrollmentState,
)
from .triggers import EnrollmentSpec, registry

if TYPE_CHECKING:
    from django.db.models import QuerySet

    from ..profiles.models import Event
    from .triggers import Trigger

logger = logging.getLogger("omnichannel.campaigns")

#: Specs handled per round of queries: keeps ``IN (...)`` lists and CASE expressions short
#: (SQLite's parameter limit, PostgreSQL's planning time) while a scan yields millions.
CHUNK_SIZE = 500

#: ``Trigger.event_types`` value meaning "every event type" (the custom-event trigger).
ALL_EVENT_TYPES = "*"

T = TypeVar("T")


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of up to ``size`` items, lazily (a scan's generator is never held whole)."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def live_campaigns(*, now: datetime) -> QuerySet[Campaign]:
    """Active triggered campaigns inside their window at ``now`` (segments joined in)."""
    return (
        Campaign.objects.filter(status=CampaignStatus.ACTIVE, kind=CampaignKind.TRIGGERED)
        .filter(Q(starts_at__isnull=True) | Q(starts_at__lte=now))
        .filter(Q(ends_at__isnull=True) | Q(ends_at__gt=now))
        .select_related("audience", "exclusion")
    )


# --- enroll --------------------------------------------------------------------------------------


def enroll(campaign: Campaign, specs: Iterable[EnrollmentSpec], *, now: datetime) -> int:
    """Enroll what ``specs`` ask for in ``campaign``; return how many enrollments were created.

    Restarts of existing enrollments are not counted. Queries are per chunk of
    ``CHUNK_SIZE`` specs, never per spec: ``specs`` may be a generator over millions.
    """
    if not campaign.is_live(now):
        return 0
    created = 0
    for chunk in chunked(specs, CHUNK_SIZE):
        # One transaction per chunk: a long scan commits as it goes (and a later scan goes
        # on where a failed one stopped); inside a caller's transaction, a savepoint.
        with transaction.atomic():
            created += _enroll_chunk(campaign, _deduplicate(chunk), now=now)
    return created


def _deduplicate(specs: Sequence[EnrollmentSpec]) -> list[EnrollmentSpec]:
    """One spec per (profile, subject): the one with the latest activity (or due time)."""
    best: dict[tuple[int, str], EnrollmentSpec] = {}
    for spec in specs:
        key = (spec.profile_id, spec.subject_key)
        kept = best.get(key)
        if kept is None or _recency(spec) > _recency(kept):
            best[key] = spec
    return list(best.values())


def _recency(spec: EnrollmentSpec) -> datetime:
    return spec.activity_at or spec.due_at


def _enroll_chunk(campaign: Campaign, specs: list[EnrollmentSpec], *, now: datetime) -> int:
    profile_ids = {spec.profile_id for spec in specs}
    allowed = _allowed_profiles(campaign, profile_ids, now=now)
    specs = [spec for spec in specs if spec.profile_id in allowed]
    if not specs:
        return 0

    # One query: the rows these specs would collide with, and (with reenroll_after) every
    # recent enrollment of these people in this campaign.
    subjects = {spec.subject_key for spec in specs}
    collides = Q(subject_key__in=subjects)
    if campaign.reenroll_after is not None:
        collides |= Q(enrolled_at__gt=now - campaign.reenroll_after)
    existing: dict[tuple[int, str], dict[str, Any]] = {}
    recently_enrolled: set[int] = set()
    for row in (
        Enrollment.objects.filter(campaign=campaign, profile_id__in=allowed)
        .filter(collides)
        .values("pk", "profile_id", "subject_key", "state", "last_activity_at", "enrolled_at")
    ):
        existing[(row["profile_id"], row["subject_key"])] = row
        if campaign.reenroll_after is not None and row["enrolled_at"] > now - (
            campaign.reenroll_after
        ):
            recently_enrolled.add(row["profile_id"])

    new: list[EnrollmentSpec] = []
    restarts: list[tuple[int, EnrollmentSpec]] = []
    once_per_period = campaign.reenroll_after is not None and campaign.reenroll_after > timedelta(0)
    for spec in sorted(specs, key=lambda spec: spec.due_at):
        row = existing.get((spec.profile_id, spec.subject_key))
        if row is None:
            if spec.profile_id not in recently_enrolled:
                new.append(spec)
                if once_per_period:
                    recently_enrolled.add(spec.profile_id)  # one per person in this batch too
        elif spec.restart and row["state"] == EnrollmentState.ACTIVE and _is_newer(spec, row):
            restarts.append((row["pk"], spec))

    created = _insert(campaign, new, now=now) if new else 0
    if restarts:
        _restart(restarts, now=now)
    return created


def _allowed_profiles(campaign: Campaign, profile_ids: set[int], *, now: datetime) -> set[int]:
    """The profiles among ``profile_ids`` in the audience and not in the exclusion segment."""
    allowed = set(profile_ids)
    if campaign.audience_id is not None:
        allowed = set(
            campaign.audience.queryset(now=now).filter(pk__in=allowed).values_list("pk", flat=True)
        )
    if campaign.exclusion_id is not None and allowed:
        allowed -= set(
            campaign.exclusion.queryset(now=now).filter(pk__in=allowed).values_list("pk", flat=True)
        )
    return allowed


def _is_newer(spec: EnrollmentSpec, row: dict[str, Any]) -> bool:
    """Whether a restart spec brings activity the enrollment has not seen yet.

    Events can reach the fold late (an app offline for a while): older activity than the
    enrollment's clock restarts nothing.
    """
    stored = row["last_activity_at"]
    return spec.activity_at is None or stored is None or spec.activity_at > stored


def _insert(campaign: Campaign, specs: list[EnrollmentSpec], *, now: datetime) -> int:
    # The holdout is decided here, for everyone enrolled, not when the first step comes due:
    # people who buy before that must count in their own arm, or the holdout would keep only
    # those who did not buy early and the uplift would look better than it is.
    holding_out = campaign.holds_out
    Enrollment.objects.bulk_create(
        [
            Enrollment(
                campaign=campaign,
                profile_id=spec.profile_id,
                subject_key=spec.subject_key,
                context=spec.context,
                state=EnrollmentState.ACTIVE,
                step_position=0,
                next_due_at=spec.due_at,
                enrolled_at=now,
                last_activity_at=spec.activity_at,
                holdout=holding_out and is_held_out(spec.profile_id, campaign),
            )
            for spec in specs
        ],
        ignore_conflicts=True,
    )
    return _log_enrolled(campaign, {spec.profile_id for spec in specs}, now=now)


def _log_enrolled(campaign: Campaign, profile_ids: set[int], *, now: datetime) -> int:
    """Write the "enrolled" history of the rows just inserted; return how many there are.

    ``ignore_conflicts`` returns no primary keys (SQLite, and PostgreSQL with ON CONFLICT DO
    NOTHING), so the rows are found again: this campaign's, of these people, enrolled at this
    ``now`` and without an "enrolled" entry yet (rows that existed before carry an earlier
    time and their entry). One INSERT ... SELECT: nothing travels through Python, which
    matters when a scan enrolls a million people.
    """
    fresh = (
        Enrollment.objects.filter(campaign=campaign, profile_id__in=profile_ids, enrolled_at=now)
        .filter(
            ~Exists(
                EnrollmentLog.objects.filter(
                    enrollment_id=OuterRef("pk"), action=EnrollmentAction.ENROLLED
                )
            )
        )
        .annotate(
            log_at=Value(now, DateTimeField()),
            log_action=Value(str(EnrollmentAction.ENROLLED), CharField()),
            log_channel=Value("", CharField()),
            log_detail=Value(f"by trigger {campaign.trigger}", CharField()),
        )
        .order_by()
        .values_list("pk", "log_at", "log_action", "log_channel", "log_detail")
    )
    select, params = fresh.query.sql_with_params()
    meta = EnrollmentLog._meta
    columns = ", ".join(
        connection.ops.quote_name(meta.get_field(name).column)
        for name in ("enrollment", "at", "action", "channel", "detail")
    )
    table = connection.ops.quote_name(meta.db_table)
    with connection.cursor() as cursor:
        # Table and column names come from the model; every value is a parameter.
        cursor.execute(f"INSERT INTO {table} ({columns}) {select}", params)
        return max(cursor.rowcount, 0)


def _restart(restarts: list[tuple[int, EnrollmentSpec]], *, now: datetime) -> None:
    """Push the next step of active enrollments back to at least their spec's ``due_at``.

    One UPDATE computes the new time in the database, GREATEST(next_due_at, due), so that a
    step the engine scheduled meanwhile (later than ours) is never brought forward. With no
    step done yet that is the restarted timer; with steps done the next one waits for the new
    activity to cool down too.
    """
    whens_due = [When(pk=pk, then=Value(spec.due_at)) for pk, spec in restarts]
    due = Case(*whens_due, output_field=DateTimeField())
    activity = Case(
        *[When(pk=pk, then=Value(spec.activity_at or spec.due_at)) for pk, spec in restarts],
        output_field=DateTimeField(),
    )
    context: Any = Case(
        *[When(pk=pk, then=Value(spec.context, JSONField())) for pk, spec in restarts],
        output_field=JSONField(),
    )
    if connection.features.requires_casted_case_in_updates:
        context = Cast(context, output_field=JSONField())
    pks = [pk for pk, _spec in restarts]
    Enrollment.objects.filter(pk__in=pks, state=EnrollmentState.ACTIVE).update(
        next_due_at=Greatest(Coalesce(F("next_due_at"), due), due),
        last_activity_at=activity,
        context=context,
    )
    EnrollmentLog.objects.bulk_create(
        [
            EnrollmentLog(
                enrollment_id=pk,
                at=now,
                action=EnrollmentAction.RESTARTED,
                detail=f"new activity at {_when(spec.activity_at)}: "
                f"next step not before {_when(spec.due_at)}",
            )
            for pk, spec in restarts
        ]
    )


def _when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC" if moment is not None else "-"


# --- from folded events --------------------------------------------------------------------------


def _wants(trigger: Trigger, event_types: set[str]) -> bool:
    return ALL_EVENT_TYPES in trigger.event_types or bool(event_types & set(trigger.event_types))


def enroll_from_events(events: Sequence[Event], *, now: datetime) -> int:
    """Enroll what a batch of folded events triggers in every live campaign; return the count.

    One query finds the campaigns whose trigger wants any of the batch's event types (none
    when no registered trigger does); each campaign then costs its trigger's queries plus
    ``enroll``'s. A failing campaign is logged and skipped: the others still enroll.
    """
    events = [event for event in events if event.profile_id is not None]
    if not events:
        return 0
    event_types = {event.type for event in events}
    keys = [key for key in registry if _wants(registry[key], event_types)]
    if not keys:
        return 0
    created = 0
    for campaign in live_campaigns(now=now).filter(trigger__in=keys):
        trigger = registry[campaign.trigger]
        wanted = set(trigger.event_types)
        matching = [event for event in events if ALL_EVENT_TYPES in wanted or event.type in wanted]
        try:
            with transaction.atomic():
                specs = trigger.enrollments_for_events(campaign, matching, now=now)
                created += enroll(campaign, specs, now=now)
        except Exception:  # deliberate: one broken campaign must not stop the others
            logger.exception("campaign %s (%s): enrolling from events failed", campaign.pk, trigger)
    return created


# --- scans ---------------------------------------------------------------------------------------


def scan_triggers(*, now: datetime) -> int:
    """Scan the live campaigns whose trigger scans and whose last scan is old enough.

    One query when nothing is due (none when no registered trigger scans): the tick calls this
    every time. Each scanned campaign gets ``last_scanned_at = now`` even when its scan fails,
    so a broken one is retried after its interval, not on every tick. Returns how many
    enrollments were created.
    """
    intervals = {key: registry[key].scan_interval for key in registry if registry[key].scans}
    if not intervals:
        return 0
    shortest = timedelta(seconds=min(intervals.values()))
    campaigns = (
        live_campaigns(now=now)
        .filter(trigger__in=list(intervals))
        .filter(Q(last_scanned_at__isnull=True) | Q(last_scanned_at__lte=now - shortest))
    )
    created = 0
    for campaign in campaigns:
        interval = timedelta(seconds=intervals[campaign.trigger])
        if campaign.last_scanned_at is not None and campaign.last_scanned_at > now - interval:
            continue
        trigger = registry[campaign.trigger]
        try:
            # No transaction around the whole scan (enroll commits chunk by chunk), but a
            # savepoint inside a caller's: a failed query must not abort theirs.
            with savepoint_if_in_transaction():
                created += enroll(campaign, trigger.scan(campaign, now=now), now=now)
        except Exception:  # deliberate: one broken campaign must not stop the others
            logger.exception("campaign %s (%s): trigger scan failed", campaign.pk, trigger)
        Campaign.objects.filter(pk=campaign.pk).update(last_scanned_at=now)
    return created
