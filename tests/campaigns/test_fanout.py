"""Mass campaigns: set-based fan-out of enrollments and first messages, and its Celery chain.

The rows the fan-out writes are checked field by field; who it leaves to the engine is checked
by running the engine's tick on them afterwards. Both databases run these tests (SQLite by
default, PostgreSQL with DATABASE_URL).
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from omnichannel.campaigns import fanout, groups
from omnichannel.campaigns.engine import tick
from omnichannel.campaigns.fanout import fan_out, launch_due_mass_campaigns
from omnichannel.campaigns.models import (
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
from omnichannel.channels.models import (
    Message,
    MessageStatus,
    MessageStatusChange,
    Suppression,
    SuppressionReason,
)
from omnichannel.profiles.consents import record_consent
from omnichannel.profiles.models import CustomerProfile, Identity, IdentityKind
from omnichannel.segments.models import EngagementScore, Segment

pytestmark = pytest.mark.django_db

#: A Monday, 09:00 UTC (10:00 in Berlin).
NOW = datetime(2026, 3, 16, 9, 0, tzinfo=UTC)
CONTENT = {
    "email": {"subject.txt": "News for {{ first_name }}", "body.txt": "Hello {{ first_name }}"},
    "sms": {"body.txt": "Hello {{ first_name }}"},
}


@pytest.fixture(autouse=True)
def shop(settings):
    """The demo's channels (email costs 0.0008 GBP); quiet hours and caps as shipped."""
    settings.OMNICHANNEL = {
        **django_settings.OMNICHANNEL,
        "FREQUENCY_CAPS": {"day": 2, "week": 5},
        "QUIET_HOURS": (21, 8),
        "DEFAULT_SEND_HOUR": 10,
        "MASS_FANOUT_CHUNK": 50_000,
    }
    return settings


#: On PostgreSQL a chunk is one statement of CTEs; the portable path (SQLite's) runs there too,
#: so both are held to the same expectations.
CHUNK_PATHS = ["statements", *(["one statement"] if connection.vendor == "postgresql" else [])]


@pytest.fixture(autouse=True, params=CHUNK_PATHS)
def chunk_path(request, monkeypatch):
    if request.param == "statements":
        monkeypatch.setattr(fanout, "single_statement", lambda: False)
    return request.param


def use(settings, **overrides):
    settings.OMNICHANNEL = {**settings.OMNICHANNEL, **overrides}


def everyone() -> Segment:
    return Segment.objects.get_or_create(
        name="Everyone", defaults={"rules": {"op": "all", "negate": False, "children": []}}
    )[0]


def buyers() -> Segment:
    rules = {
        "op": "all",
        "negate": False,
        "children": [{"type": "orders_count", "negate": False, "params": {"min": 1}}],
    }
    return Segment.objects.get_or_create(name="Buyers", defaults={"rules": rules})[0]


def mass(*steps: tuple[str, timedelta], **fields) -> Campaign:
    fields.setdefault("audience", everyone())
    made = Campaign.objects.create(
        name=fields.pop("name", f"Mass {Campaign.objects.count() + 1}"),
        kind=CampaignKind.MASS,
        status=fields.pop("status", CampaignStatus.ACTIVE),
        **fields,
    )
    for position, (channel, wait) in enumerate(steps or [("email", timedelta(0))], start=1):
        Step.objects.create(
            campaign=made,
            position=position,
            channel=channel,
            wait=wait,
            template="spring_sale",
            content=CONTENT,
        )
    return made


def person(
    name: str = "Ada",
    *,
    email: bool = True,
    consent: bool | None = True,
    phone: bool = False,
    best_hour: int | None = None,
    **fields,
) -> CustomerProfile:
    profile = CustomerProfile.objects.create(first_name=name, **fields)
    if email:
        Identity.objects.create(
            profile=profile, kind=IdentityKind.EMAIL, value=f"{name.lower()}{profile.pk}@ex.com"
        )
    if consent is not None:
        record_consent(
            profile, channel="email", purpose="marketing", granted=consent, now=NOW - timedelta(1)
        )
    if phone:
        Identity.objects.create(
            profile=profile, kind=IdentityKind.PHONE, value=f"+4477009{profile.pk:05d}"
        )
        record_consent(profile, channel="sms", purpose="marketing", granted=True, now=NOW)
    if best_hour is not None:
        EngagementScore.objects.create(
            profile=profile, preferred_channel="email", best_hour=best_hour, computed_at=NOW
        )
    return profile


