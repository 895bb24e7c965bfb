"""Enrolling: live campaigns only, audience and exclusion, one per subject, restarts,
re-enrollment, events and scans, the receivers of the fold and of merges."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.db import connection, transaction

from omnichannel.campaigns import enrolling
from omnichannel.campaigns.enrolling import enroll, enroll_from_events, scan_triggers
from omnichannel.campaigns.groups import is_held_out
from omnichannel.campaigns.models import (
    CampaignStatus,
    Enrollment,
    EnrollmentAction,
    EnrollmentLog,
    EnrollmentState,
    ExitReason,
)
from omnichannel.campaigns.triggers import EnrollmentSpec, Trigger
from omnichannel.profiles.merge import merge_profiles
from omnichannel.profiles.models import CustomerProfile, Event
from omnichannel.profiles.recording import record_event
from omnichannel.segments.models import Segment
from omnichannel.signals import events_folded
from tests.campaigns.conftest import NOW

pytestmark = pytest.mark.django_db

HOUR = timedelta(hours=1)


def spec(profile, subject: str = "", due=NOW, **fields) -> EnrollmentSpec:
    return EnrollmentSpec(profile_id=profile.pk, subject_key=subject, due_at=due, **fields)


def segment(name: str, min_orders: int) -> Segment:
    rules = {
        "op": "all",
        "negate": False,
        "children": [{"type": "orders_count", "negate": False, "params": {"min": min_orders}}],
    }
    return Segment.objects.create(name=name, rules=rules)


def actions(enrollment: Enrollment) -> list[str]:
    return list(enrollment.log.values_list("action", flat=True))


# --- enroll ------------------------------------------------------------------------------------


def test_enroll_creates_active_enrollments_with_the_specs_data(make_campaign, make_profile):
    campaign = make_campaign("abandoned_basket")
    ada, bob = make_profile(), make_profile()
    created = enroll(
        campaign,
        [
            spec(ada, "basket:1", NOW + HOUR, activity_at=NOW, context={"basket_id": 1}),
            spec(bob, "basket:2", NOW + 2 * HOUR),
        ],
        now=NOW,
    )
    assert created == 2
    enrollment = Enrollment.objects.get(profile=ada)
    assert enrollment.state == EnrollmentState.ACTIVE
    assert enrollment.step_position == 0
    assert enrollment.subject_key == "basket:1"
    assert enrollment.next_due_at == NOW + HOUR
    assert enrollment.enrolled_at == NOW
    assert enrollment.last_activity_at == NOW
    assert enrollment.context == {"basket_id": 1}
    assert actions(enrollment) == [EnrollmentAction.ENROLLED]
    assert Enrollment.objects.get(profile=bob).next_due_at == NOW + 2 * HOUR


def test_the_holdout_is_decided_when_people_are_enrolled(make_campaign, make_profile):
    # Decided for everyone at enrollment, so people who buy before the first step stay in their
    # arm: the holdout is compared with the treated on the same footing.
    campaign = make_campaign("abandoned_basket", holdout_percent=30)
    people = [make_profile() for _ in range(40)]
    enroll(campaign, [spec(p, f"basket:{p.pk}", NOW + HOUR) for p in people], now=NOW)
    held = set(Enrollment.objects.filter(holdout=True).values_list("profile_id", flat=True))
    assert held == {p.pk for p in people if is_held_out(p.pk, campaign)}
    assert 0 < len(held) < len(people)
    untested = make_campaign("welcome")
    enroll(untested, [spec(p, "", NOW) for p in people[:5]], now=NOW)
    assert not Enrollment.objects.filter(campaign=untested, holdout=True).exists()
    # A transactional message is owed: such a campaign holds nobody out, whatever its share.
    owed = make_campaign("post_purchase", purpose="transactional", holdout_percent=50)
    enroll(owed, [spec(p, f"order:{p.pk}", NOW) for p in people], now=NOW)
    assert not Enrollment.objects.filter(campaign=owed, holdout=True).exists()


@pytest.mark.parametrize(
    "fields",
    [
        {"status": CampaignStatus.DRAFT},
        {"status": CampaignStatus.PAUSED},
        {"status": CampaignStatus.FINISHED},
        {"starts_at": NOW + HOUR},
        {"ends_at": NOW},
    ],
)
def test_only_live_campaigns_enroll(make_campaign, make_profile, fields):
    campaign = make_campaign("welcome", **fields)
    assert enroll(campaign, [spec(make_profile(), "welcome")], now=NOW) == 0
    assert not Enrollment.objects.exists()


def test_audience_and_exclusion_segments_filter_who_is_enrolled(make_campaign, make_profile):
    buyer = make_profile(orders_count=1)
    loyal = make_profile(orders_count=5)
    never = make_profile(orders_count=0)
    campaign = make_campaign(
        "welcome", audience=segment("buyers", 1), exclusion=segment("loyal", 5)
    )
    created = enroll(campaign, [spec(p, "welcome") for p in (buyer, loyal, never)], now=NOW)
    assert created == 1
    assert list(Enrollment.objects.values_list("profile", flat=True)) == [buyer.pk]


def test_one_enrollment_per_subject_and_the_log_only_for_new_rows(make_campaign, make_profile):
    campaign = make_campaign("welcome")
    ada = make_profile()
    assert enroll(campaign, [spec(ada, "welcome"), spec(ada, "welcome")], now=NOW) == 1
    assert enroll(campaign, [spec(ada, "welcome")], now=NOW + HOUR) == 0
    assert enroll(campaign, [spec(ada, "welcome")], now=NOW) == 0  # same time, still no row
    enrollment = Enrollment.objects.get()
    assert actions(enrollment) == [EnrollmentAction.ENROLLED]
    assert enroll(campaign, [spec(ada, "other")], now=NOW) == 1  # another subject


def test_new_activity_restarts_the_timer_of_an_enrollment_with_no_step_done(
    make_campaign, make_profile
):
    campaign = make_campaign("abandoned_basket")
    ada = make_profile()
    enroll(campaign, [spec(ada, "basket:1", NOW + HOUR, activity_at=NOW, restart=True)], now=NOW)
    later = NOW + timedelta(minutes=30)
    created = enroll(
        campaign,
        [
            spec(
                ada,
                "basket:1",
                later + HOUR,
                activity_at=later,
                restart=True,
                context={"basket_id": 1, "fresh": True},
            )
        ],
        now=later,
    )
    assert created == 0
    enrollment = Enrollment.objects.get()
    assert enrollment.next_due_at == later + HOUR
    assert enrollment.last_activity_at == later
    assert enrollment.context == {"basket_id": 1, "fresh": True}
    assert enrollment.enrolled_at == NOW
    assert actions(enrollment) == [EnrollmentAction.ENROLLED, EnrollmentAction.RESTARTED]


def test_a_restart_never_brings_a_step_forward(make_campaign, make_profile):
    campaign = make_campaign("abandoned_basket")
    ada = make_profile()
    enroll(campaign, [spec(ada, "basket:1", NOW + HOUR, activity_at=NOW, restart=True)], now=NOW)
    # The engine deferred the step to the morning (quiet hours): new activity keeps that.
    Enrollment.objects.update(next_due_at=NOW + 10 * HOUR)
    later = NOW + timedelta(minutes=5)
    enroll(
        campaign, [spec(ada, "basket:1", later + HOUR, activity_at=later, restart=True)], now=later
    )
    enrollment = Enrollment.objects.get()
    assert enrollment.next_due_at == NOW + 10 * HOUR
    assert enrollment.last_activity_at == later


def test_after_a_step_the_next_waits_for_new_activity_to_cool_down(make_campaign, make_profile):
    campaign = make_campaign("abandoned_basket")
    ada = make_profile()
    enroll(campaign, [spec(ada, "basket:1", NOW + HOUR, activity_at=NOW, restart=True)], now=NOW)
    # Step 1 went at NOW + 1 h; step 2 is due a day later.
    Enrollment.objects.update(step_position=1, next_due_at=NOW + 25 * HOUR)
    activity = NOW + 24 * HOUR + timedelta(minutes=30)
    enroll(
        campaign,
        [spec(ada, "basket:1", activity + HOUR, activity_at=activity, restart=True)],
        now=activity,
    )
    enrollment = Enrollment.objects.get()
    assert enrollment.next_due_at == activity + HOUR  # later than the scheduled step
    assert enrollment.step_position == 1


def test_restarts_skip_ended_enrollments_old_activity_and_specs_without_restart(
    make_campaign, make_profile
):
    campaign = make_campaign("abandoned_basket")
    ada, bob, cy = make_profile(), make_profile(), make_profile()
    enroll(
        campaign,
        [spec(p, "basket:1", NOW + HOUR, activity_at=NOW, restart=True) for p in (ada, bob, cy)],
        now=NOW,
    )
    Enrollment.objects.filter(profile=ada).update(
        state=EnrollmentState.EXITED, exit_reason=ExitReason.CONVERTED
    )
    later = NOW + HOUR
    enroll(
        campaign,
        [
            spec(ada, "basket:1", later + HOUR, activity_at=later, restart=True),
            # Activity older than what the enrollment saw: late events restart nothing.
            spec(bob, "basket:1", NOW + HOUR, activity_at=NOW - HOUR, restart=True),
            spec(cy, "basket:1", later + HOUR, activity_at=later),  # no restart asked
        ],
        now=later,
    )
    assert set(Enrollment.objects.values_list("next_due_at", flat=True)) == {NOW + HOUR}
    assert not EnrollmentLog.objects.filter(action=EnrollmentAction.RESTARTED).exists()


def test_reenroll_after_holds_back_a_person_enrolled_recently(make_campaign, make_profile):
    campaign = make_campaign("custom_event", reenroll_after=timedelta(days=7))
    ada, bob = make_profile(), make_profile()
    assert enroll(campaign, [spec(ada, "event:1")], now=NOW) == 1
    # Two subjects for one person in one batch: one enrollment (the earliest due).
    two = [spec(bob, "event:2", NOW + HOUR), spec(bob, "event:1", NOW)]
    assert enroll(campaign, two, now=NOW) == 1
    assert Enrollment.objects.get(profile=bob).subject_key == "event:1"
    assert enroll(campaign, [spec(ada, "event:2")], now=NOW + timedelta(days=6)) == 0
    assert enroll(campaign, [spec(ada, "event:2")], now=NOW + timedelta(days=7, hours=1)) == 1


def test_without_reenroll_after_each_subject_enrolls(make_campaign, make_profile):
    campaign = make_campaign("abandoned_basket")
    ada = make_profile()
    assert enroll(campaign, [spec(ada, "basket:1"), spec(ada, "basket:2")], now=NOW) == 2


def test_enroll_costs_the_same_queries_for_5_or_50_specs(
    make_campaign, make_profile, django_assert_num_queries
):
    campaign = make_campaign(
        "abandoned_basket", audience=segment("all buyers", 0), exclusion=segment("loyal", 5)
    )
    profiles = [make_profile() for _ in range(55)]
    # savepoint, audience, exclusion, existing rows, insert, log (INSERT ... SELECT), release
    with django_assert_num_queries(7):
        enroll(campaign, [spec(p, "basket:1") for p in profiles[:5]], now=NOW)
    with django_assert_num_queries(7):
        enroll(campaign, [spec(p, "basket:1") for p in profiles[5:]], now=NOW)
    # Restarting all 55: savepoint, audience, exclusion, existing rows, one UPDATE, log, release.
    later = NOW + HOUR
    with django_assert_num_queries(7):
        enroll(
            campaign,
            [spec(p, "basket:1", later, activity_at=later, restart=True) for p in profiles],
            now=later,
        )
    assert Enrollment.objects.filter(next_due_at=later).count() == 55


def test_enroll_works_through_a_generator_in_chunks(make_campaign, make_profile, monkeypatch):
    monkeypatch.setattr(enrolling, "CHUNK_SIZE", 3)
    campaign = make_campaign("welcome")
    profiles = [make_profile() for _ in range(8)]
    assert enroll(campaign, (spec(p, "welcome") for p in profiles), now=NOW) == 8
    assert EnrollmentLog.objects.count() == 8


# --- from events -------------------------------------------------------------------------------


def events_of(profile, *types: str) -> list[Event]:
    events = [record_event(t, occurred_at=NOW) for t in types]
    Event.objects.filter(pk__in=[e.pk for e in events]).update(profile=profile, processed_at=NOW)
    for event in events:
        event.profile_id = profile.pk
    return events


def test_enroll_from_events_passes_each_campaign_its_event_types(
    make_campaign, make_profile, temporary_trigger
):
    seen: dict[str, list[str]] = {}

    @temporary_trigger
    class Watching(Trigger):
        key = "test_watching"
        event_types = ("user_registered",)

        def enrollments_for_events(self, campaign, events, *, now):
            seen.setdefault(campaign.name, []).extend(e.type for e in events)
            return [EnrollmentSpec(profile_id=e.profile_id, due_at=now) for e in events]

    make_campaign("test_watching", name="watching")
    make_campaign("test_watching", name="paused", status=CampaignStatus.PAUSED)
    ada = make_profile()
    created = enroll_from_events(events_of(ada, "product_viewed", "user_registered"), now=NOW)
    assert created == 1
    assert seen == {"watching": ["user_registered"]}


def test_a_trigger_wanting_every_event_type_gets_every_event(
    make_campaign, make_profile, temporary_trigger
):
    seen: list[str] = []

    @temporary_trigger
    class Everything(Trigger):
        key = "test_everything"
        event_types = ("*",)

        def enrollments_for_events(self, campaign, events, *, now):
            seen.extend(e.type for e in events)
            return []

    make_campaign("test_everything")
    enroll_from_events(events_of(make_profile(), "app_opened", "product_viewed"), now=NOW)
    assert seen == ["app_opened", "product_viewed"]


def test_events_without_interested_campaigns_cost_one_query_or_none(
    make_campaign, make_profile, django_assert_num_queries
):
    events = events_of(make_profile(), "user_registered")
    make_campaign("abandoned_basket")  # wants basket events only
    with django_assert_num_queries(1):  # the live welcome/custom-event campaigns: none
        assert enroll_from_events(events, now=NOW) == 0
    unprocessed = [Event(type="user_registered")]  # no profile: nobody to enroll
    with django_assert_num_queries(0):
        assert enroll_from_events(unprocessed, now=NOW) == 0


def test_a_broken_campaign_is_logged_and_the_others_still_enroll(
    make_campaign, make_profile, temporary_trigger, caplog
):
    @temporary_trigger
    class Broken(Trigger):
        key = "test_broken"
        event_types = ("user_registered",)

        def enrollments_for_events(self, campaign, events, *, now):
            with connection.cursor() as cursor:
                cursor.execute("SELECT * FROM no_such_table_here")
            return []

    make_campaign("test_broken", priority=10)  # runs first
    working = make_campaign("welcome")
    ada = make_profile()
    with caplog.at_level(logging.ERROR, logger="omnichannel.campaigns"):
        created = enroll_from_events(events_of(ada, "user_registered"), now=NOW)
    assert created == 1
    assert Enrollment.objects.get().campaign == working
    assert "enrolling from events failed" in caplog.text


# --- receivers ---------------------------------------------------------------------------------


def test_fold_enrolls_through_the_receiver(make_campaign, make_profile, fold, time_machine):
    time_machine.move_to(NOW, tick=False)
    campaign = make_campaign("custom_event", options={"event_type": "app_opened"})
    record_event("app_opened", identities={"email": "ada@example.com"})
    fold()
    enrollment = Enrollment.objects.get()
    assert enrollment.campaign == campaign
    assert enrollment.enrolled_at == NOW


def test_the_fold_receiver_never_raises_and_keeps_the_transaction_usable(
    make_campaign, make_profile, monkeypatch, caplog
):
    def fail(events, *, now):
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM no_such_table_here")

    monkeypatch.setattr("omnichannel.campaigns.receivers.enroll_from_events", fail)
    ada = make_profile()
    with transaction.atomic(), caplog.at_level(logging.ERROR, logger="omnichannel.campaigns"):
        events_folded.send(sender=Event, events=events_of(ada, "x"), profile_ids={ada.pk})
        # On PostgreSQL this would fail if the error had aborted the outer transaction.
        assert CustomerProfile.objects.filter(pk=ada.pk).exists()
    assert "enrolling from 1 folded events failed" in caplog.text


def test_merge_keeps_the_more_advanced_enrollment_and_ends_the_other(make_campaign, make_profile):
    welcome = make_campaign("welcome")
    basket = make_campaign("abandoned_basket")
    survivor, merged = make_profile(), make_profile()
    assert survivor.pk < merged.pk  # the older profile survives
    enroll(welcome, [spec(survivor, "welcome"), spec(merged, "welcome")], now=NOW)
    enroll(basket, [spec(survivor, "basket:1"), spec(merged, "basket:1")], now=NOW)
    enroll(basket, [spec(merged, "basket:2")], now=NOW)  # no collision: simply moves
    # The merged profile was already welcomed (completed); the survivor's basket reminder
    # and the merged one stand at step 0 both: the survivor's wins the tie.
    Enrollment.objects.filter(profile=merged, campaign=welcome).update(
        state=EnrollmentState.COMPLETED, step_position=2
    )
    merged_pk = merged.pk

    merge_profiles(survivor, merged, reason="test")

    rows = {(e.campaign_id, e.subject_key): e for e in Enrollment.objects.filter(profile=survivor)}
    assert set(rows) == {
        (welcome.pk, "welcome"),
        (welcome.pk, f"welcome~merged{merged_pk}"),
        (basket.pk, "basket:1"),
        (basket.pk, f"basket:1~merged{merged_pk}"),
        (basket.pk, "basket:2"),
    }
    assert rows[(welcome.pk, "welcome")].state == EnrollmentState.COMPLETED  # the merged one
    ended = rows[(welcome.pk, f"welcome~merged{merged_pk}")]
    assert (ended.state, ended.exit_reason) == (EnrollmentState.EXITED, ExitReason.PROFILE_MERGED)
    assert ended.next_due_at is None
    assert actions(ended) == [EnrollmentAction.ENROLLED, EnrollmentAction.EXITED]
    assert rows[(basket.pk, "basket:1")].state == EnrollmentState.ACTIVE
    assert rows[(basket.pk, f"basket:1~merged{merged_pk}")].exit_reason == (
        ExitReason.PROFILE_MERGED
    )


# --- scans -------------------------------------------------------------------------------------


class EveryoneScan(Trigger):
    key = "test_scan_everyone"
    scans = True
    scan_interval = 600
    calls: list = []

    def scan(self, campaign, *, now):
        self.calls.append(now)
        return [
            EnrollmentSpec(profile_id=pk, due_at=now, subject_key=f"day:{now:%d}")
            for pk in CustomerProfile.objects.values_list("pk", flat=True)
        ]


def test_scan_triggers_scans_each_campaign_once_per_interval(
    make_campaign, make_profile, temporary_trigger, django_assert_num_queries
):
    temporary_trigger(EveryoneScan)
    EveryoneScan.calls = []
    campaign = make_campaign("test_scan_everyone")
    make_campaign("test_scan_everyone", status=CampaignStatus.DRAFT)
    make_profile(), make_profile()

    assert scan_triggers(now=NOW) == 2
    campaign.refresh_from_db()
    assert campaign.last_scanned_at == NOW
    with django_assert_num_queries(1):  # nothing due: one query
        assert scan_triggers(now=NOW + timedelta(minutes=5)) == 0
    assert scan_triggers(now=NOW + timedelta(minutes=10)) == 0  # same day: same subjects
    assert EveryoneScan.calls == [NOW, NOW + timedelta(minutes=10)]


def test_a_failing_scan_is_logged_and_waits_for_its_interval(
    make_campaign, temporary_trigger, caplog
):
    @temporary_trigger
    class Failing(Trigger):
        key = "test_scan_failing"
        scans = True
        calls = 0

        def scan(self, campaign, *, now):
            type(self).calls += 1
            raise RuntimeError("boom")

    campaign = make_campaign("test_scan_failing")
    with caplog.at_level(logging.ERROR, logger="omnichannel.campaigns"):
        assert scan_triggers(now=NOW) == 0
    assert "trigger scan failed" in caplog.text
    campaign.refresh_from_db()
    assert campaign.last_scanned_at == NOW
    scan_triggers(now=NOW + timedelta(seconds=10))
    assert Failing.calls == 1
