"""The campaign engine: ``tick(now)`` advances due enrollments in batches.

Each tick claims due enrollments (tagged with a run token and a lease; on PostgreSQL one
``UPDATE`` whose sub-select reads the candidates ``FOR UPDATE SKIP LOCKED``, so parallel ticks
never wait on each other nor take the same rows), loads what the batch needs in a fixed number
of queries, decides for each enrollment in memory (``Planner.decide``) and writes the outcome in
one transaction: ``Message`` rows with their "queued" history (content is rendered later by the
delivery workers), enrollment updates, history rows. On PostgreSQL each of these is one
statement over arrays (``unnest``); elsewhere Django's bulk methods. Delivery tasks are then
handed the new messages in batches.

A decision, in order:

0. the holdout: at an enrollment's first decision, a person in the campaign's holdout group
   (``campaigns.groups``) exits as held out, before any other check, and is never messaged;
1. exits: the campaign ended, the person converted, bought everything the reminder is about,
   the subject is gone, unsubscribed, left the audience or joined the exclusion segment;
2. the next step (none left: completed) and its stop condition against the enrollment's earlier
   messages (opened or clicked: the cascade stops);
3. the channel: the step's own, or that of the person's variant of the step (a stable hash
   picks it, weighed), or for "best" the reachable channel with the most engagement per money;
   a channel that cannot reach the person is skipped at once and the next step takes its place;
4. timing: the person's best hour (if the step asks), then quiet hours in their time zone
   (deferred, never dropped);
5. frequency caps for marketing: a new contact is held back when the person's contacts in the
   last day or week reach the cap, counting the higher-priority enrollments about to need one;
   the campaign delays or drops what is held back;
6. the message row, and the next step's due time.

Whatever is deferred comes back through the same checks when due, so a purchase made while a
message waits for its hour still stops it. ``explain`` runs the same decision for one person
without writing anything (the admin's preview).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.db import connection, transaction
from django.db.models import JSONField, Model, Q, QuerySet

from ..channels.base import BaseChannel, Reach
from ..channels.models import Message, MessageStatus, MessageStatusChange
from ..channels.registry import get_channel, get_channels
from ..conf import app_settings
from ..exceptions import ConfigurationError
from ..profiles.models import CustomerProfile, Purpose
from ..segments.models import EngagementScore
from . import goals
from .groups import is_held_out, pick_variant
from .models import (
    BEST_CHANNEL,
    Campaign,
    CampaignStatus,
    CappedAction,
    Enrollment,
    EnrollmentAction,
    EnrollmentLog,
    EnrollmentState,
    ExitReason,
    Step,
    StopCondition,
    Variant,
)

logger = logging.getLogger("omnichannel.campaigns")

#: Context key recording that a step already waited for the person's best hour.
BEST_HOUR_DONE = "_best_hour_step"
#: Context key recording that the first step's own wait (after the trigger's) has passed.
FIRST_WAIT_DONE = "_first_wait_done"
DAY = timedelta(days=1)
WEEK = timedelta(days=7)
#: Statuses of messages that reached nobody: they do not count against caps.
NOT_A_CONTACT = (MessageStatus.FAILED, MessageStatus.SUPPRESSED)


# --- decisions ---------------------------------------------------------------------------------


@dataclass
class Decision:
    """What the engine does with one enrollment now, and why (in words for the admin)."""

    action: str  # "send", "defer", "exit", "complete"
    reasons: list[str] = field(default_factory=list)
    step: Step | None = None
    #: The step's variant this person gets (a step with variants), stored on the message.
    variant: Variant | None = None
    channel: str = ""
    address: str = ""
    at: datetime | None = None  # defer: when it is due again
    exit_reason: str = ""
    #: History rows for steps skipped on the way (step, channel, why).
    skipped: list[tuple[Step, str, str]] = field(default_factory=list)
    best_hour_step: int | None = None
    #: Keys to merge into the enrollment's context (markers of waits already waited).
    context_updates: dict[str, Any] = field(default_factory=dict)
    #: After a send: when the following step is due, or None when this was the last.
    next_due_at: datetime | None = None

    def say(self, text: str) -> None:
        self.reasons.append(text)


@dataclass
class TickResult:
    """Counts of one tick, for logs and the task's return value."""

    claimed: int = 0
    sent: int = 0
    deferred: int = 0
    exited: int = 0
    completed: int = 0
    enrolled: int = 0
    batches: int = 0
    message_ids: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {
            "claimed": self.claimed,
            "sent": self.sent,
            "deferred": self.deferred,
            "exited": self.exited,
            "completed": self.completed,
            "enrolled": self.enrolled,
            "batches": self.batches,
        }


# --- time helpers ------------------------------------------------------------------------------


def shop_zone() -> ZoneInfo:
    return ZoneInfo(settings.TIME_ZONE or "UTC")


