"""Uplift of a campaign over doing nothing (its holdout), and of each step variant over the first.

The unit is the person. Each arm is a set of people:

* ``holdout``: people with a held-out enrollment (they got no message);
* ``treated``: people with any other enrollment (intent to treat: whether or not a message
  reached them, so the comparison with the holdout is fair);
* ``variant``: for each step with variants, the treated people who reached that step's decision
  (a message of the step, or a history row naming the step: sent, skipped, deferred, exited),
  each in the variant the hash of ``campaigns.groups.pick_variant`` assigns them, whether or not
  that variant's message could be sent (a variant on a channel that cannot reach someone keeps
  them in its arm, as intent to treat).

A person converted when an ``order_placed`` event of theirs occurred within their window of one
of their enrollments in the arm: [enrolled_at, enrolled_at + ``Campaign.measure_window``] for
the holdout, the treated and the first step's variants; for a later step's variants the window
starts when the person reached the step (the message's ``created_at``, else the earliest
history row of the step). Their revenue is the sum of those orders' ``amount`` (an order inside
two windows counts once). Everything per person and per arm is summed in SQL (one query for
holdout and treated, one for all the variants): people, converted, revenue and the sum of
squared revenue per person, which is all the statistics need.

When the period has held-out enrollments, holdout and treated are compared only from the first
of them on: a share switched on mid-period would otherwise compare a treated arm partly from
before the holdout existed with a holdout that has no such people.

The statistics (standard library only; ``z`` is the two-sided normal quantile of
``UPLIFT_CONFIDENCE``):

* conversion: ``diff = p1 - p0``; Newcombe's hybrid score interval (method 10 of Newcombe
  1998), built from the Wilson score interval of each arm, so it stays within [-1, 1] and is
  not degenerate at 0 % or 100 %; p-value of the two-proportion z-test with the pooled rate,
  called significant only when each arm has at least ``MIN_OUTCOMES`` converted and not
  converted people (below that the normal approximation is not trusted); ``relative = diff /
  p0``;
* revenue per person: ``diff = m1 - m0``; Welch's standard error ``sqrt(s1^2/n1 + s0^2/n0)``
  with sample variances ``s^2 = (Q - S^2/n) / (n - 1)`` and the normal quantile (approximate
  under ``SMALL_ARM`` people).

Arms too small to compare give a ``Comparison`` whose ``note`` says so, never an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal
from statistics import NormalDist
from typing import Any, Literal

from django.db import connection, transaction
from django.db.models import (
    Case,
    DateTimeField,
    Exists,
    ExpressionWrapper,
    F,
    IntegerField,
    Min,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Coalesce
from django.utils.translation import gettext as _

from ..campaigns.groups import variant_expression
from ..campaigns.models import Campaign, Enrollment, EnrollmentLog, Step, Variant
from ..channels.models import Message
from ..conf import app_settings
from ..profiles.models import Event, EventType

CENT = Decimal("0.01")
ArmKind = Literal["holdout", "treated", "variant"]
#: A conversion test needs at least this many converted and not converted people per arm.
MIN_OUTCOMES = 5
#: Under this many people in an arm, the revenue interval (normal quantile) is approximate.
SMALL_ARM = 30


@dataclass
class ArmResult:
    """One arm: how many people, how many converted, and their revenue."""

    label: str
    kind: ArmKind
    step_id: int | None
    variant_id: int | None
    people: int = 0
    converted: int = 0
    #: converted / people (a fraction); None without people.
    conversion_rate: float | None = None
    revenue: Decimal = Decimal("0.00")
    #: revenue / people; None without people.
    revenue_per_person: Decimal | None = None
    #: Sum over the people of their revenue squared (for the revenue interval).
    revenue_squares: float = field(default=0.0, repr=False)

    @property
    def revenue_variance(self) -> float | None:
        """Sample variance of revenue per person; None with fewer than two people."""
        if self.people < 2:
            return None
        total = float(self.revenue)
        variance = (self.revenue_squares - total * total / self.people) / (self.people - 1)
        return max(variance, 0.0)  # rounding can make a zero variance a hair negative


@dataclass
class Comparison:
    """``arm`` against ``baseline``: the differences, their intervals and the test.

    ``diff``, ``ci_low``, ``ci_high`` and ``relative`` are fractions (0.012 = 1.2 points or
    1.2 %); the revenue figures are per person, in the shop's money. A value that cannot be
    computed is None, and ``note`` says why. ``winner`` is the arm whose conversion rate is
    significantly higher (``arm`` or ``baseline``), None when the test is not significant.
    """

    arm: ArmResult
    baseline: ArmResult
    diff: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    relative: float | None = None
    p_value: float | None = None
    significant: bool = False
    winner: ArmResult | None = None
    revenue_diff: Decimal | None = None
    revenue_ci_low: Decimal | None = None
    revenue_ci_high: Decimal | None = None
    note: str = ""


@dataclass
class UpliftReport:
    """The arms of a campaign and the comparisons between them.

    ``counted_from``: when the holdout started within the period, the time from which holdout
    and treated are counted (None when nothing earlier was left out).
    """

    campaign: Campaign
    start: datetime | None
    end: datetime | None
    confidence: float
    arms: list[ArmResult]
    comparisons: list[Comparison]
    counted_from: datetime | None = None

    @property
    def holdout(self) -> ArmResult:
        return next(arm for arm in self.arms if arm.kind == "holdout")

    @property
    def treated(self) -> ArmResult:
        return next(arm for arm in self.arms if arm.kind == "treated")


def campaign_uplift(
    campaign: Campaign,
    start: datetime | date | None = None,
    end: datetime | date | None = None,
) -> UpliftReport:
    """Arms and comparisons of ``campaign`` for the people enrolled in [start, end).

    A date ``end`` includes that whole day (UTC); a date ``start`` starts at its midnight.
    Raises ValueError for an end not after the start or an UPLIFT_CONFIDENCE outside (0, 1).
    """
    start_at, end_at = _bound(start, end_of_day=False), _bound(end, end_of_day=True)
    if start_at is not None and end_at is not None and end_at <= start_at:
        raise ValueError(_("The end of the period must be after its start."))
    confidence = float(app_settings.UPLIFT_CONFIDENCE)
    if not 0 < confidence < 1:
        raise ValueError(
            _("UPLIFT_CONFIDENCE must be between 0 and 1, not %(value)r.") % {"value": confidence}
        )
    enrollments = Enrollment.objects.filter(campaign=campaign)
    if start_at is not None:
        enrollments = enrollments.filter(enrolled_at__gte=start_at)
    if end_at is not None:
        enrollments = enrollments.filter(enrolled_at__lt=end_at)

    holdout = ArmResult(_("Holdout (no message)"), "holdout", None, None)
    treated = ArmResult(_("Treated (everyone not held out)"), "treated", None, None)
    window = campaign.measure_window
    counted_from = _holdout_start(enrollments)
    compared = enrollments
    if counted_from is not None:
        compared = enrollments.filter(enrolled_at__gte=counted_from)
    by_group = _arm_totals(
        [
            compared.annotate(
                arm_a=Case(When(holdout=True, then=Value(1)), default=Value(0)),
                arm_b=Value(0, output_field=IntegerField()),
                person=F("profile_id"),
                start_at=F("enrolled_at"),
                window_end=_window_end(F("enrolled_at"), window),
            )
        ]
    )
    _fill(holdout, by_group.get((1, 0)))
    _fill(treated, by_group.get((0, 0)))
    arms = [holdout, treated]
    comparisons = [_compare(treated, holdout, confidence)]
    if not holdout.people and not campaign.holdout_percent:
        comparisons[0].note = _(
            "Not enough data: nobody is held out (set a holdout share on the campaign)."
        )
    elif not holdout.people:
        comparisons[0].note = _(
            "Not enough data: nobody held out yet (%(share)s %% of the people enrolled are)."
        ) % {"share": campaign.holdout_percent}
    elif counted_from is not None:
        since = _("Counted from %(time)s UTC, when the holdout started.") % {
            "time": f"{counted_from:%Y-%m-%d %H:%M}"
        }
        comparisons[0].note = f"{since} {comparisons[0].note}".strip()

    variants = list(
        Variant.objects.filter(step__campaign=campaign)
        .select_related("step")
        .order_by("step__position", "step_id", "pk")
    )
    if variants:
        by_step: dict[int, list[Variant]] = {}
        for variant in variants:
            by_step.setdefault(variant.step_id, []).append(variant)
        first_position = min(
            Step.objects.filter(campaign=campaign).values_list("position", flat=True)
        )
        treated_enrollments = enrollments.filter(holdout=False)
        by_variant = _arm_totals(
            [
                _variant_rows(
                    treated_enrollments,
                    step_variants[0].step,
                    step_variants,
                    window,
                    first=step_variants[0].step.position <= first_position,
                )
                for step_variants in by_step.values()
            ]
        )
        control: ArmResult | None = None
        for variant in variants:
            arm = ArmResult(
                _("Step %(position)s: %(name)s")
                % {"position": variant.step.position, "name": variant.name},
                "variant",
                variant.step_id,
                variant.pk,
            )
            _fill(arm, by_variant.get((variant.step_id, variant.pk)))
            arms.append(arm)
            if control is None or control.step_id != arm.step_id:
                control = arm  # the step's first variant is its control
                continue
            comparisons.append(_compare(arm, control, confidence))
    return UpliftReport(
        campaign=campaign,
        start=start_at,
        end=end_at,
        confidence=confidence,
        arms=arms,
        comparisons=comparisons,
        counted_from=counted_from,
    )


# --- SQL ---------------------------------------------------------------------------------------


def _bound(value: datetime | date | None, *, end_of_day: bool) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    day = value + timedelta(days=1) if end_of_day else value
    return datetime.combine(day, time.min, tzinfo=dt_timezone.utc)


def _window_end(start: Any, window: timedelta) -> ExpressionWrapper:
    return ExpressionWrapper(start + Value(window), output_field=DateTimeField())


def _holdout_start(enrollments: QuerySet[Enrollment]) -> datetime | None:
    """The first held-out enrollment of the period, when treated enrollments came before it."""
    bounds = enrollments.order_by().aggregate(
        first_held=Min("enrolled_at", filter=Q(holdout=True)),
        first_treated=Min("enrolled_at", filter=Q(holdout=False)),
    )
    first_held, first_treated = bounds["first_held"], bounds["first_treated"]
    if first_held is None or first_treated is None or first_treated >= first_held:
        return None
    return first_held


def _variant_rows(
    enrollments: QuerySet[Enrollment],
    step: Step,
    variants: Sequence[Variant],
    window: timedelta,
    *,
    first: bool,
) -> QuerySet[Enrollment]:
    """The treated enrollments that reached ``step``'s decision, with their assigned variant."""
    message = Message.objects.filter(enrollment=OuterRef("pk"), step_id=step.pk).order_by()
    logged = EnrollmentLog.objects.filter(enrollment=OuterRef("pk"), step_id=step.pk)
    if first:
        start: Any = F("enrolled_at")
    else:
        start = Coalesce(
            Subquery(message.values("created_at")[:1]),
            Subquery(logged.order_by("at").values("at")[:1]),
            output_field=DateTimeField(),
        )
    return enrollments.filter(Q(Exists(message)) | Q(Exists(logged))).annotate(
        arm_a=Value(step.pk, output_field=IntegerField()),
        arm_b=variant_expression(step.campaign_id, variants),
        person=F("profile_id"),
        start_at=start,
        window_end=_window_end(start, window),
    )


