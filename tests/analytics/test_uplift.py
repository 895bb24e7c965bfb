"""Uplift statistics: arms summed in SQL, the arithmetic against worked examples by hand.

Both databases run these tests (SQLite by default, PostgreSQL with DATABASE_URL).
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from omnichannel.analytics.uplift import (
    campaign_uplift,
    newcombe_interval,
    two_sided_z,
    wilson_interval,
)
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
    # Newcombe's hybrid score interval from each arm's Wilson interval, z = 1.959964,
    # z^2 = 3.841459. Wilson for x of n, p = x / n:
    #   centre = (p + z^2 / 2n) / (1 + z^2 / n), half = z / (1 + z^2 / n) *
    #   sqrt(p (1 - p) / n + z^2 / 4n^2).
    # Treated 3/5: 1 + z^2/5 = 1.768292; centre = (0.6 + 0.384146) / 1.768292 = 0.556552;
    #   half = 1.959964 / 1.768292 * sqrt(0.048 + 0.038415) = 1.108393 * 0.293964 = 0.325827;
    #   0.230724 .. 0.882379.
    # Holdout 1/4: 1 + z^2/4 = 1.960365; centre = (0.25 + 0.480182) / 1.960365 = 0.372473;
    #   half = 1.959964 / 1.960365 * sqrt(0.046875 + 0.060023) = 0.999795 * 0.326952 =
    #   0.326885; 0.045587 .. 0.699358.
    # Low = 0.35 - sqrt((0.6 - 0.230724)^2 + (0.699358 - 0.25)^2) = 0.35 - 0.581625 = -0.231625;
    # high = 0.35 + sqrt((0.882379 - 0.6)^2 + (0.25 - 0.045587)^2) = 0.35 + 0.348601 = 0.698601.
    assert comparison.ci_low == pytest.approx(-0.231625, abs=1e-6)
    assert comparison.ci_high == pytest.approx(0.698601, abs=1e-6)
    # Test: pooled p = 4/9, SE0 = sqrt(4/9 * 5/9 * (1/5 + 1/4)) = 1/3, z = 0.35 * 3 = 1.05;
    # p = 2 * (1 - Phi(1.05)) = 2 * (1 - 0.853141) = 0.293718; not significant, and with
    # 3 and 1 converted it could not be (fewer than 5 converted and 5 not per group).
    assert comparison.p_value == pytest.approx(0.293718, abs=1e-6)
    assert not comparison.significant and comparison.winner is None
    # Revenue per person: treated mean 20, variance (3800 - 100^2/5) / 4 = 450; holdout mean
    # 10, variance (1600 - 40^2/4) / 3 = 400. Welch SE = sqrt(450/5 + 400/4) = sqrt(190) =
    # 13.784049; 10 -+ 1.959964 * 13.784049 = 10 -+ 27.016241 = -17.02 .. 37.02.
    assert comparison.revenue_diff == Decimal("10.00")
    assert (comparison.revenue_ci_low, comparison.revenue_ci_high) == (
        Decimal("-17.02"),
        Decimal("37.02"),
    )
    assert comparison.note == (
        "Too few conversions for a test: at least 5 converted and 5 not converted per group. "
        "The revenue interval is approximate with fewer than 30 people per arm."
    )


def profiles_assigned(campaign: Campaign, variants: list[Variant], wanted: int) -> dict:
    """``wanted`` new profiles per variant, each one the hash assigns to that variant."""
    found: dict[int, list[CustomerProfile]] = {variant.pk: [] for variant in variants}
    while any(len(group) < wanted for group in found.values()):
        profile = CustomerProfile.objects.create()
        group = found[groups.pick_variant(profile.pk, campaign.pk, variants).pk]
        if len(group) < wanted:
            group.append(profile)
    return found


def message(enrollment: Enrollment, step: Step, *, at: datetime = NOW, **fields) -> Message:
    return Message.objects.create(
        profile=enrollment.profile,
        channel=step.channel,
        purpose="marketing",
        address="x@example.com",
        campaign=enrollment.campaign,
        enrollment=enrollment,
        step=step,
        created_at=at,
        **fields,
    )


def test_variant_against_the_first_variant_worked_example():
    campaign = campaign_with()
    step = Step.objects.create(campaign=campaign, position=1, channel="email", template="x")
    plain = Step.objects.create(campaign=campaign, position=2, channel="email", template="y")
    control = Variant.objects.create(step=step, name="A")
    challenger = Variant.objects.create(step=step, name="B")
    assigned = profiles_assigned(campaign, [control, challenger], 3)
    # A: 3 people, 1 converted, revenue 10, 0, 0. B: 3 people, all converted: 10, 20, 30.
    for variant, revenues in [(control, ["10", None, None]), (challenger, ["10", "20", "30"])]:
        for profile, amount in zip(assigned[variant.pk], revenues, strict=True):
            enrollment = enroll(campaign, profile=profile)
            if amount:
                order(profile, amount, NOW + timedelta(hours=1))
            for at_step in (step, plain):  # the step without variants adds no arm
                message(enrollment, at_step, variant=variant if at_step == step else None)

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
    # Wilson, z^2 = 3.841459 (formulas in the example above). B 3/3: all converted, so the
    # interval is n / (n + z^2) .. 1 = 3 / 6.841459 = 0.438503 .. 1.
    # A 1/3: 1 + z^2/3 = 2.280486; centre = (1/3 + 0.640243) / 2.280486 = 0.426916;
    #   half = 1.959964 / 2.280486 * sqrt(2/27 + 0.106707) = 0.859452 * 0.425183 = 0.365424;
    #   0.061492 .. 0.792340.
    # Low = 2/3 - sqrt((1 - 0.438503)^2 + (0.792340 - 1/3)^2) = 2/3 - 0.725235 = -0.058569;
    # high = 2/3 + sqrt(0^2 + (1/3 - 0.061492)^2) = 2/3 + 0.271841 = 0.938508.
    assert comparison.ci_low == pytest.approx(-0.058569, abs=1e-6)
    assert comparison.ci_high == pytest.approx(0.938508, abs=1e-6)
    # Pooled p = 4/6; SE0 = sqrt(2/3 * 1/3 * 2/3) = 0.384900; z = sqrt(3) = 1.732051;
    # p = 2 * (1 - Phi(1.732051)) = 0.083265.
    assert comparison.p_value == pytest.approx(0.083265, abs=1e-6)
    assert not comparison.significant and comparison.winner is None
    # Revenue: B mean 20, variance (1400 - 60^2/3) / 2 = 100; A mean 10/3, variance
    # (100 - 10^2/3) / 2 = 100/3. Welch SE = sqrt(100/3 + (100/3)/3) = sqrt(44.444444) =
    # 6.666667; 16.666667 -+ 1.959964 * 6.666667 = 16.666667 -+ 13.066426 = 3.60 .. 29.73.
    assert comparison.revenue_diff == Decimal("16.67")  # 20.00 - 3.33
    assert (comparison.revenue_ci_low, comparison.revenue_ci_high) == (
        Decimal("3.60"),
        Decimal("29.73"),
    )


def test_a_significant_difference_is_flagged_and_names_the_better_arm(settings):
    campaign = campaign_with(holdout_percent=50)
    people_with(campaign, [["10"]] * 30 + [[]] * 10, holdout=False)  # 75 %
    people_with(campaign, [["10"]] * 10 + [[]] * 30, holdout=True)  # 25 %
    report = campaign_uplift(campaign)
    comparison = report.comparisons[0]
    # Pooled p = 0.5, SE0 = sqrt(0.25 * 2/40) = 0.111803; z = 0.5 / 0.111803 = 4.472136.
    assert comparison.p_value == pytest.approx(2 * (1 - 0.9999961), abs=1e-6)
    assert comparison.significant and comparison.winner is report.treated
    assert "Too few" not in comparison.note
    settings.OMNICHANNEL = {**settings.OMNICHANNEL, "UPLIFT_CONFIDENCE": 0.999999}
    comparison = campaign_uplift(campaign).comparisons[0]
    assert not comparison.significant and comparison.winner is None


def test_a_significantly_worse_arm_is_not_the_winner():
    campaign = campaign_with(holdout_percent=50)
    people_with(campaign, [["10"]] * 10 + [[]] * 30, holdout=False)  # 25 %
    people_with(campaign, [["10"]] * 30 + [[]] * 10, holdout=True)  # 75 %
    report = campaign_uplift(campaign)
    (comparison,) = report.comparisons
    assert comparison.diff == pytest.approx(-0.5) and comparison.significant
    assert comparison.winner is report.holdout


@pytest.mark.parametrize(
    ("treated", "significant"),
    [
        (20, True),  # 20 converted, 5 not: the least a test needs
        (21, False),  # 4 not converted
    ],
)
def test_a_test_needs_five_converted_and_five_not_in_each_group(treated, significant):
    campaign = campaign_with(holdout_percent=50)
    people_with(campaign, [["10"]] * treated + [[]] * (25 - treated), holdout=False)
    people_with(campaign, [["10"]] * 5 + [[]] * 20, holdout=True)
    (comparison,) = campaign_uplift(campaign).comparisons
    assert comparison.p_value < 0.001  # 80 or 84 % against 20 %
    assert comparison.significant is significant
    assert (comparison.winner is not None) is significant
    too_few = "Too few conversions for a test: at least 5 converted and 5 not converted per group."
    assert (too_few in comparison.note) is not significant


def test_small_and_extreme_samples_keep_their_interval_inside_the_possible():
    z = two_sided_z(0.95)  # z^2 = 3.841459
    # 3/3 against 0/3: Wilson of 3/3 is 3 / (3 + z^2) .. 1 = 0.438503 .. 1, of 0/3 is
    # 0 .. z^2 / (3 + z^2) = 0 .. 0.561497. Low = 1 - sqrt(0.561497^2 + 0.561497^2) =
    # 1 - 0.794077 = 0.205923; high = 1 + sqrt(0 + 0) = 1.
    assert newcombe_interval(3, 3, 0, 3, z) == pytest.approx((0.205923, 1.0), abs=1e-6)
    # 4/4 against 1/5: Wilson of 4/4 is 4 / (4 + z^2) .. 1 = 0.510109 .. 1; of 1/5:
    # 1 + z^2/5 = 1.768292, centre = (0.2 + 0.384146) / 1.768292 = 0.330345, half =
    # 1.108393 * sqrt(0.032 + 0.038415) = 0.294121: 0.036224 .. 0.624465.
    # Low = 0.8 - sqrt((1 - 0.510109)^2 + (0.624465 - 0.2)^2) = 0.8 - 0.648200 = 0.151800;
    # high = 0.8 + sqrt(0 + (0.2 - 0.036224)^2) = 0.8 + 0.163776 = 0.963776 (not 1.15).
    assert newcombe_interval(4, 4, 1, 5, z) == pytest.approx((0.151800, 0.963776), abs=1e-6)
    assert wilson_interval(1, 5, z) == pytest.approx((0.036224, 0.624465), abs=1e-6)
    assert wilson_interval(0, 3, z) == (0.0, pytest.approx(0.561497, abs=1e-6))

    campaign = campaign_with(holdout_percent=50)
    people_with(campaign, [["10"]] * 3, holdout=False)
    people_with(campaign, [[]] * 3, holdout=True)
    (comparison,) = campaign_uplift(campaign).comparisons
    # Pooled p = 1/2, SE0 = sqrt(1/4 * 2/3) = 0.408248, z = 2.449490: p = 0.014306, but three
    # people per group cannot make a significant result.
    assert comparison.p_value == pytest.approx(0.014306, abs=1e-6)
    assert not comparison.significant and comparison.winner is None
    assert (comparison.ci_low, comparison.ci_high) == pytest.approx((0.205923, 1.0), abs=1e-6)
    assert comparison.note.startswith("Too few conversions for a test")


def test_the_holdout_switched_on_mid_period_counts_both_arms_from_its_start():
    campaign = campaign_with(holdout_percent=20)
    start = NOW - timedelta(days=3)
    # Before the share was set: treated people only, all of whom bought.
    for _ in range(4):
        early = enroll(campaign, at=start)
        order(early.profile, "99.00", start + timedelta(hours=1))
    switched_on = NOW + timedelta(minutes=30)
    later = [enroll(campaign, at=NOW), enroll(campaign, at=switched_on + timedelta(hours=1))]
    order(later[0].profile, "5.00", NOW + timedelta(hours=2))
    held = enroll(campaign, holdout=True, at=switched_on)
    enroll(campaign, holdout=True, at=switched_on + timedelta(hours=2))
    order(held.profile, "7.00", switched_on + timedelta(hours=1))

    report = campaign_uplift(campaign, start=start.date())
    assert report.counted_from == switched_on
    # Only the second of the later treated people is counted, with both held-out ones.
    assert (report.treated.people, report.treated.converted) == (1, 0)
    assert (report.holdout.people, report.holdout.converted) == (2, 1)
    note = report.comparisons[0].note
    assert note.startswith("Counted from 2026-03-16 09:30 UTC, when the holdout started.")
    # A period that starts after the switch leaves nothing out: no note.
    after = campaign_uplift(campaign, start=switched_on)
    assert after.counted_from is None and not after.comparisons[0].note.startswith("Counted")
    assert (after.treated.people, after.holdout.people) == (1, 2)
    # Without any held-out enrollment in the period, everyone counts.
    before = campaign_uplift(campaign, end=switched_on)
    assert before.counted_from is None and before.treated.people == 5


def test_a_variant_whose_channel_cannot_reach_someone_keeps_them_in_its_arm(settings):
    """Intent to treat: people assigned to an SMS variant without a phone are skipped by the
    engine (no message), yet they are the variant's arm, and its control's people too."""
    settings.OMNICHANNEL = {**settings.OMNICHANNEL, "QUIET_HOURS": None, "FREQUENCY_CAPS": {}}
    from omnichannel.campaigns.engine import tick
    from omnichannel.campaigns.models import EnrollmentLog
    from omnichannel.profiles.consents import record_consent
    from omnichannel.profiles.models import Identity, IdentityKind

    campaign = campaign_with(quiet_hours=False)
    step = Step.objects.create(
        campaign=campaign,
        position=1,
        channel="email",
        template="hello",
        content={"email": {"subject.txt": "Hi", "body.txt": "Hello"}},
    )
    by_email = Variant.objects.create(step=step, name="A")
    by_sms = Variant.objects.create(step=step, name="B", channel="sms")
    assigned = profiles_assigned(campaign, [by_email, by_sms], 6)
    for profiles in assigned.values():
        for profile in profiles:  # email only: no phone for the SMS variant
            Identity.objects.create(
                profile=profile, kind=IdentityKind.EMAIL, value=f"p{profile.pk}@example.com"
            )
            record_consent(profile, channel="email", purpose="marketing", granted=True, now=NOW)
            Enrollment.objects.create(
                campaign=campaign, profile=profile, enrolled_at=NOW, next_due_at=NOW
            )
    tick(now=NOW, dispatch=False)
    sms_people = [profile.pk for profile in assigned[by_sms.pk]]
    assert not Message.objects.filter(profile_id__in=sms_people).exists()
    assert EnrollmentLog.objects.filter(
        enrollment__profile_id__in=sms_people, step=step, action="skipped"
    ).count() == len(sms_people)
    for profile in assigned[by_sms.pk][:2] + assigned[by_email.pk][:1]:
        order(profile, "20.00", NOW + timedelta(days=1))

    a, b = campaign_uplift(campaign).arms[2:]
    assert (a.variant_id, a.people, a.converted) == (by_email.pk, 6, 1)
    assert (b.variant_id, b.people, b.converted, b.revenue) == (by_sms.pk, 6, 2, Decimal("40.00"))


def test_a_variant_arm_is_who_reached_the_step_from_when_they_reached_it():
    campaign = campaign_with(holdout_percent=50, measure_window=WEEK)
    first = Step.objects.create(campaign=campaign, position=1, channel="email", template="x")
    second = Step.objects.create(campaign=campaign, position=2, channel="email", template="y")
    only = Variant.objects.create(step=second, name="A", subject="Hi")
    Variant.objects.create(step=second, name="B", subject="Hello")  # weights 1 and 1
    reached_at = NOW + timedelta(days=2)

    sent = enroll(campaign)  # step 2's message: window from its creation
    message(sent, first)
    message(sent, second, at=reached_at, variant=only)
    order(sent.profile, "1.00", NOW + timedelta(days=1))  # before step 2: not the variant's
    order(sent.profile, "2.00", reached_at + WEEK)  # the window's last moment
    logged = enroll(campaign)  # skipped at step 2: window from its first history row
    message(logged, first)
    for action, days in (("deferred", 2), ("skipped", 3)):
        logged.log.create(action=action, step=second, at=NOW + timedelta(days=days))
    order(logged.profile, "4.00", NOW + timedelta(days=2, hours=1))
    waiting = enroll(campaign)  # still before step 2: in no arm of it
    message(waiting, first)
    order(waiting.profile, "8.00", NOW + timedelta(days=1))
    held = enroll(campaign, holdout=True)  # held out: never in a variant arm
    held.log.create(action="exited", step=second, at=NOW)

    report = campaign_uplift(campaign)
    arms = {arm.variant_id: arm for arm in report.arms[2:]}
    expected = {variant.pk: (0, 0, Decimal("0.00")) for variant in second.variants.all()}
    for enrollment, revenue in ((sent, "2.00"), (logged, "4.00")):
        variant = groups.pick_variant(
            enrollment.profile_id, campaign.pk, list(second.variants.all())
        )
        people, converted, total = expected[variant.pk]
        expected[variant.pk] = (people + 1, converted + 1, total + Decimal(revenue))
    assert {pk: (a.people, a.converted, a.revenue) for pk, a in arms.items()} == expected
    # The treated arm still counts from enrollment: all three, with the orders of their first
    # week (1 + 4 + 8; the 2.00 at the end of step 2's window is after it).
    assert (report.treated.people, report.treated.converted) == (3, 3)
    assert report.treated.revenue == Decimal("13.00")


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
    # Nobody converted, yet 0/3 against 0/1 says little: Wilson for 0 of n is
    # 0 .. z^2 / (n + z^2), so the interval is -(3.841459 / 4.841459) .. 3.841459 / 6.841459.
    assert comparison.diff == 0.0
    assert comparison.ci_low == pytest.approx(-0.793451, abs=1e-6)
    assert comparison.ci_high == pytest.approx(0.561497, abs=1e-6)
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