def enrollment_of(campaign: Campaign, profile: CustomerProfile) -> Enrollment:
    return Enrollment.objects.get(campaign=campaign, profile=profile)


def message_of(campaign: Campaign, profile: CustomerProfile) -> Message | None:
    return Message.objects.filter(campaign=campaign, profile=profile).first()


# --- enrollments -------------------------------------------------------------------------------


def test_everyone_in_the_audience_is_enrolled_once_except_the_excluded(settings):
    use(settings, MASS_FANOUT_CHUNK=2)  # several chunks
    people = [person(f"P{i}") for i in range(5)]
    excluded = person("Buyer", orders_count=3)
    campaign = mass(exclusion=buyers())

    assert fan_out(campaign, now=NOW) == 5
    assert set(
        Enrollment.objects.filter(campaign=campaign).values_list("profile_id", flat=True)
    ) == {p.pk for p in people}
    assert not Enrollment.objects.filter(profile=excluded).exists()
    campaign.refresh_from_db()
    assert campaign.launched_at == NOW
    # Launched: not again.
    assert fan_out(campaign, now=NOW + timedelta(minutes=1)) == 0


def test_a_crashed_fan_out_run_again_adds_only_what_is_missing(settings, monkeypatch):
    use(settings, MASS_FANOUT_CHUNK=2)
    people = [person(f"P{i}") for i in range(6)]
    campaign = mass(("email", timedelta(0)), ("email", timedelta(days=2)))
    real_chunk = fanout.fan_out_chunk
    calls = []

    def crash_on_the_second_chunk(plan, *, after, upto):
        calls.append(after)
        if len(calls) == 2:
            raise RuntimeError("worker killed")
        return real_chunk(plan, after=after, upto=upto)

    monkeypatch.setattr(fanout, "fan_out_chunk", crash_on_the_second_chunk)
    with pytest.raises(RuntimeError):
        fan_out(campaign, now=NOW, history=True)
    campaign.refresh_from_db()
    assert campaign.launched_at is None
    assert Enrollment.objects.filter(campaign=campaign).count() == 2  # the first chunk committed
    monkeypatch.setattr(fanout, "fan_out_chunk", real_chunk)

    later = NOW + timedelta(minutes=5)
    assert fan_out(campaign, now=later, history=True) == 4
    assert fan_out(campaign, now=later, history=True) == 0  # launched now
    for profile in people:
        assert Enrollment.objects.filter(campaign=campaign, profile=profile).count() == 1
        assert Message.objects.filter(campaign=campaign, profile=profile).count() == 1
    # History once per enrollment and message, whichever run wrote it.
    enrolled = EnrollmentLog.objects.filter(
        enrollment__campaign=campaign, action=EnrollmentAction.ENROLLED
    )
    assert enrolled.count() == 6
    assert MessageStatusChange.objects.filter(message__campaign=campaign).count() == 6


def test_the_same_chunk_twice_adds_nothing():
    people = [person(f"P{i}") for i in range(3)]
    campaign = mass(("email", timedelta(0)), ("sms", timedelta(days=1)))
    plan = fanout.plan_fan_out(campaign, now=NOW, history=True)
    assert fanout.fan_out_chunk(plan, after=0, upto=people[-1].pk) == 3
    assert fanout.fan_out_chunk(plan, after=0, upto=people[-1].pk) == 0
    assert Message.objects.filter(campaign=campaign).count() == 3
    assert EnrollmentLog.objects.filter(enrollment__campaign=campaign).count() == 6
    assert MessageStatusChange.objects.filter(message__campaign=campaign).count() == 3