#: The columns ``_arm_totals`` reads: two arm keys, the person, their window's start and end.
ARM_COLUMNS = ("arm_a", "arm_b", "person", "start_at", "window_end")


def _arm_totals(
    sources: Sequence[QuerySet[Any]],
) -> dict[tuple[int, int], tuple[int, int, Any, Any]]:
    """(arm_a, arm_b) -> (people, converted, revenue, revenue squared summed over people).

    Each of ``sources`` is annotated with ``ARM_COLUMNS``; their rows are taken together
    (UNION ALL). People are counted once per arm; an order once per person and arm, however
    many of their windows it falls in.
    """
    selects, params = [], []
    for rows in sources:
        rows = rows.order_by().values(*ARM_COLUMNS)
        sql, source_params = rows.query.get_compiler(using=rows.db).as_sql()
        selects.append(sql)
        params.extend(source_params)
    source = " UNION ALL ".join(selects)
    a, b, person, start, end = (connection.ops.quote_name(c) for c in ARM_COLUMNS)
    event = connection.ops.quote_name(Event._meta.db_table)

    def column(name: str) -> str:
        return connection.ops.quote_name(Event._meta.get_field(name).column)

    # Only buyers add to the sums (everyone else adds 0 and 0 squared), so the people are
    # just counted, and the per-person rows are those of the buyers: no join of every person.
    sql = f"""
        WITH ae AS ({source}),
        orders AS (
            SELECT DISTINCT ae.{a} AS arm_a, ae.{b} AS arm_b, ae.{person} AS person,
                e.{column("id")} AS event_id, COALESCE(e.{column("amount")}, 0) AS amount
            FROM ae JOIN {event} e ON e.{column("profile")} = ae.{person}
            WHERE e.{column("type")} = %s
                AND e.{column("occurred_at")} >= ae.{start}
                AND e.{column("occurred_at")} <= ae.{end}
        ),
        buyers AS (
            SELECT arm_a, arm_b, person, SUM(amount) AS revenue
            FROM orders GROUP BY arm_a, arm_b, person
        ),
        bought AS (
            SELECT arm_a, arm_b, COUNT(*) AS converted, SUM(revenue) AS revenue,
                SUM(revenue * revenue) AS squares
            FROM buyers GROUP BY arm_a, arm_b
        ),
        people AS (
            SELECT {a} AS arm_a, {b} AS arm_b, COUNT(DISTINCT {person}) AS people
            FROM ae GROUP BY {a}, {b}
        )
        SELECT p.arm_a, p.arm_b, p.people, COALESCE(q.converted, 0),
            COALESCE(q.revenue, 0), COALESCE(q.squares, 0)
        FROM people p LEFT JOIN bought q ON q.arm_a = p.arm_a AND q.arm_b = p.arm_b
    """  # noqa: S608  (quoted names and the ORM's SQL; values are parameters)
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # The correlated look-ups of the variant arms make the estimated cost large enough
            # for PostgreSQL's JIT, whose compiling (0.9 s at 100,000 enrollments) is most of
            # the statement's time and saves nothing here (as in ``campaigns.fanout``).
            cursor.execute("SET LOCAL jit = off")
        cursor.execute(sql, [*params, EventType.ORDER_PLACED.value])
        return {
            (int(arm_a), int(arm_b)): (int(people), int(converted or 0), revenue, squares)
            for arm_a, arm_b, people, converted, revenue, squares in cursor.fetchall()
        }