def person_zone(profile: CustomerProfile) -> ZoneInfo:
    """The person's time zone; the shop's when unset or unknown."""
    if profile.time_zone:
        try:
            return ZoneInfo(profile.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            logger.info("profile %s: unknown time zone %r", profile.pk, profile.time_zone)
    return shop_zone()


def quiet_hours_end(at: datetime, zone: ZoneInfo) -> datetime | None:
    """When the quiet hours around ``at`` end, or None if ``at`` is not in them."""
    hours = app_settings.QUIET_HOURS
    if not hours:
        return None
    start, end = int(hours[0]), int(hours[1])
    if start == end:
        return None
    local = at.astimezone(zone)
    hour = local.hour
    quiet = (start <= hour < end) if start < end else (hour >= start or hour < end)
    if not quiet:
        return None
    until = local.replace(hour=end, minute=0, second=0, microsecond=0)
    if until <= local:
        until += DAY
    return until


def next_hour(at: datetime, hour: int, zone: ZoneInfo) -> datetime:
    """``at`` itself when it is in ``hour`` (local to ``zone``), else the next start of it."""
    local = at.astimezone(zone)
    if local.hour == hour:
        return at
    candidate = local.replace(hour=hour, minute=0, second=0, microsecond=0)
    if candidate <= local:
        candidate += DAY
    return candidate


# --- the batch's facts -------------------------------------------------------------------------


@dataclass
class Contact:
    """A marketing contact in the cap windows: one enrollment's messages, or one message."""

    first_at: datetime
    campaign_id: int | None


class Planner:
    """Loads what a batch of enrollments needs in a fixed number of queries, then decides."""

    def __init__(self, enrollments: Sequence[Enrollment], *, now: datetime) -> None:
        self.now = now
        self.enrollments = list(enrollments)
        self.campaigns = {e.campaign_id: e.campaign for e in self.enrollments}
        self.steps = self._load_steps()
        self.variants = self._load_variants()
        self.channels = self._load_channels()
        self.messages = self._load_messages()
        #: Enrollments whose campaign could not be evaluated (a trigger or segment failed):
        #: deferred with the error, so one broken campaign does not stop the others.
        self.broken: dict[int, str] = {}
        self.converted = goals.converted(self.enrollments)
        self.items = goals.remaining_items(self.enrollments, errors=self.broken)
        self.members, self.excluded = self._load_segments()
        self._reach: dict[tuple[str, str], dict[int, Reach]] = {}
        self._engagement: dict[tuple[int, str], tuple[int, int]] | None = None
        self._best_hours: dict[int, int] | None = None
        self._contacts: dict[int, dict[Any, Contact]] | None = None
        self._reserved: dict[int, list[tuple[int, int]]] | None = None
        #: Contacts granted earlier in this batch (profile -> keys), so caps hold in-batch too.
        self._granted: dict[int, dict[Any, Contact]] = defaultdict(dict)

    # loading ----------------------------------------------------------------------------------

    def _load_steps(self) -> dict[int, list[Step]]:
        steps: dict[int, list[Step]] = defaultdict(list)
        for step in Step.objects.filter(campaign_id__in=self.campaigns).order_by(
            "campaign_id", "position", "id"
        ):
            steps[step.campaign_id].append(step)
        return steps

    def _load_variants(self) -> dict[int, list[Variant]]:
        variants: dict[int, list[Variant]] = defaultdict(list)
        for variant in Variant.objects.filter(step__campaign_id__in=self.campaigns).order_by("id"):
            variants[variant.step_id].append(variant)
        return variants

    def _load_channels(self) -> dict[str, BaseChannel]:
        try:
            return get_channels()
        except ConfigurationError:
            logger.exception("OMNICHANNEL['CHANNELS'] is misconfigured: no channel is usable")
            return {}

    def _load_messages(self) -> dict[int, list[dict[str, Any]]]:
        by_enrollment: dict[int, list[dict[str, Any]]] = defaultdict(list)
        ids = [e.pk for e in self.enrollments if e.pk]
        if not ids:
            return by_enrollment
        rows = Message.objects.filter(enrollment_id__in=ids).values(
            "enrollment_id",
            "channel",
            "opened_at",
            "clicked_at",
            "unsubscribed_at",
            "complained_at",
        )
        for row in rows:
            by_enrollment[row["enrollment_id"]].append(row)
        return by_enrollment

    def _load_segments(self) -> tuple[dict[int, set[int]], dict[int, set[int]]]:
        members: dict[int, set[int]] = {}
        excluded: dict[int, set[int]] = {}
        profiles_by_campaign: dict[int, set[int]] = defaultdict(set)
        for e in self.enrollments:
            profiles_by_campaign[e.campaign_id].add(e.profile_id)
        for campaign_id, profile_ids in profiles_by_campaign.items():
            campaign = self.campaigns[campaign_id]
            try:
                with transaction.atomic():  # a failed query must not poison the batch's
                    if campaign.audience_id:
                        members[campaign_id] = self._members(campaign.audience, profile_ids)
                    if campaign.exclusion_id:
                        excluded[campaign_id] = self._members(campaign.exclusion, profile_ids)
            except Exception as exc:  # a broken segment stops only its campaign
                logger.exception("campaign %s: its segments could not be evaluated", campaign_id)
                why = f"its segments could not be evaluated: {type(exc).__name__}"
                for e in self.enrollments:
                    if e.campaign_id == campaign_id:
                        self.broken[e.pk] = why
        return members, excluded

    def _members(self, segment: Any, profile_ids: set[int]) -> set[int]:
        return set(
            segment.queryset(now=self.now).filter(pk__in=profile_ids).values_list("pk", flat=True)
        )

    def reach(self, channel: str, purpose: str, profile: CustomerProfile) -> Reach:
        """Whether ``channel`` reaches the person; computed for the whole batch at first use."""
        key = (channel, purpose)
        if key not in self._reach:
            backend = self.channels[channel]
            profiles = list({e.profile_id: e.profile for e in self.enrollments}.values())
            many = getattr(backend, "reachability_many", None)
            if many is not None:
                self._reach[key] = many(profiles, purpose)
            else:  # a third-party channel without the bulk hook: one check per person
                self._reach[key] = {p.pk: backend.reachability(p, purpose) for p in profiles}
        found = self._reach[key].get(profile.pk)
        if found is None:  # a profile outside the batch (explain)
            found = self.channels[channel].reachability(profile, purpose)
        return found

    def engagement(self, profile_id: int, channel: str) -> tuple[int, int]:
        """(messages sent, messages opened or clicked) of the person on a channel, recently."""
        if self._engagement is None:
            since = self.now - timedelta(days=int(app_settings.ENGAGEMENT_WINDOW_DAYS))
            stats: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])
            rows = (
                Message.objects.filter(
                    profile_id__in={e.profile_id for e in self.enrollments},
                    created_at__gte=since,
                    sent_at__isnull=False,
                )
                .order_by()
                .values_list("profile_id", "channel", "opened_at", "clicked_at")
            )
            for pid, name, opened_at, clicked_at in rows:
                counts = stats[(pid, name)]
                counts[0] += 1
                counts[1] += opened_at is not None or clicked_at is not None
            self._engagement = {key: (sent, engaged) for key, (sent, engaged) in stats.items()}
        return self._engagement.get((profile_id, channel), (0, 0))

    def best_hour(self, profile_id: int) -> tuple[int, bool]:
        """(hour in the shop's time zone, whether it is the person's own)."""
        if self._best_hours is None:
            self._best_hours = dict(
                EngagementScore.objects.filter(
                    profile_id__in={e.profile_id for e in self.enrollments},
                    best_hour__isnull=False,
                ).values_list("profile_id", "best_hour")
            )
        hour = self._best_hours.get(profile_id)
        if hour is None:
            return int(app_settings.DEFAULT_SEND_HOUR), False
        return int(hour), True

    def _load_caps(self) -> None:
        since = self.now - WEEK
        profile_ids = {e.profile_id for e in self.enrollments}
        contacts: dict[int, dict[Any, Contact]] = defaultdict(dict)
        rows = (
            Message.objects.filter(
                profile_id__in=profile_ids, purpose=Purpose.MARKETING, created_at__gte=since
            )
            .exclude(status__in=NOT_A_CONTACT)
            .order_by()  # counted, so in any order: no sort
            .values_list("profile_id", "enrollment_id", "pk", "created_at", "campaign_id")
        )
        for pid, enrollment_id, pk, created_at, campaign_id in rows:
            key = ("e", enrollment_id) if enrollment_id else ("m", pk)
            seen = contacts[pid].get(key)
            if seen is None or created_at < seen.first_at:
                contacts[pid][key] = Contact(created_at, campaign_id)
        self._contacts = contacts
        # Higher-priority enrollments about to need a contact (due within a day, none yet).
        reserved: dict[int, list[tuple[int, int]]] = defaultdict(list)
        pending = Enrollment.objects.filter(
            profile_id__in=profile_ids,
            state=EnrollmentState.ACTIVE,
            next_due_at__lte=self.now + DAY,
            campaign__status=CampaignStatus.ACTIVE,
            campaign__purpose=Purpose.MARKETING,
            last_message_at__isnull=True,
            holdout=False,  # held out: will never need a contact
        ).values_list("profile_id", "pk", "campaign__priority")
        for pid, pk, priority in pending:
            reserved[pid].append((pk, priority))
        self._reserved = reserved

    # deciding ---------------------------------------------------------------------------------

    def decide(self, enrollment: Enrollment) -> Decision:
        """What to do with ``enrollment`` now; writes nothing."""
        campaign = enrollment.campaign
        if self._held_out(enrollment):
            decision = Decision("exit", exit_reason=ExitReason.HELD_OUT)
            decision.say(
                f"held out: in the campaign's {campaign.holdout_percent} % holdout group, which "
                "gets no message (its orders are compared with the others')"
            )
            return decision
        if enrollment.pk in self.broken:
            decision = Decision("defer", at=self.now + timedelta(minutes=15))
            decision.say(f"not evaluated: {self.broken[enrollment.pk]}; tried again in 15 minutes")
            return decision
        exit_reason = self._exit_reason(enrollment)
        if exit_reason:
            decision = Decision("exit", exit_reason=exit_reason[0])
            decision.say(exit_reason[1])
            return decision
        steps = self.steps.get(campaign.pk, [])
        position = enrollment.step_position
        reached_by_skip = False
        decision = Decision("complete")
        used_channels = {m["channel"] for m in self.messages.get(enrollment.pk, [])}
        for step in steps:
            if step.position <= position:
                continue
            if reached_by_skip and enrollment.last_message_at is not None:
                due = enrollment.last_message_at + step.wait
                if due > self.now:
                    decision.action, decision.at, decision.step = "defer", due, step
                    decision.say(f"step {step.position} waits until {due:%Y-%m-%d %H:%M} UTC")
                    return decision
            first_wait = self._first_wait(enrollment, step, reached_by_skip)
            if first_wait is not None:
                decision.action, decision.at, decision.step = "defer", first_wait, step
                decision.context_updates[FIRST_WAIT_DONE] = True
                decision.say(f"step {step.position} waits {step.wait} after the trigger")
                return decision
            stop = self._stopped(enrollment, step)
            if stop:
                decision.action, decision.exit_reason = "exit", ExitReason.ENGAGED
                decision.say(stop)
                return decision
            variant = pick_variant(enrollment.profile_id, campaign.pk, self.variants[step.pk])
            wanted = (variant.channel if variant else "") or step.channel
            origin = (
                "the variant's channel" if variant and variant.channel else "the step's channel"
            )
            channel, address, why = self._choose_channel(enrollment, wanted, used_channels, origin)
            if not channel:
                decision.skipped.append((step, wanted, why))
                decision.say(f"step {step.position} ({wanted}) skipped: {why}")
                position = step.position
                reached_by_skip = True
                continue
            decision.step, decision.channel, decision.address = step, channel, address
            decision.variant = variant
            which = f", variant {variant.name}" if variant is not None else ""
            decision.say(f"step {step.position}{which}: {channel} ({why})")
            timed = self._timing(enrollment, step, decision)
            if timed is not None:
                decision.action, decision.at = "defer", timed
                return decision
            held = self._capped(enrollment, decision)
            if held is not None:
                return held
            decision.action = "send"
            later = [s for s in steps if s.position > step.position]
            decision.next_due_at = self.now + later[0].wait if later else None
            return decision
        if decision.skipped and not any(
            True for _ in self.messages.get(enrollment.pk, [])
        ):  # nothing ever reached the person
            decision.action, decision.exit_reason = "exit", ExitReason.UNREACHABLE
            decision.say("no step's channel could reach the person")
            return decision
        decision.action = "complete"
        decision.say("every step is done")
        return decision

    def _held_out(self, enrollment: Enrollment) -> bool:
        """Whether this enrollment is in the campaign's holdout: the group is stored when the
        person is enrolled (``enrolling``, ``fanout``), so it does not depend on what happened
        before the first step, nor on a share changed later. Whoever already had a message of
        it stays in the treated group."""
        return bool(
            enrollment.holdout
            and not enrollment.step_position
            and enrollment.last_message_at is None
            and not self.messages.get(enrollment.pk)
        )

    def _exit_reason(self, enrollment: Enrollment) -> tuple[str, str] | None:
        campaign = enrollment.campaign
        if campaign.status == CampaignStatus.FINISHED or (
            campaign.ends_at is not None and campaign.ends_at <= self.now
        ):
            return ExitReason.CAMPAIGN_ENDED, "the campaign has ended"
        if enrollment.pk in self.converted:
            return ExitReason.CONVERTED, "the person ordered after enrolling"
        items = self.items.get(enrollment.pk)
        if isinstance(items, str):  # an ExitReason
            return str(items), str(ExitReason(items).label)
        for row in self.messages.get(enrollment.pk, []):
            if row["unsubscribed_at"] or row["complained_at"]:
                return ExitReason.UNSUBSCRIBED, f"unsubscribed or complained on {row['channel']}"
        if campaign.audience_id and enrollment.profile_id not in self.members.get(campaign.pk, ()):
            return ExitReason.LEFT_SEGMENT, f"not in the audience segment {campaign.audience}"
        if campaign.exclusion_id and enrollment.profile_id in self.excluded.get(campaign.pk, ()):
            return ExitReason.EXCLUDED, f"in the exclusion segment {campaign.exclusion}"
        return None

    def _first_wait(
        self, enrollment: Enrollment, step: Step, reached_by_skip: bool
    ) -> datetime | None:
        """The first step's own wait counts from the trigger's due time, once."""
        if (
            reached_by_skip
            or enrollment.step_position
            or not step.wait
            or (enrollment.context or {}).get(FIRST_WAIT_DONE)
        ):
            return None
        due = (enrollment.next_due_at or self.now) + step.wait
        return due if due > self.now else None

    def _stopped(self, enrollment: Enrollment, step: Step) -> str:
        if step.stop_if == StopCondition.NEVER:
            return ""
        for row in self.messages.get(enrollment.pk, []):
            if row["clicked_at"]:
                return f"the {row['channel']} message was clicked: the cascade stops"
            if step.stop_if == StopCondition.OPENED and row["opened_at"]:
                return f"the {row['channel']} message was opened: the cascade stops"
        return ""

    def _choose_channel(
        self, enrollment: Enrollment, wanted: str, used: set[str], origin: str
    ) -> tuple[str, str, str]:
        """(channel, address, why) or ("", "", why not) for ``wanted``, the step's or its
        variant's channel (``origin`` says which), which may be "best"."""
        purpose = enrollment.campaign.purpose
        profile = enrollment.profile
        if wanted != BEST_CHANNEL:
            if wanted not in self.channels:
                return "", "", f"channel {wanted!r} is not configured"
            reach = self.reach(wanted, purpose, profile)
            if not reach.ok:
                return "", "", reach.reason
            return wanted, reach.address or "", origin
        ranked = []
        reasons = []
        floor = Decimal(str(app_settings.BEST_CHANNEL_COST_FLOOR))
        for name, backend in sorted(self.channels.items()):
            if name in used:
                reasons.append(f"{name}: already used by this enrollment")
                continue
            reach = self.reach(name, purpose, profile)
            if not reach.ok:
                reasons.append(f"{name}: {reach.reason}")
                continue
            sent, engaged = self.engagement(profile.pk, name)
            rate = Decimal(engaged + 1) / Decimal(sent + 2)  # Laplace-smoothed
            value = rate / (backend.cost + floor)
            ranked.append((-value, backend.cost, name, reach.address or "", sent, engaged))
        if not ranked:
            return "", "", "; ".join(reasons) or "no channel is configured"
        ranked.sort()
        _, cost, name, address, sent, engaged = ranked[0]
        others = ", ".join(r[2] for r in ranked[1:])
        why = f"best channel: {engaged} of {sent} recent {name} messages engaged, cost {cost}" + (
            f"; ahead of {others}" if others else ""
        )
        return name, address, why

    def _timing(self, enrollment: Enrollment, step: Step, decision: Decision) -> datetime | None:
        """When the message should go if not now (best hour, then quiet hours), else None."""
        at = self.now
        campaign = enrollment.campaign
        if step.best_hour and (enrollment.context or {}).get(BEST_HOUR_DONE) != step.position:
            hour, own = self.best_hour(enrollment.profile_id)
            at = next_hour(self.now, hour, shop_zone())
            if at > self.now:
                decision.best_hour_step = step.position
                whose = "the person's best hour" if own else "the shop's default send hour"
                decision.say(f"held for {whose} ({hour}:00 shop time)")
        if campaign.quiet_hours and campaign.purpose == Purpose.MARKETING:
            zone = person_zone(enrollment.profile)
            until = quiet_hours_end(at, zone)
            if until is not None:
                decision.say(f"quiet hours in {zone.key}: deferred to {until:%H:%M} local time")
                at = until
                decision.best_hour_step = step.position if step.best_hour else None
        return at if at > self.now else None

    def _capped(self, enrollment: Enrollment, decision: Decision) -> Decision | None:
        """A Decision holding the message back, or None when caps allow it."""
        campaign = enrollment.campaign
        if campaign.purpose != Purpose.MARKETING:
            return None
        if self._contacts is None or self._reserved is None:
            self._load_caps()
        contacts_loaded: dict[int, dict[Any, Contact]] = self._contacts or {}
        reserved_loaded: dict[int, list[tuple[int, int]]] = self._reserved or {}
        pid = enrollment.profile_id
        mine = ("e", enrollment.pk)
        contacts = {**contacts_loaded.get(pid, {}), **self._granted.get(pid, {})}
        if mine in contacts:  # a cascade's follow-up is the same news: no new contact
            return None
        caps = app_settings.FREQUENCY_CAPS or {}
        limits = [
            ("day", DAY, caps.get("day"), None),
            ("week", WEEK, caps.get("week"), None),
            ("day", DAY, campaign.cap_per_day, campaign.pk),
            ("week", WEEK, campaign.cap_per_week, campaign.pk),
        ]
        # Higher-priority enrollments of this person due soon keep a slot for themselves.
        reserved = sum(
            1
            for pk, priority in reserved_loaded.get(pid, [])
            if priority > campaign.priority and ("e", pk) not in contacts
        )
        for label, window, cap, only_campaign in limits:
            if cap is None:
                continue
            in_window = [
                c
                for c in contacts.values()
                if c.first_at > self.now - window
                and (only_campaign is None or c.campaign_id == only_campaign)
            ]
            held_for = reserved if only_campaign is None else 0
            if len(in_window) + held_for + 1 <= int(cap):
                continue
            scope = "this campaign's" if only_campaign else "the shop's"
            text = (
                f"{scope} cap of {cap} per {label} reached ({len(in_window)} contacts"
                + (f", {held_for} kept for higher-priority campaigns" if held_for else "")
                + ")"
            )
            held = Decision(
                "defer", reasons=[*decision.reasons, text], step=decision.step, channel=""
            )
            if campaign.when_capped == CappedAction.DROP:
                held.action, held.exit_reason = "exit", ExitReason.CAPPED
                held.say("the campaign drops what a cap holds back")
                return held
            # Held only for higher-priority enrollments: look again once they had their turn.
            oldest = min((c.first_at for c in in_window), default=self.now - window)
            held.at = max(oldest + window, self.now + timedelta(hours=1))
            held.say(f"delayed to {held.at:%Y-%m-%d %H:%M} UTC")
            return held
        self._granted[pid][mine] = Contact(self.now, campaign.pk)
        return None