@pytest.mark.parametrize(
    "change",
    [
        {"status": CampaignStatus.DRAFT},
        {"status": CampaignStatus.PAUSED},
        {"send_at": NOW + timedelta(hours=1)},
        {"launched_at": NOW - timedelta(days=1)},
        {"kind": CampaignKind.TRIGGERED, "trigger": "welcome"},
        {"ends_at": NOW},
        {"starts_at": NOW + timedelta(minutes=1)},
    ],
)
def test_only_a_due_mass_campaign_fans_out(change):
    person()
    campaign = mass()
    Campaign.objects.filter(pk=campaign.pk).update(**change)
    campaign.refresh_from_db()
    assert fan_out(campaign, now=NOW) == 0
    assert not Enrollment.objects.exists()
    assert not fanout.due_campaigns(now=NOW).exists()


def test_a_send_time_in_the_past_is_due_now():
    profile = person()
    campaign = mass(send_at=NOW - timedelta(hours=2))
    assert fanout.due_campaigns(now=NOW).get() == campaign
    fan_out(campaign, now=NOW)
    assert enrollment_of(campaign, profile).enrolled_at == NOW
    assert message_of(campaign, profile).next_attempt_at == NOW


def test_statements_per_chunk_do_not_grow_with_the_audience(settings):
    counts = []
    for size in (3, 12):
        Enrollment.objects.all().delete()
        for i in range(size - CustomerProfile.objects.count()):
            person(f"Q{i}", best_hour=9 + i % 10)
        campaign = mass(name=f"Size {size}", send_at_best_hour=True)
        with CaptureQueriesContext(connection) as queries:
            fan_out(campaign, now=NOW)
        counts.append(len(queries))
        assert Message.objects.filter(campaign=campaign).count() > 0
    assert counts[0] == counts[1], counts


# --- send times --------------------------------------------------------------------------------


def test_best_hour_picks_each_persons_next_hour_in_shop_time(settings):
    settings.TIME_ZONE = "Europe/Berlin"  # NOW is 10:00 there
    use(settings, DEFAULT_SEND_HOUR=14, QUIET_HOURS=(22, 7))
    now_hour = person("Now", best_hour=10)  # in their hour: now
    later = person("Later", best_hour=17)  # 17:00 Berlin = 16:00 UTC today
    passed = person("Passed", best_hour=8)  # tomorrow 08:00 Berlin = 07:00 UTC
    unknown = person("Unknown")  # the default hour, 14:00 Berlin = 13:00 UTC
    no_hour = person("NoHour")
    EngagementScore.objects.create(
        profile=no_hour, preferred_channel="email", best_hour=None, computed_at=NOW
    )
    night = person("Night", best_hour=23)  # quiet in Berlin: left to the engine
    new_york = person("NY", best_hour=11, time_zone="America/New_York")  # 06:00 there: quiet
    campaign = mass(("email", timedelta(0)), ("email", timedelta(days=3)), send_at_best_hour=True)

    fan_out(campaign, now=NOW)

    expected = {
        now_hour: NOW,
        later: datetime(2026, 3, 16, 16, 0, tzinfo=UTC),
        passed: datetime(2026, 3, 17, 7, 0, tzinfo=UTC),
        unknown: datetime(2026, 3, 16, 13, 0, tzinfo=UTC),
        no_hour: datetime(2026, 3, 16, 13, 0, tzinfo=UTC),
        night: datetime(2026, 3, 16, 22, 0, tzinfo=UTC),
        new_york: datetime(2026, 3, 16, 10, 0, tzinfo=UTC),
    }
    for profile, at in expected.items():
        enrollment = enrollment_of(campaign, profile)
        message = message_of(campaign, profile)
        if profile is not now_hour:
            # Later hours (and quiet ones) are the engine's: it makes the message when due,
            # after checking that the person has not ordered or left meanwhile.
            assert message is None, profile.first_name
            assert (enrollment.step_position, enrollment.next_due_at) == (0, at)
            continue
        assert message.next_attempt_at == at, profile.first_name
        assert enrollment.last_message_at == at
        assert enrollment.next_due_at == at + timedelta(days=3)

    tick(now=expected[later], dispatch=False)
    assert message_of(campaign, later).created_at == expected[later]


