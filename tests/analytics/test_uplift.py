"""Uplift statistics: arms summed in SQL, the arithmetic against worked examples by hand.

Both databases run these tests (SQLite by default, PostgreSQL with DATABASE_URL).
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from omnichannel.analytics.uplift import campaign_uplift, two_sided_z
from omnichannel.campaigns import groups
from omnichannel.campaigns.fanout import fan_out
from omnichannel.campaigns.models import (
    Campaign,
    CampaignKind,
    CampaignStatus,
    Enrollment,
    Step,
    Variant,
)
from omnichannel.channels.models import Message
from omnichannel.profiles.models import CustomerProfile, Event, EventType
from omnichannel.segments.models import Segment

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 16, 9, 0, tzinfo=UTC)
WEEK = timedelta(days=7)


def campaign_with(**fields) -> Campaign:
    fields.setdefault("name", f"Campaign {Campaign.objects.count() + 1}")
    return Campaign.objects.create(trigger="welcome", status=CampaignStatus.ACTIVE, **fields)


def enroll(campaign: Campaign, *, holdout: bool = False, at: datetime = NOW, profile=None, key=""):
    profile = profile or CustomerProfile.objects.create()
    return Enrollment.objects.create(
        campaign=campaign, profile=profile, subject_key=key, holdout=holdout, enrolled_at=at
    )


def order(profile: CustomerProfile, amount: str, at: datetime) -> Event:
    return Event.objects.create(
        type=EventType.ORDER_PLACED, profile=profile, occurred_at=at, amount=Decimal(amount)
    )


def people_with(campaign: Campaign, revenues: list[list[str]], *, holdout: bool) -> list:
    """One enrolled person per entry, with an order per amount, an hour after enrolling."""
    enrollments = []
    for amounts in revenues:
        enrollment = enroll(campaign, holdout=holdout)
        for amount in amounts:
            order(enrollment.profile, amount, NOW + timedelta(hours=1))
        enrollments.append(enrollment)
    return enrollments


def test_treated_against_holdout_worked_example():
    campaign = campaign_with(holdout_percent=40)
    # Treated: 5 people, 3 converted; revenue per person 50 (two orders), 30, 20, 0, 0.
    people_with(campaign, [["30", "20"], ["30"], ["20"], [], []], holdout=False)
    # Holdout: 4 people, 1 converted; revenue per person 40, 0, 0, 0.
    people_with(campaign, [["40"], [], [], []], holdout=True)

    report = campaign_uplift(campaign)

    holdout, treated = report.arms[:2]
    assert (holdout.kind, holdout.people, holdout.converted) == ("holdout", 4, 1)
    assert (treated.kind, treated.people, treated.converted) == ("treated", 5, 3)
    assert (treated.conversion_rate, holdout.conversion_rate) == (0.6, 0.25)
    assert (treated.revenue, holdout.revenue) == (Decimal("100.00"), Decimal("40.00"))
    assert (treated.revenue_per_person, holdout.revenue_per_person) == (
        Decimal("20.00"),
        Decimal("10.00"),
    )
    (comparison,) = report.comparisons
    assert (comparison.arm, comparison.baseline) == (treated, holdout)
    # diff = 0.6 - 0.25 = 0.35; relative = 0.35 / 0.25 = 1.4.
    assert comparison.diff == pytest.approx(0.35)
    assert comparison.relative == pytest.approx(1.4)
    # Interval: SE = sqrt(0.6 * 0.4 / 5 + 0.25 * 0.75 / 4) = sqrt(0.094875) = 0.308018;
    # z(95 %) = 1.959964, so 0.35 -+ 0.603704 = -0.253704 .. 0.953704.
    assert comparison.ci_low == pytest.approx(-0.253704, abs=1e-6)
    assert comparison.ci_high == pytest.approx(0.953704, abs=1e-6)
    # Test: pooled p = 4/9, SE0 = sqrt(4/9 * 5/9 * (1/5 + 1/4)) = 1/3, z = 0.35 * 3 = 1.05;
    # p = 2 * (1 - Phi(1.05)) = 2 * (1 - 0.853141) = 0.293718: not significant.
    assert comparison.p_value == pytest.approx(0.293718, abs=1e-6)
    assert not comparison.significant
    # Revenue per person: treated mean 20, variance (3800 - 100^2/5) / 4 = 450; holdout mean
    # 10, variance (1600 - 40^2/4) / 3 = 400. Welch SE = sqrt(450/5 + 400/4) = sqrt(190) =
    # 13.784049; 10 -+ 1.959964 * 13.784049 = 10 -+ 27.016241 = -17.02 .. 37.02.
    assert comparison.revenue_diff == Decimal("10.00")
    assert (comparison.revenue_ci_low, comparison.revenue_ci_high) == (
        Decimal("-17.02"),
        Decimal("37.02"),
    )
    assert comparison.note == ""


def test_variant_against_the_first_variant_worked_example():
    campaign = campaign_with()
    step = Step.objects.create(campaign=campaign, position=1, channel="email", template="x")
    plain = Step.objects.create(campaign=campaign, position=2, channel="email", template="y")
    control = Variant.objects.create(step=step, name="A")
    challenger = Variant.objects.create(step=step, name="B")
    # A: 3 people, 1 converted, revenue 10, 0, 0. B: 3 people, all converted: 10, 20, 30.
    for variant, revenues in [(control, [["10"], [], []]), (challenger, [["10"], ["20"], ["30"]])]:
        for enrollment in people_with(campaign, revenues, holdout=False):
            for at_step in (step, plain):  # the step without variants adds no arm
                Message.objects.create(
                    profile=enrollment.profile,
                    channel="email",
                    purpose="marketing",
                    address="x@example.com",
                    campaign=campaign,
                    enrollment=enrollment,
                    step=at_step,
                    variant=variant if at_step == step else None,
                )

    report = campaign_uplift(campaign)

    labels = [(arm.kind, arm.label, arm.people, arm.converted) for arm in report.arms]
    assert labels == [
        ("holdout", "Holdout (no message)", 0, 0),
        ("treated", "Treated (everyone not held out)", 6, 4),
        ("variant", "Step 1: A", 3, 1),
        ("variant", "Step 1: B", 3, 3),
    ]
    a, b = report.arms[2:]
    assert (a.step_id, a.variant_id, b.variant_id) == (step.pk, control.pk, challenger.pk)
    assert report.comparisons[0].note.startswith("Not enough data: nobody is held out")
    assert report.comparisons[0].p_value is None and not report.comparisons[0].significant
    # With a share set but nobody drawn into it yet, the note does not send staff to set one.
    campaign.holdout_percent = 10
    campaign.save(update_fields=["holdout_percent"])
    note = campaign_uplift(campaign).comparisons[0].note
    assert note == "Not enough data: nobody held out yet (10 % of the people enrolled are)."
    comparison = report.comparisons[1]
    assert (comparison.arm, comparison.baseline) == (b, a)
    # diff = 1 - 1/3 = 2/3; relative = (2/3) / (1/3) = 2.
    assert comparison.diff == pytest.approx(2 / 3)
    assert comparison.relative == pytest.approx(2.0)
    # SE = sqrt(1 * 0 / 3 + (1/3)(2/3) / 3) = sqrt(2/27) = 0.272166; spread 0.533435.
    assert comparison.ci_low == pytest.approx(2 / 3 - 0.533435, abs=1e-6)
    assert comparison.ci_high == pytest.approx(2 / 3 + 0.533435, abs=1e-6)
    # Pooled p = 4/6; SE0 = sqrt(2/3 * 1/3 * 2/3) = 0.384900; z = sqrt(3) = 1.732051;
    # p = 2 * (1 - Phi(1.732051)) = 0.083265.
    assert comparison.p_value == pytest.approx(0.083265, abs=1e-6)
    assert not comparison.significant
    # Revenue: B mean 20, variance (1400 - 60^2/3) / 2 = 100; A mean 10/3, variance
    # (100 - 10^2/3) / 2 = 100/3. Welch SE = sqrt(100/3 + (100/3)/3) = sqrt(44.444444) =
    # 6.666667; 16.666667 -+ 1.959964 * 6.666667 = 16.666667 -+ 13.066426 = 3.60 .. 29.73.
    assert comparison.revenue_diff == Decimal("16.67")  # 20.00 - 3.33
    assert (comparison.revenue_ci_low, comparison.revenue_ci_high) == (
        Decimal("3.60"),
        Decimal("29.73"),
    )


def test_a_significant_difference_is_flagged(settings):
    campaign = campaign_with(holdout_percent=50)
    people_with(campaign, [["10"]] * 30 + [[]] * 10, holdout=False)  # 75 %
    people_with(campaign, [["10"]] * 10 + [[]] * 30, holdout=True)  # 25 %
    comparison = campaign_uplift(campaign).comparisons[0]
    # Pooled p = 0.5, SE0 = sqrt(0.25 * 2/40) = 0.111803; z = 0.5 / 0.111803 = 4.472136.
    assert comparison.p_value == pytest.approx(2 * (1 - 0.9999961), abs=1e-6)
    assert comparison.significant
    settings.OMNICHANNEL = {**settings.OMNICHANNEL, "UPLIFT_CONFIDENCE": 0.999999}
    assert not campaign_uplift(campaign).comparisons[0].significant


def test_the_conversion_window_counts_its_edges_and_nothing_outside():
    campaign = campaign_with(measure_window=WEEK)
    inside = [
        (enroll(campaign), "1.00", NOW),  # at the enrollment
        (enroll(campaign), "2.00", NOW + WEEK),  # at the window's end
    ]
    outside = [
        (enroll(campaign), "4.00", NOW - timedelta(seconds=1)),  # just before
        (enroll(campaign), "8.00", NOW + WEEK + timedelta(seconds=1)),  # just after
    ]
    for enrollment, amount, at in inside + outside:
        order(enrollment.profile, amount, at)
    # Other events and another campaign's enrollment do not count.
    Event.objects.create(type="basket_line_added", profile=outside[0][0].profile, occurred_at=NOW)
    enroll(campaign_with(), profile=outside[0][0].profile)

    treated = campaign_uplift(campaign).treated
    assert (treated.people, treated.converted, treated.revenue) == (4, 2, Decimal("3.00"))


def test_an_order_in_two_windows_of_one_person_counts_once():
    campaign = campaign_with()
    first = enroll(campaign, key="basket:1")
    enroll(campaign, key="basket:2", profile=first.profile, at=NOW + timedelta(days=1))
    order(first.profile, "25.00", NOW + timedelta(days=2))
    treated = campaign_uplift(campaign).treated
    assert (treated.people, treated.converted, treated.revenue) == (1, 1, Decimal("25.00"))


def test_the_period_is_on_enrolled_at():
    campaign = campaign_with()
    early = enroll(campaign, at=datetime(2026, 3, 1, 23, 59, tzinfo=UTC))
    enroll(campaign, at=datetime(2026, 3, 2, 0, 0, tzinfo=UTC))
    enroll(campaign, at=datetime(2026, 3, 3, 23, 0, tzinfo=UTC))
    enroll(campaign, at=datetime(2026, 3, 4, 0, 0, tzinfo=UTC))
    order(early.profile, "5.00", datetime(2026, 3, 2, 1, tzinfo=UTC))

    by_dates = campaign_uplift(campaign, start=date(2026, 3, 2), end=date(2026, 3, 3))
    assert by_dates.treated.people == 2  # both days included, whole days (UTC)
    by_times = campaign_uplift(
        campaign, start=datetime(2026, 3, 2, tzinfo=UTC), end=datetime(2026, 3, 4, tzinfo=UTC)
    )
    assert by_times.treated.people == 2  # the end is excluded
    assert campaign_uplift(campaign, end=date(2026, 3, 1)).treated.converted == 1
    with pytest.raises(ValueError, match="after its start"):
        campaign_uplift(campaign, start=date(2026, 3, 3), end=date(2026, 3, 2))


def test_empty_arms_and_no_spread_say_not_enough_data():
    campaign = campaign_with(holdout_percent=10)
    report = campaign_uplift(campaign)
    assert [(arm.people, arm.conversion_rate, arm.revenue_per_person) for arm in report.arms] == [
        (0, None, None),
        (0, None, None),
    ]
    (comparison,) = report.comparisons
    assert comparison.diff is None and comparison.p_value is None
    assert comparison.note.startswith("Not enough data")

    # People in both arms, nobody bought: no variation to test, no revenue spread.
    people_with(campaign, [[], [], []], holdout=False)
    people_with(campaign, [[]], holdout=True)
    (comparison,) = campaign_uplift(campaign).comparisons
    assert comparison.diff == 0.0 and comparison.ci_low == comparison.ci_high == 0.0
    assert comparison.p_value is None and comparison.relative is None
    assert not comparison.significant
    assert comparison.revenue_diff == Decimal("0.00")
    assert comparison.revenue_ci_low is None
    assert "nobody converted in either arm" in comparison.note
    assert "two people per arm" in comparison.note  # the holdout has one person

    people_with(campaign, [[]], holdout=True)
    (comparison,) = campaign_uplift(campaign).comparisons
    assert "No spread in revenue" in comparison.note


def test_a_bad_confidence_setting_is_a_clear_error(settings):
    settings.OMNICHANNEL = {**settings.OMNICHANNEL, "UPLIFT_CONFIDENCE": 95}
    with pytest.raises(ValueError, match="UPLIFT_CONFIDENCE"):
        campaign_uplift(campaign_with())


def test_z_quantiles():
    assert two_sided_z(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert two_sided_z(0.90) == pytest.approx(1.644854, abs=1e-6)


def test_a_fanned_out_campaign_is_measured_by_its_stable_groups(settings):
    """Holdout exclusion end to end: the fan-out's held-out people are the holdout arm, they
    got no message, and the variant arms are the people ``pick_variant`` gives each variant."""
    settings.OMNICHANNEL = {**settings.OMNICHANNEL, "QUIET_HOURS": None, "FREQUENCY_CAPS": {}}
    from omnichannel.profiles.consents import record_consent
    from omnichannel.profiles.models import Identity, IdentityKind

    people = []
    for index in range(80):
        profile = CustomerProfile.objects.create(first_name=f"P{index}")
        Identity.objects.create(profile=profile, kind=IdentityKind.EMAIL, value=f"p{index}@ex.com")
        record_consent(profile, channel="email", purpose="marketing", granted=True, now=NOW)
        people.append(profile)
    everyone = Segment.objects.create(
        name="Everyone", rules={"op": "all", "negate": False, "children": []}
    )
    campaign = Campaign.objects.create(
        name="Spring",
        kind=CampaignKind.MASS,
        status=CampaignStatus.ACTIVE,
        audience=everyone,
        holdout_percent=25,
    )
    step = Step.objects.create(
        campaign=campaign,
        position=1,
        channel="email",
        template="spring",
        content={"email": {"subject.txt": "Hi", "body.txt": "Hello"}},
    )
    variants = [Variant.objects.create(step=step, name=n) for n in ("A", "B")]
    fan_out(campaign, now=NOW)
    for profile in people[::3]:
        order(profile, "12.50", NOW + timedelta(days=1))

    report = campaign_uplift(campaign)

    held = {p.pk for p in people if groups.is_held_out(p.pk, campaign)}
    assert report.holdout.people == len(held) > 0
    assert report.treated.people == len(people) - len(held)
    assert not Message.objects.filter(profile_id__in=held).exists()
    buyers = {p.pk for p in people[::3]}
    assert report.holdout.converted == len(held & buyers)
    assert report.holdout.revenue == Decimal("12.50") * len(held & buyers)
    for arm, variant in zip(report.arms[2:], variants, strict=True):
        members = {
            p.pk
            for p in people
            if p.pk not in held and groups.pick_variant(p.pk, campaign.pk, variants) == variant
        }
        assert (arm.variant_id, arm.people) == (variant.pk, len(members))
        assert arm.converted == len(members & buyers)
    # Stable: asked again, the same figures.
    again = campaign_uplift(campaign)
    assert [(a.people, a.converted) for a in again.arms] == [
        (a.people, a.converted) for a in report.arms
    ]
    assert math.isclose(
        report.comparisons[0].diff,
        report.treated.conversion_rate - report.holdout.conversion_rate,
    )