# --- claiming and applying ---------------------------------------------------------------------


def _sql(queryset: QuerySet[Any]) -> tuple[str, list[Any]]:
    sql, params = queryset.query.get_compiler(using=queryset.db).as_sql()
    return sql, list(params)


def claim_due_enrollments(*, now: datetime, limit: int) -> list[Enrollment]:
    """Claim up to ``limit`` due enrollments of active campaigns under one token; return them."""
    token = uuid.uuid4().hex
    lease = now + timedelta(seconds=int(app_settings.CAMPAIGN_CLAIM_LEASE))
    due = Enrollment.objects.filter(
        state=EnrollmentState.ACTIVE,
        next_due_at__lte=now,
        campaign__status__in=[CampaignStatus.ACTIVE, CampaignStatus.FINISHED],
    ).filter(Q(claim_expires_at__isnull=True) | Q(claim_expires_at__lt=now))
    candidates = due.order_by("next_due_at", "id")
    with transaction.atomic():
        if connection.vendor == "postgresql":
            chosen = _claim_in_one_statement(candidates, token=token, lease=lease, limit=limit)
        else:
            if connection.features.has_select_for_update_skip_locked:
                candidates = candidates.select_for_update(skip_locked=True, of=("self",))
            chosen = list(candidates.values_list("id", flat=True)[:limit])
            if chosen:
                due.filter(pk__in=chosen).update(claimed_by=token, claim_expires_at=lease)
    if not chosen:
        return []
    claimed = list(
        # By primary key: the token is not indexed (and the table holds every enrollment).
        Enrollment.objects.filter(pk__in=chosen, claimed_by=token, state=EnrollmentState.ACTIVE)
        .select_related("profile", "profile__user")
        .order_by("-campaign__priority", "next_due_at", "id")
    )
    # One instance per campaign, loaded once, rather than a copy joined into every row.
    campaigns = Campaign.objects.select_related("audience", "exclusion").in_bulk(
        {e.campaign_id for e in claimed}
    )
    claimed = [e for e in claimed if e.campaign_id in campaigns]  # deleted meanwhile: gone
    for enrollment in claimed:
        enrollment.campaign = campaigns[enrollment.campaign_id]
    return claimed