def test_the_first_steps_wait_and_best_hour_count_like_the_engines(settings):
    settings.TIME_ZONE = "Europe/Berlin"
    profile = person(best_hour=18)
    campaign = mass(("email", timedelta(hours=2)))
    Step.objects.filter(campaign=campaign).update(best_hour=True)
    fan_out(campaign, now=NOW)
    # Due now (no best hour for the campaign); the step waits 2 h (12:00 Berlin), then holds
    # for 18:00 Berlin: the engine makes the message then.
    assert message_of(campaign, profile) is None
    for hour in (NOW, NOW + timedelta(hours=2), datetime(2026, 3, 16, 17, tzinfo=UTC)):
        tick(now=hour, dispatch=False)
    assert enrollment_of(campaign, profile).state == EnrollmentState.COMPLETED
    assert message_of(campaign, profile).created_at == datetime(2026, 3, 16, 17, tzinfo=UTC)


# --- direct messages ---------------------------------------------------------------------------


def test_first_messages_are_created_with_every_field(settings):
    ada = person("Ada", language="de")
    bob = person("Bob")
    campaign = mass(("email", timedelta(0)), ("sms", timedelta(days=2)))

    assert fan_out(campaign, now=NOW, history=True) == 2

    step = campaign.steps.get(position=1)
    message = message_of(campaign, ada)
    enrollment = enrollment_of(campaign, ada)
    assert message.enrollment == enrollment and message.step == step
    assert (message.channel, message.purpose, message.address) == (
        "email",
        "marketing",
        f"ada{ada.pk}@ex.com",
    )
    assert (message.template, message.language) == ("spring_sale", "de")
    assert message_of(campaign, bob).language == django_settings.LANGUAGE_CODE
    assert message.status == MessageStatus.QUEUED and message.needs_render
    assert (message.subject, message.body_text, message.body_html, message.data) == ("", "", "", {})
    assert message.tags == [f"campaign:{campaign.pk}"]
    assert (message.units, message.cost, message.currency) == (1, Decimal("0.0008"), "GBP")
    assert message.dedupe_key is None
    assert message.created_at == message.queued_at == message.status_changed_at == NOW
    assert message.next_attempt_at == NOW
    assert message.attempts == 0 and message.claimed_by == ""
    assert uuid.UUID(str(message.uuid)).version == 4
    assert message.uuid != message_of(campaign, bob).uuid
    assert (enrollment.step_position, enrollment.state) == (1, EnrollmentState.ACTIVE)
    assert enrollment.last_message_at == NOW
    assert enrollment.next_due_at == NOW + timedelta(days=2)
    assert enrollment.enrolled_at == NOW and enrollment.context == {}
    # The history the engine would have written.
    assert list(message.history.values_list("status", "occurred_at", "source")) == [
        ("queued", NOW, "campaign")
    ]
    log = list(enrollment.log.order_by("pk").values_list("action", "message_id", "step_id"))
    assert log == [("enrolled", None, None), ("sent", message.pk, step.pk)]


def test_by_default_no_history_rows_are_written():
    """The enrollment and message rows say it all; history is the expensive third."""
    profile = person()
    campaign = mass(("email", timedelta(0)), ("sms", timedelta(days=2)))
    fan_out(campaign, now=NOW)
    assert message_of(campaign, profile).status == MessageStatus.QUEUED
    assert enrollment_of(campaign, profile).step_position == 1
    assert not EnrollmentLog.objects.exists()
    assert not MessageStatusChange.objects.exists()


def test_a_one_step_campaign_completes_its_enrollments():
    profile = person()
    campaign = mass()
    fan_out(campaign, now=NOW, history=True)
    enrollment = enrollment_of(campaign, profile)
    assert enrollment.state == EnrollmentState.COMPLETED
    assert enrollment.exit_reason == ExitReason.COMPLETED
    assert (enrollment.step_position, enrollment.next_due_at) == (1, None)
    assert enrollment.last_message_at == NOW and enrollment.ended_at == NOW
    actions = list(enrollment.log.order_by("pk").values_list("action", flat=True))
    assert actions == ["enrolled", "sent", "completed"]


