"""Mass campaigns: enroll a whole audience set-based, and create first messages the same way.

A mass campaign is due when it is active, inside its window, not launched yet, and its
``send_at`` is empty or past. ``fan_out`` then enrolls every audience member (minus the
exclusion segment) with ``INSERT ... SELECT`` over the segment's own SQL, in chunks of
``MASS_FANOUT_CHUNK`` profile ids, one transaction per chunk. The unique constraint on
(campaign, profile, subject "") makes a re-run (after a crash, a redelivered task) add only
what is missing.

Each person's send time is the fan-out's ``now``, or with ``send_at_best_hour`` the next start
of their best hour (``EngagementScore.best_hour``, shop time; ``DEFAULT_SEND_HOUR`` when
unknown) within 24 hours: the 25 possible times are computed in Python and picked in SQL by a
CASE on the hour, so a chunk stays one statement.

The engine's tick advances enrollments in Python (a thousand or two per second). For a million
people that is too slow, so when the first step has a fixed channel whose backend can say in
SQL who it reaches (``BaseChannel.reachable_queryset``: email, SMS, Telegram), the first step's
messages are created set-based too, unrendered (``needs_render``; the delivery workers render
them), for the people the SQL rules are sure about: an address, consent, no suppression, under
the frequency caps, and a send time outside their quiet hours. Their enrollments move to step
1 in the same transaction. Everyone else stays at step 0, due at their send time, and the
engine decides for them one by one (another channel of the cascade, a deferral, a skip).

Measurement (``campaigns.groups``): people in the campaign's holdout are enrolled already
exited (``holdout``, exit reason ``held_out``) and get no message; everyone else's first
message records the first step's variant, picked in SQL by ``bucket_expression`` against the
cumulative weights (what ``pick_variant`` picks in Python). A variant with a channel of its own
leaves its people to the engine, which sends on that channel.

Celery: ``launch_due_mass_campaigns(now)`` (called by the tick; one query when nothing is due)
claims each due campaign with a lease and starts a chain of ``omnichannel.campaigns.fan_out``
tasks, one per chunk; the last one sets ``launched_at``. A chain that dies is restarted from the
beginning once its lease expires (harmless: every chunk is idempotent).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.db import connection, transaction
from django.db.models import (
    BooleanField,
    Case,
    Count,
    DateTimeField,
    Exists,
    F,
    IntegerField,
    Max,
    Min,
    Model,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Coalesce
from django.db.models.lookups import LessThan

from ..channels.base import REACH_ADDRESS, BaseChannel
from ..channels.models import Message, MessageStatus, MessageStatusChange
from ..channels.registry import get_channels
from ..conf import app_settings
from ..exceptions import ConfigurationError
from ..profiles.models import CustomerProfile, Purpose
from .engine import NOT_A_CONTACT, insert_select_head, next_hour, quiet_hours_end, shop_zone
from .groups import BUCKETS, HOLDOUT_SALT, bucket_expression, variant_expression
from .models import (
    BEST_CHANNEL,
    Campaign,
    CampaignKind,
    CampaignStatus,
    Enrollment,
    EnrollmentAction,
    EnrollmentLog,
    EnrollmentState,
    ExitReason,
    Step,
    Variant,
)

logger = logging.getLogger("omnichannel.campaigns")

#: The "best hour" of people without one (no EngagementScore row, or no hour in it).
UNKNOWN_HOUR = -1
#: Marks the rows a fan-out writes in EnrollmentLog.detail.
FAN_OUT_DETAIL = "mass send fan-out"
#: EnrollmentLog.detail of a held-out person's exit.
HELD_OUT_DETAIL = f"in the holdout group: no message ({FAN_OUT_DETAIL})"
DAY = timedelta(days=1)
WEEK = timedelta(days=7)


# --- which campaigns ---------------------------------------------------------------------------


def due_campaigns(*, now: datetime) -> QuerySet[Campaign]:
    """Mass campaigns to fan out at ``now``: active, in their window, not launched, send time
    reached, with an audience."""
    return (
        Campaign.objects.filter(
            kind=CampaignKind.MASS,
            status=CampaignStatus.ACTIVE,
            launched_at__isnull=True,
            audience__isnull=False,
        )
        .filter(Q(send_at__isnull=True) | Q(send_at__lte=now))
        .filter(Q(starts_at__isnull=True) | Q(starts_at__lte=now))
        .filter(Q(ends_at__isnull=True) | Q(ends_at__gt=now))
    )


def is_due(campaign: Campaign, *, now: datetime) -> bool:
    return (
        campaign.kind == CampaignKind.MASS
        and campaign.launched_at is None
        and campaign.audience_id is not None
        and (campaign.send_at is None or campaign.send_at <= now)
        and campaign.is_live(now)
    )


# --- the plan: what every chunk of one fan-out shares ------------------------------------------


@dataclass
class FanOutPlan:
    """Send times per best-hour bucket and the first step's set-based path, if any."""

    campaign: Campaign
    now: datetime
    #: Enrollment.next_due_at per bucket (an hour 0-23, or UNKNOWN_HOUR).
    due_times: dict[int, datetime]
    steps: list[Step] = field(default_factory=list)
    #: The first step's channel when its messages are created set-based; None: the engine's.
    backend: BaseChannel | None = None
    #: When each bucket's first message goes (the step's wait and best hour applied).
    message_times: dict[int, datetime] = field(default_factory=dict)
    why_not_direct: str = ""
    #: Also write the history rows the engine writes (EnrollmentLog "enrolled", "sent",
    #: "completed"; the message's "queued" status change). Off by default: they say what the
    #: enrollment and message rows say already, and cost a third of a fan-out's time.
    history: bool = False
    #: The first step's variants (by id, as ``pick_variant`` orders them); empty: none.
    variants: list[Variant] = field(default_factory=list)

    @property
    def direct(self) -> bool:
        return self.backend is not None

    @property
    def first_step(self) -> Step:
        return self.steps[0]

    @property
    def holdout_below(self) -> int:
        """People whose holdout bucket is below this are held out (0: no holdout)."""
        if not self.campaign.holds_out:
            return 0
        return self.campaign.holdout_percent * (BUCKETS // 100)

    @property
    def direct_variants(self) -> list[Variant]:
        """The first step's variants sent on the step's own channel (set-based)."""
        own = ("", self.first_step.channel)
        return [variant for variant in self.variants if variant.channel in own]

    @property
    def next_wait(self) -> timedelta | None:
        """The second step's wait; None when the first step is the last."""
        return self.steps[1].wait if len(self.steps) > 1 else None


def _buckets() -> list[int]:
    return [UNKNOWN_HOUR, *range(24)]


def _hour_of(bucket: int) -> int:
    return int(app_settings.DEFAULT_SEND_HOUR) if bucket == UNKNOWN_HOUR else bucket


def plan_fan_out(
    campaign: Campaign, *, now: datetime, direct_messages: bool = True, history: bool = False
) -> FanOutPlan:
    """Work out send times and whether the first step can be created set-based."""
    zone = shop_zone()
    if campaign.send_at_best_hour:
        due_times = {b: next_hour(now, _hour_of(b), zone) for b in _buckets()}
    else:
        due_times = dict.fromkeys(_buckets(), now)
    plan = FanOutPlan(campaign=campaign, now=now, due_times=due_times, history=history)
    plan.steps = list(campaign.steps.order_by("position", "id"))
    if plan.steps:
        plan.variants = list(plan.first_step.variants.order_by("pk"))
    plan.why_not_direct = _why_not_direct(plan, direct_messages)
    if plan.why_not_direct:
        return plan
    step = plan.first_step
    for bucket, due in due_times.items():
        # As the engine would: the first step's own wait after the due time, then its best hour.
        at = due + step.wait
        send_at = next_hour(at, _hour_of(bucket), zone) if step.best_hour else at
        # Only messages that go now are made here: one made now for a later hour would go even
        # if the person orders, leaves the segment or the campaign is paused meanwhile. The
        # engine makes those when they are due, after checking all that.
        if send_at <= now:
            plan.message_times[bucket] = send_at
    if not plan.message_times:
        plan.why_not_direct = "every first message goes later: the engine makes each when due"
        return plan
    plan.backend = get_channels()[step.channel]
    return plan


def _why_not_direct(plan: FanOutPlan, wanted: bool) -> str:
    """Why the first step's messages are left to the engine; '' when they are not."""
    campaign = plan.campaign
    if not wanted:
        return "set-based messages not asked for"
    if connection.vendor not in ("postgresql", "sqlite"):
        return f"no SQL uuid generator for {connection.vendor}"
    if not plan.steps:
        return "the campaign has no steps"
    step = plan.steps[0]
    if step.channel == BEST_CHANNEL:
        return "the first step picks the best channel per person"
    try:
        channels = get_channels()
    except ConfigurationError as exc:
        return f"channels misconfigured: {exc}"
    backend = channels.get(step.channel)
    if backend is None:
        return f"channel {step.channel!r} is not configured"
    if backend.reachable_queryset(CustomerProfile.objects.none(), campaign.purpose) is None:
        return f"channel {step.channel!r} has no SQL reachability"
    if campaign.purpose == Purpose.MARKETING and 0 in (campaign.cap_per_day, campaign.cap_per_week):
        return "the campaign's own cap is 0"
    if plan.variants and not plan.direct_variants:
        return "every variant of the first step has a channel of its own"
    return ""


# --- fan-out -----------------------------------------------------------------------------------


def profile_id_range() -> tuple[int, int] | None:
    """(first, last) profile id, or None without profiles."""
    bounds = CustomerProfile.objects.aggregate(first=Min("pk"), last=Max("pk"))
    if bounds["first"] is None:
        return None
    return int(bounds["first"]), int(bounds["last"])


def chunk_size() -> int:
    return max(int(app_settings.MASS_FANOUT_CHUNK), 1)


def fan_out(
    campaign: Campaign, *, now: datetime, direct_messages: bool = True, history: bool = False
) -> int:
    """Enroll a due mass campaign's audience set-based, chunk by chunk; returns how many
    enrollments were created (0 when the campaign is not due).

    With ``direct_messages`` (the default), the first step's messages are created set-based too
    when its channel allows it (see the module's docstring); with ``history``, the EnrollmentLog
    and status-history rows the engine would write as well. Sets ``launched_at`` at the end;
    safe to run again after a crash.
    """
    if not is_due(campaign, now=now):
        return 0
    plan = plan_fan_out(campaign, now=now, direct_messages=direct_messages, history=history)
    created = 0
    bounds = profile_id_range()
    if bounds is not None:
        size = chunk_size()
        for after in range(bounds[0] - 1, bounds[1], size):
            created += fan_out_chunk(plan, after=after, upto=after + size)
    finish_fan_out(campaign, now=now)
    logger.info("mass campaign %s fanned out: %d enrollments", campaign.pk, created)
    return created


def finish_fan_out(campaign: Campaign, *, now: datetime) -> None:
    Campaign.objects.filter(pk=campaign.pk, launched_at__isnull=True).update(launched_at=now)
    campaign.launched_at = now


def fan_out_chunk(plan: FanOutPlan, *, after: int, upto: int) -> int:
    """Enroll the audience members with ``after < id <= upto`` and, on the set-based path,
    create their first messages; one transaction. Returns the enrollments created."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                # The statement's estimated cost triggers PostgreSQL's JIT, whose compiling
                # (about 0.6 s) outweighs what it saves on a chunk: a sixth of the chunk's time.
                cursor.execute("SET LOCAL jit = off")
        if single_statement():
            return _fan_out_chunk_in_one_statement(plan, after=after, upto=upto)
        created = _insert_enrollments(plan, after=after, upto=upto)
        if plan.direct and _insert_messages(plan, after=after, upto=upto):
            _advance_enrollments(plan, after=after, upto=upto)
        if plan.history:
            _insert_history(plan, after=after, upto=upto)
    return created


def single_statement() -> bool:
    """PostgreSQL does a chunk in one statement (data-modifying CTEs); elsewhere a few."""
    return connection.vendor == "postgresql"


# --- the statements ----------------------------------------------------------------------------


def _sql(queryset: QuerySet[Any]) -> tuple[str, list[Any]]:
    sql, params = queryset.query.get_compiler(using=queryset.db).as_sql()
    return sql, list(params)


def _datetime(value: datetime) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


def _prepared(model: type[Model], name: str, value: Any) -> Any:
    return model._meta.get_field(name).get_db_prep_save(value, connection)


def _hour_case(column: str, times: dict[int, datetime]) -> tuple[str, list[Any]]:
    """``CASE <column> WHEN <hour> THEN <time> ... END``, folding buckets of equal time."""
    distinct = set(times.values())
    if len(distinct) == 1:
        return "%s", [_datetime(distinct.pop())]
    whens, params = [], []
    for bucket in _buckets():
        if times[bucket] == times[UNKNOWN_HOUR] and bucket != UNKNOWN_HOUR:
            continue
        whens.append(f"WHEN {int(bucket)} THEN %s")
        params.append(_datetime(times[bucket]))
    # Hours without a WHEN of their own fall to the unknown hour's time (the default hour).
    return (
        f"CASE {column} {' '.join(whens)} ELSE %s END",
        [*params, _datetime(times[UNKNOWN_HOUR])],
    )


def _bucket_expression(plan: FanOutPlan) -> Case | Value:
    """The person's best hour (0-23), or UNKNOWN_HOUR; a constant when no time depends on it
    (no join to the scores then)."""
    times = {*plan.due_times.values(), *plan.message_times.values()}
    if len(times) == 1:
        return Value(UNKNOWN_HOUR, output_field=IntegerField())
    hour = F("engagement_score__best_hour")
    return Case(
        When(Q(engagement_score__best_hour__gte=0, engagement_score__best_hour__lte=23), then=hour),
        default=Value(UNKNOWN_HOUR),
        output_field=IntegerField(),
    )


def _held_out_expression(plan: FanOutPlan) -> Case | Value:
    """Whether the profile row is in the campaign's holdout (``groups.is_held_out`` in SQL)."""
    if plan.holdout_below <= 0:
        return Value(False, output_field=BooleanField())
    held = LessThan(
        bucket_expression(plan.campaign.pk, HOLDOUT_SALT, profile_field="pk"), plan.holdout_below
    )
    return Case(When(held, then=Value(True)), default=Value(False), output_field=BooleanField())


def _insert_select(
    model: type[Model], given: dict[str, tuple[str, list[Any]]], source: str, params: list[Any]
) -> int:
    """``INSERT INTO <model> (...) SELECT ... <source> ON CONFLICT DO NOTHING``; the rows added."""
    insert, values = insert_select_head(model, given)
    with connection.cursor() as cursor:
        cursor.execute(f"{insert} {source} ON CONFLICT DO NOTHING", [*values, *params])
        return max(cursor.rowcount, 0)


def _const(value: Any) -> tuple[str, list[Any]]:
    return "%s", [value]


def _audience(plan: FanOutPlan, *, after: int, upto: int) -> QuerySet[CustomerProfile]:
    campaign = plan.campaign
    audience = campaign.audience.queryset(now=plan.now).filter(pk__gt=after, pk__lte=upto)
    if campaign.exclusion_id:
        excluded = campaign.exclusion.queryset(now=plan.now).filter(pk=OuterRef("pk"))
        audience = audience.filter(~Exists(excluded))
    return audience


def _audience_rows(plan: FanOutPlan, *, after: int, upto: int) -> QuerySet[Any]:
    """Rows of ``a``: (fo_id, fo_hour, fo_held) of the chunk's audience members."""
    return (
        _audience(plan, after=after, upto=upto)
        .annotate(
            fo_id=F("pk"), fo_hour=_bucket_expression(plan), fo_held=_held_out_expression(plan)
        )
        .values("fo_id", "fo_hour", "fo_held")
    )


def _insert_enrollments(plan: FanOutPlan, *, after: int, upto: int) -> int:
    source_sql, source_params = _sql(_audience_rows(plan, after=after, upto=upto))
    return _insert_select(
        Enrollment,
        _enrollment_fields(plan, due=_hour_case("a.fo_hour", plan.due_times)),
        # "WHERE 1 = 1" keeps SQLite from reading ON CONFLICT as part of a join.
        f"FROM ({source_sql}) a WHERE 1 = 1",
        source_params,
    )


def _uuid_sql() -> str:
    if connection.vendor == "postgresql":
        return "gen_random_uuid()"
    # SQLite: Django stores UUIDs as 32 hex digits; a version 4 UUID from random bits.
    return (
        "lower(hex(randomblob(4)) || hex(randomblob(2)) || '4' || substr(hex(randomblob(2)), 2)"
        " || substr('89ab', 1 + (abs(random()) %% 4), 1) || substr(hex(randomblob(2)), 2)"
        " || hex(randomblob(6)))"
    )


def _held_back(plan: FanOutPlan) -> list[Exists]:
    """Conditions on a profile row under which the frequency caps may hold its message back
    (those people are left to the engine).

    Deliberately generous: a contact counts if any of its messages is in the window (the engine
    counts from its first), and anyone with a higher-priority marketing enrollment due within a
    day and not messaged yet is left to the engine, which keeps a slot for it. Correlated per
    profile (an index probe each) rather than ``NOT IN`` a set: when many people have recent
    messages that set outgrows work_mem and PostgreSQL falls back to rescanning it per row.
    """
    campaign = plan.campaign
    if campaign.purpose != Purpose.MARKETING:
        return []
    caps = app_settings.FREQUENCY_CAPS or {}
    limits = [(DAY, caps.get("day")), (WEEK, caps.get("week"))]
    limits = [(window, int(cap)) for window, cap in limits if cap is not None]
    held: list[Exists] = []
    if limits:
        longest = max(window for window, _cap in limits)
        recent = Message.objects.filter(
            profile=OuterRef("pk"),
            purpose=Purpose.MARKETING,
            created_at__gt=plan.now - longest,
        ).exclude(status__in=NOT_A_CONTACT)
        counts: dict[str, Any] = {}
        reached = Q()
        for index, (window, cap) in enumerate(limits):
            since = Q(created_at__gt=plan.now - window)
            counts[f"fo_{index}"] = Count("enrollment_id", distinct=True, filter=since) + Count(
                "pk", filter=since & Q(enrollment__isnull=True)
            )
            reached |= Q(**{f"fo_{index}__gte": cap})
        held.append(Exists(recent.values("profile_id").annotate(**counts).filter(reached)))
    held.append(
        Exists(
            Enrollment.objects.filter(
                profile=OuterRef("pk"),
                state=EnrollmentState.ACTIVE,
                next_due_at__lte=plan.now + DAY,
                campaign__status=CampaignStatus.ACTIVE,
                campaign__purpose=Purpose.MARKETING,
                campaign__priority__gt=campaign.priority,
                last_message_at__isnull=True,
            )
        )
    )
    return held


def _quiet_condition(plan: FanOutPlan, *, after: int, upto: int) -> Q | None:
    """People whose message time falls in their quiet hours (left to the engine), by time zone
    and best-hour bucket, worked out in Python for each time zone in the chunk."""
    campaign = plan.campaign
    if not (campaign.quiet_hours and campaign.purpose == Purpose.MARKETING):
        return None
    if not app_settings.QUIET_HOURS:
        return None
    zones = (
        CustomerProfile.objects.filter(pk__gt=after, pk__lte=upto)
        .values_list("time_zone", flat=True)
        .distinct()
    )
    by_buckets: dict[tuple[int, ...], list[str]] = defaultdict(list)
    for name in zones:
        try:
            zone = ZoneInfo(name) if name else shop_zone()
        except (ZoneInfoNotFoundError, ValueError):
            zone = shop_zone()  # what the engine does with a name it does not know
        quiet = tuple(
            bucket
            for bucket, at in sorted(plan.message_times.items())
            if quiet_hours_end(at, zone) is not None
        )
        if quiet:
            by_buckets[quiet].append(name)
    if not by_buckets:
        return None
    condition = Q()
    for buckets, names in by_buckets.items():
        if len(buckets) == len(plan.message_times):
            condition |= Q(time_zone__in=names)
        else:
            condition |= Q(time_zone__in=names, fo_hour__in=buckets)
    return condition


def _reachable(
    plan: FanOutPlan, *, after: int, upto: int, candidates: bool = False
) -> QuerySet[Any] | None:
    """The chunk's people the first step's channel reaches by SQL rules, under the caps and
    outside quiet hours: rows of (fo_id, fo_hour, reach_address, fo_language), and
    fo_variant when the first step has variants (only people whose variant goes on the step's
    channel are here; the others are left to the engine).

    With ``candidates``, the checks on the address itself (present, not suppressed) are left
    to the caller, to apply to the stored column (``BaseChannel.address_allowed_sql``).
    """
    if plan.backend is None:
        return None
    profiles = CustomerProfile.objects.filter(pk__gt=after, pk__lte=upto)
    rules = plan.backend.reach_candidates if candidates else plan.backend.reachable_queryset
    reachable = rules(profiles, plan.campaign.purpose)
    if reachable is None:
        return None
    reachable = reachable.annotate(fo_id=F("pk"), fo_hour=_bucket_expression(plan))
    columns = ["fo_id", "fo_hour", REACH_ADDRESS, "fo_language"]
    if plan.variants:
        reachable = reachable.annotate(
            fo_variant=variant_expression(plan.campaign.pk, plan.variants, profile_field="pk")
        )
        columns.append("fo_variant")
        if len(plan.direct_variants) < len(plan.variants):
            reachable = reachable.filter(fo_variant__in=[v.pk for v in plan.direct_variants])
    for held in _held_back(plan):
        reachable = reachable.filter(~held)
    if len(plan.message_times) < len(plan.due_times):  # the others go later, by the engine
        reachable = reachable.filter(fo_hour__in=sorted(plan.message_times))
    quiet = _quiet_condition(plan, after=after, upto=upto)
    if quiet is not None:
        reachable = reachable.exclude(quiet)
    return reachable.annotate(
        fo_language=Case(
            When(language="", then=Value(settings.LANGUAGE_CODE)),
            default=F("language"),
        )
    ).values(*columns)


def _insert_messages(plan: FanOutPlan, *, after: int, upto: int) -> int:
    """The first step's messages for this fan-out's new step-0 enrollments the SQL rules
    reach; returns how many were created."""
    campaign, backend = plan.campaign, plan.backend
    reachable = _reachable(plan, after=after, upto=upto)
    if reachable is None or backend is None:
        return 0
    source_sql, source_params = _sql(reachable)
    now = _datetime(plan.now)
    enrollment = connection.ops.quote_name(Enrollment._meta.db_table)
    return _insert_select(
        Message,
        _message_fields(plan, send_at=_hour_case("r.fo_hour", plan.message_times)),
        f"FROM {enrollment} en JOIN ({source_sql}) r ON r.fo_id = en.profile_id "
        "WHERE en.campaign_id = %s AND en.subject_key = '' AND en.state = %s "
        "AND en.step_position = 0 AND en.enrolled_at = %s "
        "AND en.profile_id > %s AND en.profile_id <= %s",
        [
            *source_params,
            campaign.pk,
            EnrollmentState.ACTIVE.value,
            now,
            after,
            upto,
        ],
    )


def _message_fields(
    plan: FanOutPlan, *, send_at: tuple[str, list[Any]]
) -> dict[str, tuple[str, list[Any]]]:
    """The first step's message for a row of ``r`` (the reachable person) and ``en`` (their
    enrollment): unrendered, queued for ``send_at``."""
    campaign, step, backend = plan.campaign, plan.first_step, plan.backend
    if backend is None:
        raise ValueError("the plan has no set-based first step")
    now = _datetime(plan.now)
    return {
        "uuid": (_uuid_sql(), []),
        "profile": ("r.fo_id", []),
        "channel": _const(backend.name),
        "purpose": _const(campaign.purpose),
        "address": (f"r.{REACH_ADDRESS}", []),
        "template": _const(step.template),
        "language": ("r.fo_language", []),
        "tags": _const(_prepared(Message, "tags", [f"campaign:{campaign.pk}"])),
        "units": _const(1),
        "cost": _const(_prepared(Message, "cost", backend.cost)),
        "currency": _const(backend.currency),
        "dedupe_key": ("NULL", []),
        "campaign": _const(campaign.pk),
        "enrollment": ("en.id", []),
        "step": _const(step.pk),
        # (A bare NULL would be text in PostgreSQL's CTEs.)
        "variant": ("r.fo_variant", []) if plan.variants else ("NULL", []),
        "needs_render": _const(True),
        "status": _const(MessageStatus.QUEUED.value),
        "status_changed_at": _const(now),
        "next_attempt_at": send_at,
        "created_at": _const(now),
        "queued_at": _const(now),
    }


def _advance_enrollments(plan: FanOutPlan, *, after: int, upto: int) -> int:
    """Move the enrollments whose first message was just created to step 1, as the engine
    does after a send (or complete them when there is no second step)."""
    first_message = Message.objects.filter(enrollment=OuterRef("pk"), step=plan.first_step)
    sent_at = Subquery(first_message.values("next_attempt_at")[:1], output_field=DateTimeField())
    enrollments = Enrollment.objects.filter(
        campaign=plan.campaign,
        subject_key="",
        state=EnrollmentState.ACTIVE,
        step_position=0,
        enrolled_at=plan.now,
        profile_id__gt=after,
        profile_id__lte=upto,
    ).filter(Exists(first_message))
    position = plan.first_step.position
    if plan.next_wait is None:
        return enrollments.update(
            step_position=position,
            last_message_at=sent_at,
            state=EnrollmentState.COMPLETED,
            exit_reason=ExitReason.COMPLETED,
            ended_at=plan.now,
            next_due_at=None,
        )
    return enrollments.update(
        step_position=position,
        last_message_at=sent_at,
        next_due_at=Coalesce(sent_at, Value(plan.now)) + Value(plan.next_wait),
    )


def _insert_history(plan: FanOutPlan, *, after: int, upto: int) -> None:
    """What the engine would have written: an "enrolled" entry per new enrollment, and for
    each new message a "queued" status and a "sent" entry (and "completed" after the last
    step). Guarded by NOT EXISTS, so a re-run adds nothing twice."""
    campaign, now = plan.campaign, _datetime(plan.now)
    log = connection.ops.quote_name(EnrollmentLog._meta.db_table)
    enrollment = connection.ops.quote_name(Enrollment._meta.db_table)
    message = connection.ops.quote_name(Message._meta.db_table)
    history = connection.ops.quote_name(MessageStatusChange._meta.db_table)
    at = _const(now)
    _insert_select(
        EnrollmentLog,
        {
            "enrollment": ("en.id", []),
            "at": at,
            "action": _const(EnrollmentAction.ENROLLED.value),
            "step": ("NULL", []),
            "channel": _const(""),
            "message": ("NULL", []),
            "detail": _const(FAN_OUT_DETAIL),
        },
        # Quoted table names; every value is a parameter.
        f"FROM {enrollment} en WHERE en.campaign_id = %s AND en.subject_key = '' "  # noqa: S608
        "AND en.enrolled_at = %s AND en.profile_id > %s AND en.profile_id <= %s "
        f"AND NOT EXISTS (SELECT 1 FROM {log} l WHERE l.enrollment_id = en.id AND l.action = %s)",
        [campaign.pk, now, after, upto, EnrollmentAction.ENROLLED.value],
    )
    if plan.holdout_below > 0:
        _insert_select(
            EnrollmentLog,
            {
                "enrollment": ("en.id", []),
                "at": at,
                "action": _const(EnrollmentAction.EXITED.value),
                "step": ("NULL", []),
                "channel": _const(""),
                "message": ("NULL", []),
                "detail": _const(HELD_OUT_DETAIL),
            },
            f"FROM {enrollment} en WHERE en.campaign_id = %s AND en.subject_key = '' "  # noqa: S608
            "AND en.enrolled_at = %s AND en.holdout AND en.profile_id > %s "
            f"AND en.profile_id <= %s AND NOT EXISTS (SELECT 1 FROM {log} l "
            "WHERE l.enrollment_id = en.id AND l.action = %s)",
            [campaign.pk, now, after, upto, EnrollmentAction.EXITED.value],
        )
    if not plan.direct:
        return
    new_messages = (
        f"FROM {message} m WHERE m.profile_id > %s AND m.profile_id <= %s "
        "AND m.campaign_id = %s AND m.step_id = %s AND m.created_at = %s"
    )
    new_params = [after, upto, campaign.pk, plan.first_step.pk, now]
    _insert_select(
        MessageStatusChange,
        {
            "message": ("m.id", []),
            "status": _const(MessageStatus.QUEUED.value),
            "occurred_at": at,
            "recorded_at": at,
            "source": _const("campaign"),
        },
        f"{new_messages} AND NOT EXISTS "  # noqa: S608  (quoted table names, values as parameters)
        f"(SELECT 1 FROM {history} h WHERE h.message_id = m.id)",
        new_params,
    )
    sent = _sent_detail(plan)
    for action, step, channel, detail in [
        (EnrollmentAction.SENT, ("m.step_id", []), ("m.channel", []), _const(sent)),
        (EnrollmentAction.COMPLETED, ("NULL", []), _const(""), _const("")),
    ]:
        if action == EnrollmentAction.COMPLETED and plan.next_wait is not None:
            continue
        _insert_select(
            EnrollmentLog,
            {
                "enrollment": ("m.enrollment_id", []),
                "at": at,
                "action": _const(action.value),
                "step": step,
                "channel": channel,
                "message": ("m.id", []) if action == EnrollmentAction.SENT else ("NULL", []),
                "detail": detail,
            },
            f"{new_messages} AND NOT EXISTS (SELECT 1 FROM {log} l "  # noqa: S608  (as above)
            "WHERE l.enrollment_id = m.enrollment_id AND l.action = %s)",
            [*new_params, action.value],
        )


def _fan_out_chunk_in_one_statement(plan: FanOutPlan, *, after: int, upto: int) -> int:
    """PostgreSQL: the whole chunk in one statement of data-modifying CTEs.

    ``a``: the audience; ``r``: those of them the SQL rules reach; ``en``: the enrollments
    inserted (ON CONFLICT DO NOTHING, so only new ones come back), directly at their final
    state for the people in ``r``; ``ins``: the first messages of those new enrollments;
    then the history rows of ``en`` and ``ins``. Nothing looks up the rows it just wrote, so
    the plan does not depend on statistics that a bulk load has made stale, and a re-run
    writes nothing twice (what ON CONFLICT skipped is not returned).
    """
    now = _datetime(plan.now)
    audience_sql, params = _sql(_audience_rows(plan, after=after, upto=upto))
    ctes = [f"a AS MATERIALIZED ({audience_sql})"]
    reachable = _reachable(plan, after=after, upto=upto, candidates=True)
    enrollment = _enrollment_fields(plan, due=_hour_case("a.fo_hour", plan.due_times))
    if reachable is None or plan.backend is None:
        source = "FROM a"
    else:
        reachable_sql, reachable_params = _sql(reachable)
        # The addresses are computed once, into c; the address checks then read the stored
        # column (in the ORM's query each mention of the address computes it again).
        allowed_sql, allowed_params = plan.backend.address_allowed_sql(
            "c.reach_address", plan.campaign.purpose
        )
        ctes.append(
            f"c AS MATERIALIZED (SELECT * FROM ({reachable_sql}) r0 "  # noqa: S608  (ORM SQL)
            "WHERE r0.fo_id IN (SELECT a.fo_id FROM a WHERE NOT a.fo_held))"
        )
        ctes.append(f"r AS MATERIALIZED (SELECT * FROM c WHERE {allowed_sql})")  # noqa: S608
        params += [*reachable_params, *allowed_params]
        source = "FROM a LEFT JOIN r ON r.fo_id = a.fo_id"
        enrollment.update(
            _direct_enrollment_fields(plan, enrollment, reached="r.fo_id IS NOT NULL")
        )
    insert, insert_params = insert_select_head(Enrollment, enrollment)
    ctes.append(
        f"en AS ({insert} {source} WHERE 1 = 1 ON CONFLICT DO NOTHING "
        "RETURNING id, profile_id, step_position, last_message_at, holdout)"
    )
    params += insert_params
    log_sources = [
        (
            "SELECT en.id AS eid, 1 AS ord, %s::text AS action, NULL::bigint AS step_id, "
            "''::text AS channel, NULL::bigint AS message_id, %s::text AS detail FROM en",
            [EnrollmentAction.ENROLLED.value, FAN_OUT_DETAIL],
        )
    ]
    if plan.holdout_below > 0:
        log_sources.append(
            (
                "SELECT en.id, 2, %s, NULL, '', NULL, %s FROM en WHERE en.holdout",
                [EnrollmentAction.EXITED.value, HELD_OUT_DETAIL],
            )
        )
    if reachable is not None:
        fields = _message_fields(plan, send_at=("en.last_message_at", []))
        fields["profile"] = ("en.profile_id", [])
        insert, insert_params = insert_select_head(Message, fields)
        ctes.append(
            f"ins AS ({insert} FROM en JOIN r ON r.fo_id = en.profile_id "
            "WHERE en.step_position = %s ON CONFLICT DO NOTHING "
            "RETURNING id, enrollment_id, step_id, channel)"
        )
        params += [*insert_params, plan.first_step.position]
        insert, insert_params = insert_select_head(
            MessageStatusChange,
            {
                "message": ("ins.id", []),
                "status": _const(MessageStatus.QUEUED.value),
                "occurred_at": _const(now),
                "recorded_at": _const(now),
                "source": _const("campaign"),
            },
        )
        if plan.history:
            ctes.append(f"st AS ({insert} FROM ins)")
            params += insert_params
        log_sources.append(
            (
                "SELECT ins.enrollment_id, 2, %s, ins.step_id, ins.channel, ins.id, %s FROM ins",
                [EnrollmentAction.SENT.value, _sent_detail(plan)],
            )
        )
        if plan.next_wait is None:
            log_sources.append(
                (
                    "SELECT ins.enrollment_id, 3, %s, NULL, '', NULL, '' FROM ins",
                    [EnrollmentAction.COMPLETED.value],
                )
            )
    insert, insert_params = insert_select_head(
        EnrollmentLog,
        {
            "enrollment": ("x.eid", []),
            "at": _const(now),
            "action": ("x.action", []),
            "step": ("x.step_id", []),
            "channel": ("x.channel", []),
            "message": ("x.message_id", []),
            "detail": ("x.detail", []),
        },
    )
    if plan.history:
        union = " UNION ALL ".join(sql for sql, _params in log_sources)
        # Ordered so that each enrollment's entries come in the order they happened.
        ctes.append(f"log AS ({insert} FROM ({union}) x ORDER BY x.eid, x.ord)")
        params += insert_params
        for _sql_part, part_params in log_sources:
            params += part_params
    with connection.cursor() as cursor:
        # Every part is the ORM's SQL or ours with quoted names; values are parameters.
        cursor.execute(f"WITH {', '.join(ctes)} SELECT count(*) FROM en", params)  # noqa: S608
        return int(cursor.fetchone()[0])


def _enrollment_fields(
    plan: FanOutPlan, *, due: tuple[str, list[Any]]
) -> dict[str, tuple[str, list[Any]]]:
    """A new enrollment for a row of ``a`` (an audience member): at step 0, due at ``due``;
    or, for a held-out person, exited at once."""
    fields = {
        "campaign": _const(plan.campaign.pk),
        "profile": ("a.fo_id", []),
        "subject_key": _const(""),
        "state": _const(EnrollmentState.ACTIVE.value),
        "exit_reason": _const(""),
        "step_position": _const(0),
        "next_due_at": due,
        "last_message_at": ("NULL", []),
        "ended_at": ("NULL", []),
        "enrolled_at": _const(_datetime(plan.now)),
        "last_activity_at": ("NULL", []),
        "claimed_by": _const(""),
    }
    if plan.holdout_below <= 0:
        return fields

    def unless_held(name: str, when_held: tuple[str, list[Any]]) -> tuple[str, list[Any]]:
        held_sql, held_params = when_held
        sql, params = fields[name]
        return f"CASE WHEN a.fo_held THEN {held_sql} ELSE {sql} END", [*held_params, *params]

    fields.update(
        {
            "holdout": ("a.fo_held", []),
            "state": unless_held("state", _const(EnrollmentState.EXITED.value)),
            "exit_reason": unless_held("exit_reason", _const(ExitReason.HELD_OUT.value)),
            "next_due_at": unless_held("next_due_at", ("NULL", [])),
            "ended_at": unless_held("ended_at", _const(_datetime(plan.now))),
        }
    )
    return fields


def _direct_enrollment_fields(
    plan: FanOutPlan, at_step_zero: dict[str, tuple[str, list[Any]]], *, reached: str
) -> dict[str, tuple[str, list[Any]]]:
    """The enrollment of someone whose first message is created with it (``reached`` is true):
    at the first step, last message at its send time, due for the next step or completed."""

    def either(name: str, when_reached: tuple[str, list[Any]]) -> tuple[str, list[Any]]:
        default_sql, default_params = at_step_zero.get(name, ("NULL", []))
        reached_sql, reached_params = when_reached
        if reached_sql == default_sql == "NULL":
            return "NULL", []  # (a CASE of two NULLs would be text)
        return (
            f"CASE WHEN {reached} THEN {reached_sql} ELSE {default_sql} END",
            [*reached_params, *default_params],
        )

    sent_at = _hour_case("a.fo_hour", plan.message_times)
    if plan.next_wait is None:
        state, reason = EnrollmentState.COMPLETED.value, ExitReason.COMPLETED.value
        next_due: tuple[str, list[Any]] = ("NULL", [])
        ended: tuple[str, list[Any]] = _const(_datetime(plan.now))
    else:
        wait = plan.next_wait
        state, reason = EnrollmentState.ACTIVE.value, ""
        next_due = _hour_case("a.fo_hour", {b: t + wait for b, t in plan.message_times.items()})
        ended = ("NULL", [])
    return {
        "state": either("state", _const(state)),
        "exit_reason": either("exit_reason", _const(reason)),
        "step_position": either("step_position", _const(plan.first_step.position)),
        "next_due_at": either("next_due_at", next_due),
        "last_message_at": either("last_message_at", sent_at),
        "ended_at": either("ended_at", ended),
    }


def _sent_detail(plan: FanOutPlan) -> str:
    channel = plan.backend.name if plan.backend else ""
    return f"step {plan.first_step.position}: {channel} (the step's channel; {FAN_OUT_DETAIL})"


# --- Celery: chunks as a chain of tasks ---------------------------------------------------------


def fan_out_lease() -> timedelta:
    """How long a fan-out chain may go without progress before the tick starts it again."""
    return timedelta(seconds=int(app_settings.CAMPAIGN_CLAIM_LEASE))


def launch_due_mass_campaigns(now: datetime) -> list[int]:
    """Start the fan-out of every due mass campaign as a chain of Celery tasks (one per chunk);
    returns the campaigns started. One query when nothing is due.

    A campaign is claimed with a lease (``last_scanned_at``, which triggered campaigns use for
    their scans and mass campaigns for this): a chain renews it with every chunk, and one that
    stopped (a lost task, the broker down) is started again after ``CAMPAIGN_CLAIM_LEASE``.
    """
    stale = Q(last_scanned_at__isnull=True) | Q(last_scanned_at__lt=now - fan_out_lease())
    due = list(due_campaigns(now=now).filter(stale).values_list("pk", flat=True))
    started = []
    for pk in due:
        if not Campaign.objects.filter(stale, pk=pk, launched_at__isnull=True).update(
            last_scanned_at=now
        ):
            continue  # another tick claimed it in between
        try:
            _queue_chunk(pk, after=None, upto=None, now=now)
        except Exception:  # noqa: BLE001  (broker down: the lease runs out, a later tick retries)
            logger.warning("mass campaign %s: could not queue its fan-out; retried later", pk)
            continue
        started.append(pk)
    return started


def _queue_chunk(campaign_id: int, *, after: int | None, upto: int | None, now: datetime) -> None:
    from .tasks import fan_out_task

    fan_out_task.apply_async(
        args=[campaign_id, after, upto, now.isoformat()], retry=False, ignore_result=True
    )


def fan_out_step(
    campaign_id: int,
    *,
    after: int | None,
    upto: int | None,
    now: datetime,
    heartbeat_at: datetime,
) -> int:
    """One link of the chain: fan out the chunk after ``after``, then queue the next chunk or
    finish. ``now`` is the launch time (every chunk uses it); ``heartbeat_at`` renews the
    lease. Returns the enrollments created."""
    campaign = Campaign.objects.select_related("audience", "exclusion").filter(pk=campaign_id)
    found = campaign.first()
    if found is None or not is_due(found, now=now):
        return 0  # deleted, paused, or finished by another chain meanwhile
    if after is None or upto is None:
        bounds = profile_id_range()
        if bounds is None:
            finish_fan_out(found, now=now)
            return 0
        after, upto = bounds[0] - 1, bounds[1]
    plan = plan_fan_out(found, now=now)
    size = chunk_size()
    created = fan_out_chunk(plan, after=after, upto=after + size)
    Campaign.objects.filter(pk=campaign_id).update(last_scanned_at=heartbeat_at)
    if after + size < upto:
        _queue_chunk(campaign_id, after=after + size, upto=upto, now=now)
    else:
        finish_fan_out(found, now=now)
        logger.info("mass campaign %s fanned out", campaign_id)
    return created


def enrollment_counts(campaign: Campaign) -> dict[str, int]:
    """Enrollments of a campaign by step position reached (for logs and benches)."""
    rows = (
        Enrollment.objects.filter(campaign=campaign)
        .values_list("step_position")
        .annotate(n=Count("pk"))
        .order_by()
    )
    return {str(position): n for position, n in rows}