def _claim_in_one_statement(
    candidates: QuerySet[Enrollment], *, token: str, lease: datetime, limit: int
) -> list[int]:
    """PostgreSQL: ``UPDATE ... WHERE id = ANY(ARRAY(SELECT ... FOR UPDATE SKIP LOCKED LIMIT
    n)) RETURNING id``; the ids claimed. One statement instead of a read and a write: rows
    another tick holds are passed over, never waited for. (``id IN (SELECT ...)`` would be
    planned as a hash semi-join over a sequential scan of every enrollment; the array is read
    once, then the primary key.)"""
    if limit <= 0:
        return []
    locked = candidates.select_for_update(skip_locked=True, of=("self",)).values("id")[:limit]
    select_sql, select_params = _sql(locked)
    table = connection.ops.quote_name(Enrollment._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET claimed_by = %s, claim_expires_at = %s "  # noqa: S608  (ORM SQL)
            f"WHERE id = ANY(ARRAY({select_sql})) RETURNING id",
            [token, lease, *select_params],
        )
        return [row[0] for row in cursor.fetchall()]


#: Enrollment fields a decision changes (written back for the whole batch at once).
OUTCOME_FIELDS = (
    "state",
    "exit_reason",
    "step_position",
    "next_due_at",
    "last_message_at",
    "ended_at",
    "context",
    "claimed_by",
    "claim_expires_at",
    "holdout",
)