def test_whoever_sql_is_unsure_of_is_left_to_the_engine(django_user_model):
    reachable = person("Reachable")
    no_consent = person("NoConsent", consent=None, phone=True)
    withdrawn = person("Withdrawn", consent=False)
    no_email = person("NoEmail", email=False, phone=True)
    suppressed = person("Suppressed", phone=True)
    Suppression.objects.create(
        channel="email",
        address=f"suppressed{suppressed.pk}@ex.com",
        reason=SuppressionReason.COMPLAINED,
    )
    # An account email no identity holds (it might be invalid): SQL cannot vouch for it.
    user = django_user_model.objects.create_user("acc", "Account@Example.com", "x")
    account = person("Account", user=user)
    # Two marketing contacts today already: the day's cap of 2 is reached.
    capped = person("Capped")
    for k in range(2):
        Message.objects.create(
            profile=capped,
            channel="email",
            purpose="marketing",
            address="x",
            created_at=NOW - timedelta(hours=k + 1),
        )
    # Failed messages reached nobody: no contact.
    not_capped = person("NotCapped")
    for k in range(2):
        Message.objects.create(
            profile=not_capped,
            channel="email",
            purpose="marketing",
            address="x",
            status=MessageStatus.FAILED,
            created_at=NOW - timedelta(hours=k + 1),
        )
    # A higher-priority campaign's message is about to go: the engine keeps it a slot.
    pending = person("Pending")
    urgent = mass(name="Urgent", priority=10, launched_at=NOW)
    Enrollment.objects.create(campaign=urgent, profile=pending, next_due_at=NOW + timedelta(1))
    campaign = mass(("email", timedelta(0)), ("sms", timedelta(0)), exclusion=None)

    fan_out(campaign, now=NOW)

    direct = set(Message.objects.filter(campaign=campaign).values_list("profile_id", flat=True))
    assert direct == {reachable.pk, not_capped.pk}
    left = [no_consent, withdrawn, no_email, suppressed, account, capped, pending]
    for profile in left:
        enrollment = enrollment_of(campaign, profile)
        assert (enrollment.step_position, enrollment.next_due_at) == (0, NOW), profile.first_name

    # The engine's tick takes them from there: a cascade to SMS, the account email, caps.
    tick(now=NOW, dispatch=False)
    sent = {
        m.profile_id: m.channel
        for m in Message.objects.filter(campaign=campaign).exclude(profile__in=[reachable])
    }
    assert sent[no_consent.pk] == "sms"
    assert sent[no_email.pk] == "sms"
    assert sent[suppressed.pk] == "sms"
    assert sent[account.pk] == "email"
    assert message_of(campaign, account).address == "account@example.com"
    assert capped.pk not in sent  # held back by the day's cap
    # The engine's own count finds room for both (the fan-out's is deliberately cruder).
    assert sent[pending.pk] == "email"
    assert enrollment_of(campaign, withdrawn).exit_reason == ExitReason.UNREACHABLE
    assert Message.objects.filter(campaign=campaign, profile=reachable).count() == 1


def test_transactional_needs_no_consent_but_respects_hard_suppressions(settings):
    no_consent = person("NoConsent", consent=None)
    bounced = person("Bounced", consent=None)
    Suppression.objects.create(
        channel="email",
        address=f"bounced{bounced.pk}@ex.com",
        reason=SuppressionReason.BOUNCED,
        transactional_too=True,
    )
    complained = person("Complained", consent=None)
    Suppression.objects.create(
        channel="email",
        address=f"complained{complained.pk}@ex.com",
        reason=SuppressionReason.COMPLAINED,
    )
    campaign = mass(purpose="transactional")
    fan_out(campaign, now=NOW)
    direct = set(Message.objects.filter(campaign=campaign).values_list("profile_id", flat=True))
    assert direct == {no_consent.pk, complained.pk}

    use(settings, TRANSACTIONAL_REQUIRES_CONSENT=True)
    again = mass(name="Receipts again", purpose="transactional")
    fan_out(again, now=NOW)
    assert not Message.objects.filter(campaign=again).exists()