def _fill(arm: ArmResult, totals: tuple[int, int, Any, Any] | None) -> None:
    if totals is None:
        return
    people, converted, revenue, squares = totals
    arm.people, arm.converted = people, converted
    arm.revenue = _money(revenue)
    arm.revenue_squares = float(squares or 0)
    if people:
        arm.conversion_rate = converted / people
        arm.revenue_per_person = (arm.revenue / people).quantize(CENT)


def _money(value: Any) -> Decimal:
    # SQLite sums decimals as floats: through str, so 0.1 + 0.2 comes back as 0.30.
    return Decimal(str(value or 0)).quantize(CENT)


# --- statistics ---------------------------------------------------------------------------------


def two_sided_z(confidence: float) -> float:
    """The normal quantile of a two-sided interval at ``confidence`` (1.95996 for 0.95)."""
    return NormalDist().inv_cdf(1 - (1 - confidence) / 2)


def wilson_interval(converted: int, people: int, z: float) -> tuple[float, float]:
    """Wilson's score interval of the proportion ``converted / people`` (people > 0)."""
    p = converted / people
    z2 = z * z
    centre = (p + z2 / (2 * people)) / (1 + z2 / people)
    half = z / (1 + z2 / people) * math.sqrt(p * (1 - p) / people + z2 / (4 * people * people))
    return max(centre - half, 0.0), min(centre + half, 1.0)