#: The unique (enrollment, step) index of Message as an ON CONFLICT target (its predicate
#: repeated, so PostgreSQL infers that index and no other).
MESSAGE_STEP_CONFLICT = (
    '("enrollment_id", "step_id") WHERE "enrollment_id" IS NOT NULL AND "step_id" IS NOT NULL'
)


#: Field types whose Python values (ints, strings, aware datetimes, Decimals, None) go to
#: psycopg unchanged: ``get_db_prep_save`` per value is most of the cost of building arrays.
PLAIN_FIELD_TYPES = frozenset(
    {
        "AutoField",
        "BigAutoField",
        "BigIntegerField",
        "BooleanField",
        "CharField",
        "DateTimeField",
        "DecimalField",
        "ForeignKey",
        "IntegerField",
        "PositiveIntegerField",
        "PositiveSmallIntegerField",
        "SmallIntegerField",
        "TextField",
    }
)


def set_based_writes() -> bool:
    """PostgreSQL writes a batch with one statement per table (arrays through ``unnest``);
    other databases use Django's bulk methods."""
    return connection.vendor == "postgresql"


def advance(enrollments: Sequence[Enrollment], *, now: datetime) -> TickResult:
    """Decide for a claimed batch and write every outcome in one transaction."""
    result = TickResult(claimed=len(enrollments))
    if not enrollments:
        return result
    planner = Planner(enrollments, now=now)
    decisions = [(e, planner.decide(e)) for e in enrollments]
    set_based = set_based_writes()
    with transaction.atomic():
        if set_based:
            _fresh_plans_for_this_batch()
        # Still ours, still active, still this person's (a merge may have ended or moved it
        # since the claim): anything else is left as the other writer made it.
        mine = set(
            Enrollment.objects.select_for_update()
            .filter(
                pk__in=[e.pk for e in enrollments],
                claimed_by=enrollments[0].claimed_by,
                state=EnrollmentState.ACTIVE,
            )
            .values_list("pk", "profile_id")
        )
        decisions = [(e, d) for e, d in decisions if (e.pk, e.profile_id) in mine]
        message_ids = _create_messages(decisions, now=now)
        logs: list[EnrollmentLog] = []
        for enrollment, decision in decisions:
            _apply(enrollment, decision, message_ids.get(enrollment.pk), logs, now=now)
            counter = {
                "send": "sent",
                "defer": "deferred",
                "exit": "exited",
                "complete": "completed",
            }.get(decision.action)
            if counter:
                setattr(result, counter, getattr(result, counter) + 1)
        moved = [e for e, _ in decisions]
        if set_based:
            _update_enrollments_in_one_statement(moved)
            _insert_rows_in_one_statement(EnrollmentLog, logs)
        else:
            Enrollment.objects.bulk_update(moved, list(OUTCOME_FIELDS))
            EnrollmentLog.objects.bulk_create(logs)
    result.message_ids = sorted(message_ids.values())
    return result