def test_quiet_hours_and_caps_only_hold_marketing(settings):
    use(settings, QUIET_HOURS=(8, 12))  # NOW (09:00 UTC) is quiet
    profile = person()
    quiet = mass(name="Quiet")
    loud = mass(name="Loud", quiet_hours=False)
    fan_out(quiet, now=NOW)
    fan_out(loud, now=NOW)
    assert message_of(quiet, profile) is None
    assert message_of(loud, profile) is not None


@pytest.mark.parametrize(
    ("first_channel", "fields"),
    [
        ("push", {}),  # push has no SQL address
        ("best", {}),  # chosen per person by the engine
        ("fax", {}),  # not configured
        ("email", {"cap_per_day": 0}),
    ],
)
def test_without_a_set_based_first_step_everyone_waits_for_the_engine(first_channel, fields):
    profile = person()
    campaign = mass((first_channel, timedelta(0)), **fields)
    assert fan_out(campaign, now=NOW) == 1
    assert not Message.objects.exists()
    assert enrollment_of(campaign, profile).step_position == 0


def test_direct_messages_can_be_turned_off():
    profile = person()
    campaign = mass()
    fan_out(campaign, now=NOW, direct_messages=False, history=True)
    assert not Message.objects.exists()
    assert enrollment_of(campaign, profile).next_due_at == NOW
    assert list(EnrollmentLog.objects.values_list("action", "detail")) == [
        ("enrolled", fanout.FAN_OUT_DETAIL)
    ]


def test_fanned_out_messages_are_rendered_and_sent_by_the_delivery_path():
    pytest.importorskip("omnichannel.campaigns.content")
    from omnichannel.channels.models import OutboxEntry
    from omnichannel.channels.sending import deliver_due_messages

    profile = person("Grace")
    campaign = mass()
    fan_out(campaign, now=NOW)
    deliver_due_messages(now=NOW)
    message = message_of(campaign, profile)
    assert message.status == MessageStatus.SENT, message.error
    assert not message.needs_render
    assert message.subject == "News for Grace"
    assert OutboxEntry.objects.get(message=message).body_text == "Hello Grace"


# --- Celery ------------------------------------------------------------------------------------


@pytest.fixture
def eager_celery():
    from sandbox.celery import app

    saved = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield app
    app.conf.task_always_eager = saved


def test_nothing_due_costs_one_query():
    mass(status=CampaignStatus.DRAFT)
    with CaptureQueriesContext(connection) as queries:
        assert launch_due_mass_campaigns(NOW) == []
    assert len(queries) == 1


def test_the_tick_launches_a_chain_of_chunk_tasks(settings, eager_celery):
    use(settings, MASS_FANOUT_CHUNK=2)
    people = [person(f"P{i}") for i in range(5)]
    campaign = mass(("email", timedelta(0)), ("email", timedelta(days=1)))
    with time_machine.travel(NOW + timedelta(seconds=3), tick=False):
        assert launch_due_mass_campaigns(NOW) == [campaign.pk]
    campaign.refresh_from_db()
    assert campaign.launched_at == NOW
    assert campaign.last_scanned_at == NOW + timedelta(seconds=3)  # the chain's heartbeat
    assert Enrollment.objects.filter(campaign=campaign, step_position=1).count() == len(people)
    assert Message.objects.filter(campaign=campaign, next_attempt_at=NOW).count() == len(people)
    assert launch_due_mass_campaigns(NOW + timedelta(minutes=1)) == []


