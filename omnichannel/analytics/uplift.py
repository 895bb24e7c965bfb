"""Uplift of a campaign over doing nothing (its holdout), and of each step variant over the first.

The unit is the person. Each arm is a set of people:

* ``holdout``: people with a held-out enrollment (they got no message);
* ``treated``: people with any other enrollment (intent to treat: whether or not a message
  reached them, so the comparison with the holdout is fair);
* ``variant``: for each step with variants, the people whose message of that step had the
  variant.

A person converted when an ``order_placed`` event of theirs occurred within
[enrolled_at, enrolled_at + ``Campaign.measure_window``] of one of their enrollments in the arm;
their revenue is the sum of those orders' ``amount`` (an order inside two windows counts once).
Everything per person and per arm is summed in SQL (one query for holdout and treated, one for
the variants): people, converted, revenue and the sum of squared revenue per person, which is
all the statistics need.

The statistics (normal approximations, standard library only; ``z`` is the two-sided quantile
of ``UPLIFT_CONFIDENCE``):

* conversion: ``diff = p1 - p0``; interval ``diff +- z * sqrt(p1(1-p1)/n1 + p0(1-p0)/n0)``;
  p-value of the two-proportion z-test with the pooled rate; ``relative = diff / p0``;
* revenue per person: ``diff = m1 - m0``; Welch's standard error
  ``sqrt(s1^2/n1 + s0^2/n0)`` with sample variances ``s^2 = (Q - S^2/n) / (n - 1)``.

Arms too small to compare give a ``Comparison`` whose ``note`` says so, never an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal
from statistics import NormalDist
from typing import Any, Literal

from django.db import connection
from django.db.models import (
    Case,
    DateTimeField,
    ExpressionWrapper,
    F,
    IntegerField,
    QuerySet,
    Value,
    When,
)
from django.utils.translation import gettext as _

from ..campaigns.models import Campaign, Enrollment, Variant
from ..channels.models import Message
from ..conf import app_settings
from ..profiles.models import Event, EventType

CENT = Decimal("0.01")
ArmKind = Literal["holdout", "treated", "variant"]


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
    computed is None, and ``note`` says why.
    """

    arm: ArmResult
    baseline: ArmResult
    diff: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    relative: float | None = None
    p_value: float | None = None
    significant: bool = False
    revenue_diff: Decimal | None = None
    revenue_ci_low: Decimal | None = None
    revenue_ci_high: Decimal | None = None
    note: str = ""


@dataclass
class UpliftReport:
    """The arms of a campaign and the comparisons between them."""

    campaign: Campaign
    start: datetime | None
    end: datetime | None
    confidence: float
    arms: list[ArmResult]
    comparisons: list[Comparison]

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
    by_group = _arm_totals(
        enrollments.annotate(
            arm_a=Case(When(holdout=True, then=Value(1)), default=Value(0)),
            arm_b=Value(0, output_field=IntegerField()),
            person=F("profile_id"),
            start_at=F("enrolled_at"),
            window_end=_window_end("enrolled_at", window),
        )
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

    variants = list(
        Variant.objects.filter(step__campaign=campaign)
        .select_related("step")
        .order_by("step__position", "step_id", "pk")
    )
    if variants:
        messages = Message.objects.filter(
            enrollment__in=enrollments, variant__isnull=False, step__isnull=False
        )
        by_variant = _arm_totals(
            messages.annotate(
                arm_a=F("step_id"),
                arm_b=F("variant_id"),
                person=F("enrollment__profile_id"),
                start_at=F("enrollment__enrolled_at"),
                window_end=_window_end("enrollment__enrolled_at", window),
            )
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
    )


# --- SQL ---------------------------------------------------------------------------------------


def _bound(value: datetime | date | None, *, end_of_day: bool) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    day = value + timedelta(days=1) if end_of_day else value
    return datetime.combine(day, time.min, tzinfo=dt_timezone.utc)


def _window_end(column: str, window: timedelta) -> ExpressionWrapper:
    return ExpressionWrapper(F(column) + Value(window), output_field=DateTimeField())


#: The columns ``_arm_totals`` reads: two arm keys, the person, their window's start and end.
ARM_COLUMNS = ("arm_a", "arm_b", "person", "start_at", "window_end")


def _arm_totals(rows: QuerySet[Any]) -> dict[tuple[int, int], tuple[int, int, Any, Any]]:
    """(arm_a, arm_b) -> (people, converted, revenue, revenue squared summed over people).

    ``rows`` is annotated with ``ARM_COLUMNS``. People are counted once per arm; an order once
    per person and arm, however many of their windows it falls in.
    """
    rows = rows.order_by().values(*ARM_COLUMNS)
    source, params = rows.query.get_compiler(using=rows.db).as_sql()
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
    with connection.cursor() as cursor:
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
    spread = z * math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
    comparison.ci_low, comparison.ci_high = comparison.diff - spread, comparison.diff + spread
    comparison.relative = comparison.diff / p0 if p0 else None
    pooled = (arm.converted + baseline.converted) / (n1 + n0)
    null_error = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    if null_error > 0:
        statistic = comparison.diff / null_error
        comparison.p_value = 2 * (1 - NormalDist().cdf(abs(statistic)))
        comparison.significant = comparison.p_value < 1 - confidence
    else:
        notes.append(_("Not enough data: nobody converted in either arm, or everybody did."))

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
        else:
            notes.append(_("No spread in revenue per person: no revenue interval."))
    comparison.note = " ".join(notes)
    return comparison