def _fresh_plans_for_this_batch() -> None:
    # PostgreSQL caches the plans of its foreign-key checks per session: a generic plan made
    # while the message table was nearly empty (a new shop, a worker that started on an empty
    # database) is a sequential scan, kept for every row inserted later (a tick 6x slower).
    # Dropping the session's plans makes each batch plan its checks for the tables as they are.
    # (plan_cache_mode = force_custom_plan does that too, but plans every single check: it
    # tripled the time of the commit, where the checks run.)
    with connection.cursor() as cursor:
        cursor.execute("DISCARD PLANS")


def _create_messages(
    decisions: Iterable[tuple[Enrollment, Decision]], *, now: datetime
) -> dict[int, int]:
    """Insert one queued, not yet rendered message per send decision, with its "queued" history
    row; enrollment pk -> message id, for the messages this call created."""
    channels = get_channels()
    rows: list[dict[str, Any]] = []
    for enrollment, decision in decisions:
        if decision.action != "send" or decision.step is None:
            continue
        backend = channels[decision.channel]
        rows.append(
            {
                "profile": enrollment.profile_id,
                "campaign": enrollment.campaign_id,
                "enrollment": enrollment.pk,
                "step": decision.step.pk,
                "variant": decision.variant.pk if decision.variant else None,
                "channel": decision.channel,
                "purpose": enrollment.campaign.purpose,
                "address": decision.address[:255],
                "template": decision.step.template,
                "language": enrollment.profile.language or settings.LANGUAGE_CODE,
                "currency": backend.currency,
                "cost": backend.cost,
            }
        )
    if not rows:
        return {}
    # The unique (enrollment, step) constraint makes a second row impossible; a conflict means
    # another run already created it, and that run's row is the one that counts.
    if set_based_writes():
        return _insert_messages_in_one_statement(rows, now=now)
    Message.objects.bulk_create(
        [
            Message(
                profile_id=row["profile"],
                campaign_id=row["campaign"],
                enrollment_id=row["enrollment"],
                step_id=row["step"],
                variant_id=row["variant"],
                channel=row["channel"],
                purpose=row["purpose"],
                address=row["address"],
                template=row["template"],
                language=row["language"],
                tags=[f"campaign:{row['campaign']}"],
                currency=row["currency"],
                cost=row["cost"],
                needs_render=True,
                status=MessageStatus.QUEUED,
                status_changed_at=now,
                created_at=now,
                queued_at=now,
                next_attempt_at=now,
            )
            for row in rows
        ],
        ignore_conflicts=True,
    )
    wanted = {(row["enrollment"], row["step"]) for row in rows}
    created = {
        enrollment_id: pk
        for pk, enrollment_id, step_id, created_at in Message.objects.filter(
            enrollment_id__in=[pair[0] for pair in wanted]
        ).values_list("pk", "enrollment_id", "step_id", "created_at")
        if (enrollment_id, step_id) in wanted and created_at == now
    }
    MessageStatusChange.objects.bulk_create([_queued(pk, now) for pk in created.values()])
    return created


def _queued(message_id: int, now: datetime) -> MessageStatusChange:
    return MessageStatusChange(
        message_id=message_id,
        status=MessageStatus.QUEUED,
        occurred_at=now,
        recorded_at=now,
        source="campaign",
    )


def _insert_messages_in_one_statement(
    rows: list[dict[str, Any]], *, now: datetime
) -> dict[int, int]:
    """PostgreSQL: the messages and their "queued" history rows in one statement.

    ``INSERT ... SELECT ... FROM unnest(<one array per field>) ON CONFLICT DO NOTHING
    RETURNING``, the history inserted by a data-modifying CTE from what came back: a dozen
    parameters whatever the batch, and no reading back of the rows to learn their ids.
    """
    source, source_params, given = _unnest_source(Message, rows)
    at = _prepared(Message, "created_at", now)
    given.update(
        {
            "uuid": ("gen_random_uuid()", []),
            "tags": ("jsonb_build_array('campaign:' || v.campaign_id)", []),
            "needs_render": ("%s", [True]),
            "status": ("%s", [MessageStatus.QUEUED.value]),
            "status_changed_at": ("%s", [at]),
            "created_at": ("%s", [at]),
            "queued_at": ("%s", [at]),
            "next_attempt_at": ("%s", [at]),
        }
    )
    insert_message, message_params = insert_select_head(Message, given)
    history = _queued(0, now)
    insert_history, history_params = insert_select_head(
        MessageStatusChange,
        {
            "message": ("created.id", []),
            **{
                name: ("%s", [_prepared(MessageStatusChange, name, getattr(history, name))])
                for name in ("status", "occurred_at", "recorded_at", "source")
            },
        },
    )
    with connection.cursor() as cursor:
        cursor.execute(
            # Quoted names; every value is a parameter.
            # The conflict named: only "this step of this enrollment exists" is passed over;
            # any other unique column in conflict is an error, never a silently lost message.
            f"WITH created AS ({insert_message} FROM {source} "  # noqa: S608
            f"ON CONFLICT {MESSAGE_STEP_CONFLICT} DO NOTHING "
            "RETURNING id, enrollment_id), "
            f"history AS ({insert_history} FROM created) "
            "SELECT enrollment_id, id FROM created",
            [*message_params, *source_params, *history_params],
        )
        return dict(cursor.fetchall())