def newcombe_interval(
    converted1: int, people1: int, converted0: int, people0: int, z: float
) -> tuple[float, float]:
    """Newcombe's hybrid score interval of ``p1 - p0`` (method 10 of Newcombe 1998)."""
    p1, p0 = converted1 / people1, converted0 / people0
    low1, high1 = wilson_interval(converted1, people1, z)
    low0, high0 = wilson_interval(converted0, people0, z)
    diff = p1 - p0
    return (
        diff - math.sqrt((p1 - low1) ** 2 + (high0 - p0) ** 2),
        diff + math.sqrt((high1 - p1) ** 2 + (p0 - low0) ** 2),
    )


def _compare(arm: ArmResult, baseline: ArmResult, confidence: float) -> Comparison:
    comparison = Comparison(arm=arm, baseline=baseline)
    notes = []
    n1, n0 = arm.people, baseline.people
    if not n1 or not n0:
        empty = arm if not n1 else baseline
        comparison.note = _("Not enough data: nobody in %(arm)s.") % {"arm": empty.label}
        return comparison
    z = two_sided_z(confidence)
    p1, p0 = arm.converted / n1, baseline.converted / n0
    comparison.diff = p1 - p0
    comparison.ci_low, comparison.ci_high = newcombe_interval(
        arm.converted, n1, baseline.converted, n0, z
    )
    comparison.relative = comparison.diff / p0 if p0 else None
    pooled = (arm.converted + baseline.converted) / (n1 + n0)
    null_error = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    if null_error > 0:
        statistic = comparison.diff / null_error
        comparison.p_value = 2 * (1 - NormalDist().cdf(abs(statistic)))
        enough = all(
            min(group.converted, group.people - group.converted) >= MIN_OUTCOMES
            for group in (arm, baseline)
        )
        if enough:
            comparison.significant = comparison.p_value < 1 - confidence
        else:
            notes.append(
                _(
                    "Too few conversions for a test: at least %(n)s converted and %(n)s not "
                    "converted per group."
                )
                % {"n": MIN_OUTCOMES}
            )
    else:
        notes.append(_("Not enough data: nobody converted in either arm, or everybody did."))
    if comparison.significant:
        comparison.winner = arm if comparison.diff > 0 else baseline

    comparison.revenue_diff = arm.revenue_per_person - baseline.revenue_per_person  # type: ignore[operator]
    v1, v0 = arm.revenue_variance, baseline.revenue_variance
    if v1 is None or v0 is None:
        notes.append(_("Not enough data for the revenue interval: it needs two people per arm."))
    else:
        error = math.sqrt(v1 / n1 + v0 / n0)
        if error > 0:
            exact = float(arm.revenue) / n1 - float(baseline.revenue) / n0
            comparison.revenue_ci_low = _money(exact - z * error)
            comparison.revenue_ci_high = _money(exact + z * error)
            if min(n1, n0) < SMALL_ARM:
                notes.append(
                    _("The revenue interval is approximate with fewer than %(n)s people per arm.")
                    % {"n": SMALL_ARM}
                )
        else:
            notes.append(_("No spread in revenue per person: no revenue interval."))
    comparison.note = " ".join(notes)
    return comparison