def test_a_running_chain_is_not_started_twice_until_its_lease_runs_out(settings):
    person()
    campaign = mass()
    Campaign.objects.filter(pk=campaign.pk).update(last_scanned_at=NOW - timedelta(seconds=10))
    assert launch_due_mass_campaigns(NOW) == []  # a chain renewed it 10 s ago
    queued = []
    from omnichannel.campaigns import tasks

    def record(*, args, **kwargs):
        queued.append(args)

    later = NOW + timedelta(seconds=int(settings.OMNICHANNEL.get("CAMPAIGN_CLAIM_LEASE", 300)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tasks.fan_out_task, "apply_async", record)
        assert launch_due_mass_campaigns(later) == [campaign.pk]
    assert queued == [[campaign.pk, None, None, later.isoformat()]]
    campaign.refresh_from_db()
    assert campaign.last_scanned_at == later and campaign.launched_at is None


def test_a_chunk_task_for_a_paused_campaign_stops_the_chain():
    person()
    campaign = mass(status=CampaignStatus.PAUSED)
    from omnichannel.campaigns.tasks import fan_out_task

    assert fan_out_task.run(campaign.pk, None, None, NOW.isoformat()) == 0
    assert not Enrollment.objects.exists()


# --- holdout and variants ----------------------------------------------------------------------


def add_variants(campaign: Campaign, *specs: dict) -> list[Variant]:
    step = campaign.steps.get(position=1)
    return [Variant.objects.create(step=step, **spec) for spec in specs]


def test_held_out_people_are_enrolled_exited_and_get_no_message():
    people = [person(f"P{i}") for i in range(40)]
    campaign = mass(("email", timedelta(0)), ("sms", timedelta(days=2)), holdout_percent=30)

    assert fan_out(campaign, now=NOW, history=True) == 40

    held = {p.pk for p in people if groups.is_held_out(p.pk, campaign)}
    assert 0 < len(held) < 40  # both groups are there
    for profile in people:
        enrollment = enrollment_of(campaign, profile)
        actions = list(enrollment.log.order_by("pk").values_list("action", flat=True))
        if profile.pk in held:
            assert enrollment.holdout
            assert (enrollment.state, enrollment.exit_reason) == ("exited", ExitReason.HELD_OUT)
            assert (enrollment.next_due_at, enrollment.ended_at) == (None, NOW)
            assert enrollment.step_position == 0
            assert message_of(campaign, profile) is None
            assert actions == ["enrolled", "exited"]
        else:
            assert not enrollment.holdout and enrollment.state == EnrollmentState.ACTIVE
            assert message_of(campaign, profile) is not None
            assert actions == ["enrolled", "sent"]
    # The engine has nothing to do for them later either.
    tick(now=NOW + timedelta(days=3), dispatch=False)
    assert not Message.objects.filter(campaign=campaign, profile_id__in=held).exists()


def test_held_out_people_are_exited_when_everyone_else_waits_for_the_engine():
    people = [person(f"P{i}") for i in range(20)]
    campaign = mass(holdout_percent=50)
    fan_out(campaign, now=NOW, direct_messages=False)
    for profile in people:
        enrollment = enrollment_of(campaign, profile)
        if groups.is_held_out(profile.pk, campaign):
            assert enrollment.state == EnrollmentState.EXITED and enrollment.holdout
        else:
            assert (enrollment.state, enrollment.next_due_at) == (EnrollmentState.ACTIVE, NOW)
    assert not Message.objects.exists()


def test_without_a_holdout_nobody_is_held_out():
    people = [person(f"P{i}") for i in range(10)]
    campaign = mass()
    fan_out(campaign, now=NOW)
    assert not Enrollment.objects.filter(holdout=True).exists()
    assert Message.objects.filter(campaign=campaign).count() == len(people)


def test_each_first_message_has_the_variant_pick_variant_gives():
    people = [person(f"P{i}") for i in range(60)]
    campaign = mass(("email", timedelta(0)), ("sms", timedelta(days=2)), holdout_percent=10)
    variants = add_variants(
        campaign,
        {"name": "A", "weight": 2},
        {"name": "B", "weight": 1, "subject": "Short"},
        {"name": "C", "weight": 3, "channel": "email"},  # the step's own channel: set-based too
    )
    fan_out(campaign, now=NOW)

    seen = set()
    for profile in people:
        message = message_of(campaign, profile)
        if groups.is_held_out(profile.pk, campaign):
            assert message is None
            continue
        expected = groups.pick_variant(profile.pk, campaign.pk, variants)
        assert message.variant_id == expected.pk, profile.pk
        seen.add(expected.name)
    assert seen == {"A", "B", "C"}


def test_a_variant_on_another_channel_is_left_to_the_engine():
    people = [person(f"P{i}", phone=True) for i in range(30)]
    campaign = mass()
    variants = add_variants(campaign, {"name": "Email"}, {"name": "SMS", "channel": "sms"})
    fan_out(campaign, now=NOW)
    by_variant = {"Email": 0, "SMS": 0}
    for profile in people:
        picked = groups.pick_variant(profile.pk, campaign.pk, variants)
        by_variant[picked.name] += 1
        message = message_of(campaign, profile)
        enrollment = enrollment_of(campaign, profile)
        if picked.name == "Email":
            assert (message.channel, message.variant) == ("email", picked)
        else:
            assert message is None
            assert (enrollment.step_position, enrollment.next_due_at) == (0, NOW)
    assert by_variant["Email"] and by_variant["SMS"]


def test_when_every_variant_has_its_own_channel_the_engine_sends_them_all():
    person(phone=True)
    campaign = mass()
    add_variants(campaign, {"name": "SMS", "channel": "sms"}, {"name": "Best", "channel": "best"})
    plan = fanout.plan_fan_out(campaign, now=NOW)
    assert not plan.direct
    assert plan.why_not_direct == "every variant of the first step has a channel of its own"
    fan_out(campaign, now=NOW)
    assert not Message.objects.exists()


def test_a_fanned_out_variant_message_is_rendered_with_the_variants_content():
    from omnichannel.channels.models import OutboxEntry
    from omnichannel.channels.sending import deliver_due_messages

    people = [person(f"P{i}") for i in range(12)]
    campaign = mass()
    variants = add_variants(
        campaign,
        {"name": "Step's", "weight": 1},
        {
            "name": "Own",
            "weight": 1,
            "subject": "Only today, {{ first_name }}",
            "content": {"email": {"body.txt": "Variant body for {{ first_name }}"}},
        },
    )
    fan_out(campaign, now=NOW)
    deliver_due_messages(now=NOW)
    for profile in people:
        message = message_of(campaign, profile)
        assert message.status == MessageStatus.SENT, message.error
        outbox = OutboxEntry.objects.get(message=message)
        if groups.pick_variant(profile.pk, campaign.pk, variants).name == "Own":
            assert message.subject == f"Only today, {profile.first_name}"
            assert outbox.body_text == f"Variant body for {profile.first_name}"
        else:
            assert message.subject == f"News for {profile.first_name}"
            assert outbox.body_text == f"Hello {profile.first_name}"


def test_the_sql_groups_equal_the_python_groups_for_any_id():
    ids = [*range(1, 400), 2**31 - 1, 2**31 + 12_345, 3_000_000_007]
    CustomerProfile.objects.bulk_create([CustomerProfile(pk=pk) for pk in ids])
    campaign = mass(holdout_percent=37)
    variants = add_variants(
        campaign, {"name": "A", "weight": 5}, {"name": "B", "weight": 3}, {"name": "C", "weight": 2}
    )
    plan = fanout.plan_fan_out(campaign, now=NOW)
    rows = CustomerProfile.objects.annotate(
        held=fanout._held_out_expression(plan),
        variant=groups.variant_expression(campaign.pk, plan.variants, profile_field="pk"),
    ).values_list("pk", "held", "variant")
    found = {pk: (bool(held), variant) for pk, held, variant in rows}
    expected = {
        pk: (
            groups.is_held_out(pk, campaign),
            groups.pick_variant(pk, campaign.pk, variants).pk,
        )
        for pk in ids
    }
    assert found == expected
    shares = Counter(variant for _held, variant in found.values())
    assert [shares[v.pk] for v in variants] == sorted(shares.values(), reverse=True)