def _update_enrollments_in_one_statement(enrollments: Sequence[Enrollment]) -> None:
    """PostgreSQL: every enrollment's outcome in one ``UPDATE ... FROM unnest(...)``: an index
    lookup per row, where ``bulk_update`` builds a ``CASE`` per field over every row."""
    if not enrollments:
        return
    rows = [
        {"id": e.pk, **{name: getattr(e, name) for name in OUTCOME_FIELDS}} for e in enrollments
    ]
    source, params, _given = _unnest_source(Enrollment, rows)
    columns = [Enrollment._meta.get_field(name).column for name in OUTCOME_FIELDS]
    table = connection.ops.quote_name(Enrollment._meta.db_table)
    assignments = ", ".join(
        f"{connection.ops.quote_name(column)} = v.{connection.ops.quote_name(column)}"
        for column in columns
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET {assignments} FROM {source} "  # noqa: S608  (as above)
            f"WHERE {table}.id = v.id",
            params,
        )


def _insert_rows_in_one_statement(model: type[Model], objects: Sequence[Model]) -> None:
    """PostgreSQL: ``bulk_create`` of unsaved ``objects`` as one ``INSERT ... SELECT FROM
    unnest(...)`` (a parameter per field, not per field and row)."""
    if not objects:
        return
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    rows = [{f.name: getattr(obj, f.attname) for f in fields} for obj in objects]
    source, source_params, given = _unnest_source(model, rows)
    insert, params = insert_select_head(model, given)
    with connection.cursor() as cursor:
        cursor.execute(f"{insert} FROM {source}", [*params, *source_params])


def _unnest_source(
    model: type[Model], rows: Sequence[dict[str, Any]]
) -> tuple[str, list[Any], dict[str, tuple[str, list[Any]]]]:
    """``unnest(%s::<type>[], ...) AS v(<columns>)`` over ``rows`` (field name -> value, the
    same names in each), its parameters (one list per field) and ``v.<column>`` per field."""
    names = list(rows[0])
    arrays, columns, params = [], [], []
    given: dict[str, tuple[str, list[Any]]] = {}
    for name in names:
        model_field = model._meta.get_field(name)
        column = connection.ops.quote_name(model_field.column)
        if isinstance(model_field, JSONField):
            # Sent as text and cast once: psycopg has no array form of its JSON wrapper.
            values = [json.dumps(row[name], cls=model_field.encoder) for row in rows]
            arrays.append("%s::jsonb[]")
        else:
            if model_field.get_internal_type() in PLAIN_FIELD_TYPES:
                values = [row[name] for row in rows]  # psycopg adapts these as they are
            else:
                values = [model_field.get_db_prep_save(row[name], connection) for row in rows]
            db_type = model_field.db_type(connection)
            # Text as text[]: a varchar(n)[] cast would cut a value that is too long without a
            # word; the column itself refuses it, as an INSERT of the value would.
            if db_type.startswith("varchar"):
                db_type = "text"
            arrays.append(f"%s::{db_type}[]")
        columns.append(column)
        params.append(values)
        given[name] = (f"v.{column}", [])
    return f"unnest({', '.join(arrays)}) AS v({', '.join(columns)})", params, given


def _prepared(model: type[Model], name: str, value: Any) -> Any:
    return model._meta.get_field(name).get_db_prep_save(value, connection)


def insert_select_head(
    model: type[Model], given: dict[str, tuple[str, list[Any]]]
) -> tuple[str, list[Any]]:
    """``INSERT INTO <model> (<columns>) SELECT <expressions>`` and its parameters.

    ``given`` maps field names to (SQL, params); every other column gets its field default (as
    a parameter) or NULL, so the statement keeps working when the model gains a column.
    """
    columns, expressions, values = [], [], []
    for model_field in model._meta.concrete_fields:
        if model_field.name in given:
            sql, sql_params = given[model_field.name]
        elif model_field.primary_key:
            continue
        elif model_field.null and not model_field.has_default():
            sql, sql_params = "NULL", []
        else:
            default = model_field.get_default()  # "" for text fields without a default
            if default is None:
                raise ConfigurationError(f"{model.__name__}.{model_field.name} needs a value")
            sql, sql_params = "%s", [model_field.get_db_prep_save(default, connection)]
        columns.append(connection.ops.quote_name(model_field.column))
        expressions.append(sql)
        values.extend(sql_params)
    table = connection.ops.quote_name(model._meta.db_table)
    return f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(expressions)}", values


def _apply(
    enrollment: Enrollment,
    decision: Decision,
    message_id: int | None,
    logs: list[EnrollmentLog],
    *,
    now: datetime,
) -> None:
    """Move the enrollment as decided and add its history rows (nothing is saved here)."""
    enrollment.claimed_by = ""
    enrollment.claim_expires_at = None
    for step, channel, why in decision.skipped:
        enrollment.step_position = max(enrollment.step_position, step.position)
        logs.append(_log(enrollment, EnrollmentAction.SKIPPED, now, step, channel, why))
    detail = "; ".join(decision.reasons)
    if decision.action == "send" and message_id is None and decision.step is not None:
        # The row already existed (another run sent this step, or staff renumbered the steps):
        # the step is done; nothing is sent again and the cascade moves on.
        enrollment.step_position = decision.step.position
        logs.append(
            _log(
                enrollment,
                EnrollmentAction.SKIPPED,
                now,
                decision.step,
                decision.channel,
                "this step's message already exists; not sent again",
            )
        )
        if decision.next_due_at is None:
            _end(enrollment, EnrollmentState.COMPLETED, ExitReason.COMPLETED, now)
            logs.append(_log(enrollment, EnrollmentAction.COMPLETED, now, None, "", ""))
        else:
            enrollment.next_due_at = decision.next_due_at
        decision.action = "skipped"
        return
    if decision.action == "send" and decision.step is not None and message_id is not None:
        enrollment.step_position = decision.step.position
        enrollment.last_message_at = now
        logs.append(
            _log(enrollment, EnrollmentAction.SENT, now, decision.step, decision.channel, detail)
        )
        logs[-1].message_id = message_id
        if decision.next_due_at is None:
            _end(enrollment, EnrollmentState.COMPLETED, ExitReason.COMPLETED, now)
            logs.append(_log(enrollment, EnrollmentAction.COMPLETED, now, None, "", ""))
        else:
            enrollment.next_due_at = decision.next_due_at
    elif decision.action == "defer":
        enrollment.next_due_at = decision.at
        done = dict(decision.context_updates)
        if decision.best_hour_step is not None:
            done[BEST_HOUR_DONE] = decision.best_hour_step
        if done:
            enrollment.context = {**(enrollment.context or {}), **done}
        step, channel = decision.step, decision.channel
        logs.append(_log(enrollment, EnrollmentAction.DEFERRED, now, step, channel, detail))
    elif decision.action == "exit":
        _end(enrollment, EnrollmentState.EXITED, decision.exit_reason, now)
        if decision.exit_reason == ExitReason.HELD_OUT:
            enrollment.holdout = True
        logs.append(_log(enrollment, EnrollmentAction.EXITED, now, decision.step, "", detail))
    else:
        _end(enrollment, EnrollmentState.COMPLETED, ExitReason.COMPLETED, now)
        logs.append(_log(enrollment, EnrollmentAction.COMPLETED, now, None, "", detail))


def _end(enrollment: Enrollment, state: str, reason: str, now: datetime) -> None:
    enrollment.state = state
    enrollment.exit_reason = reason
    enrollment.ended_at = now
    enrollment.next_due_at = None


def _log(
    enrollment: Enrollment,
    action: str,
    now: datetime,
    step: Step | None,
    channel: str,
    detail: str,
) -> EnrollmentLog:
    return EnrollmentLog(
        enrollment=enrollment,
        at=now,
        action=action,
        step=step,
        channel=channel,
        detail=detail[:500],
    )


# --- the tick ----------------------------------------------------------------------------------


def tick(
    *,
    now: datetime,
    batch_size: int | None = None,
    max_batches: int | None = None,
    dispatch: bool = True,
) -> TickResult:
    """Enroll from scans, launch due mass campaigns, and advance due enrollments in batches.

    With ``dispatch``, the new messages are handed to delivery tasks in batches after each
    batch commits; when the broker is unreachable they wait for the periodic delivery task.
    """
    from .enrolling import scan_triggers
    from .fanout import launch_due_mass_campaigns

    size = int(app_settings.CAMPAIGN_BATCH_SIZE if batch_size is None else batch_size)
    batches = int(
        app_settings.CAMPAIGN_MAX_BATCHES_PER_TICK if max_batches is None else max_batches
    )
    if size < 1 or batches < 1:
        raise ConfigurationError(
            "the campaign batch size and batches per tick must be at least 1, "
            f"not {size} and {batches} (CAMPAIGN_BATCH_SIZE, CAMPAIGN_MAX_BATCHES_PER_TICK)"
        )
    total = TickResult()
    total.enrolled = scan_triggers(now=now)
    launch_due_mass_campaigns(now=now)
    for _ in range(batches):
        claimed = claim_due_enrollments(now=now, limit=size)
        if not claimed:
            break
        try:
            result = advance(claimed, now=now)
        except Exception:  # rolled back; retried when its claim expires
            logger.exception("campaign tick: a batch of %d enrollments failed", len(claimed))
            total.batches += 1
            continue
        total.batches += 1
        for name in ("claimed", "sent", "deferred", "exited", "completed"):
            setattr(total, name, getattr(total, name) + getattr(result, name))
        total.message_ids.extend(result.message_ids)
        if dispatch and result.message_ids:
            dispatch_delivery(result.message_ids)
        if len(claimed) < size:
            break
    if total.claimed:
        logger.info("campaign tick: %s", total.as_dict())
    return total


def dispatch_delivery(message_ids: Sequence[int]) -> None:
    """Hand new messages to delivery tasks, one task per DELIVERY_BATCH_SIZE messages.

    The task only carries ids: the database holds each message's state, so a lost task
    delays nothing for long (the periodic delivery task sends whatever is due).
    """
    from ..tasks import deliver_messages_task

    size = max(int(app_settings.DELIVERY_BATCH_SIZE), 1)
    for start in range(0, len(message_ids), size):
        try:
            deliver_messages_task.apply_async(
                args=[list(message_ids[start : start + size])], retry=False
            )
        except Exception:  # noqa: BLE001  (broker down: beat's delivery task picks them up)
            logger.warning("could not queue a delivery task; the periodic delivery will send")
            return


# --- the admin's question ----------------------------------------------------------------------


def explain(campaign: Campaign, profile: CustomerProfile, *, now: datetime) -> Decision:
    """What the engine would do for this person in this campaign now, and why. Writes nothing.

    Uses the person's active enrollment in the campaign when there is one, else a fresh
    enrollment at its first step (item checks need a real subject and are skipped then).
    """
    enrollment = (
        Enrollment.objects.filter(campaign=campaign, profile=profile, state=EnrollmentState.ACTIVE)
        .select_related("campaign", "profile", "profile__user")
        .order_by("-enrolled_at")
        .first()
    )
    fresh = enrollment is None
    if enrollment is None:
        enrollment = Enrollment(
            campaign=campaign,
            profile=profile,
            enrolled_at=now,
            holdout=campaign.holds_out and is_held_out(profile.pk, campaign),
        )
    planner = Planner([enrollment], now=now)
    if fresh:
        planner.items.pop(None, None)  # type: ignore[call-overload]  (no subject to check)
    decision = planner.decide(enrollment)
    if fresh:
        decision.reasons.insert(0, "not enrolled: as if enrolled now")
    else:
        decision.reasons.insert(0, f"enrollment {enrollment.pk} ({enrollment.subject_key or '-'})")
    if not campaign.is_live(now):
        decision.reasons.insert(1, f"the campaign is {campaign.get_status_display().lower()}")
    return decision


def channel_for(step: Step, channel: str | None = None) -> BaseChannel:
    """The backend for a step's message (test sends in the admin pick one for "best")."""
    return get_channel(channel or step.channel)
