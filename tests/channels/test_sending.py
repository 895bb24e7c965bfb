"""The sending service: reach checks, rendering, claims, retries, throttling, never twice."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import override_settings
from django.utils import timezone

from omnichannel.channels import registry
from omnichannel.channels.models import (
    ChannelThrottle,
    Message,
    MessageStatus,
    Suppression,
    SuppressionReason,
)
from omnichannel.channels.sending import (
    claim_due_messages,
    deliver_due_messages,
    deliver_message,
    queue_message,
    retry_delay,
)
from omnichannel.channels.status import next_status, record_status
from omnichannel.exceptions import (
    ConfigurationError,
    NotReachable,
    PermanentChannelError,
    RateLimited,
    SendCancelled,
    TemporaryChannelError,
)
from omnichannel.profiles.consents import record_consent
from omnichannel.profiles.models import CustomerProfile, Identity, IdentityKind
from omnichannel.signals import pre_send
from tests.channels import recording_channel

CHANNELS = {
    "rec": {
        "BACKEND": "tests.channels.recording_channel.RecordingChannel",
        "COST": "0.05",
    },
    "rec2": {
        "BACKEND": "tests.channels.recording_channel.RecordingChannel",
        "COST": "0.01",
    },
}
SETTINGS = {
    "CHANNELS": CHANNELS,
    "COST_CURRENCY": "GBP",
    "SITE_URL": "https://shop.example.com",
    "SEND_MAX_ATTEMPTS": 3,
    "SEND_RETRY_BASE_DELAY": 60,
    "SEND_RETRY_MAX_DELAY": 600,
    "THROTTLE_BASE_PAUSE": 30,
    "THROTTLE_MAX_PAUSE": 120,
    "SENDING_LEASE": 300,
}
BODY = {"body.txt": "Hello {{ first_name }}, your basket misses you."}

pytestmark = [pytest.mark.django_db]


@pytest.fixture(autouse=True)
def channels():
    recording_channel.reset()
    with override_settings(OMNICHANNEL=SETTINGS):
        yield
    recording_channel.reset()


@pytest.fixture
def now():
    return timezone.now().replace(microsecond=0)


def make_profile(now, phone="+447700900001", *, marketing=True, first_name="Ada"):
    profile = CustomerProfile.objects.create(first_name=first_name)
    Identity.objects.create(profile=profile, kind=IdentityKind.PHONE, value=phone)
    if marketing:
        record_consent(profile, channel="sms", purpose="marketing", granted=True, now=now)
    return profile


def queue(profile, now, **kwargs):
    kwargs.setdefault("channel", "rec")
    kwargs.setdefault("purpose", "marketing")
    kwargs.setdefault("inline", BODY)
    return queue_message(profile, now=now, **kwargs)


# --- queueing ----------------------------------------------------------------------------------


def test_queue_renders_and_prices_the_message(now):
    profile = make_profile(now)
    message = queue(profile, now, inline={**BODY, "subject.txt": "Hi {{ profile.first_name }}"})
    message.refresh_from_db()
    assert message.status == MessageStatus.QUEUED
    assert message.address == "+447700900001"
    assert message.subject == "Hi Ada"
    assert message.body_text == "Hello Ada, your basket misses you."
    assert message.units == 1
    assert message.cost == Decimal("0.05")
    assert message.currency == "GBP"
    assert message.queued_at == now
    assert message.next_attempt_at == now
    assert list(message.history.values_list("status", flat=True)) == ["queued"]


def test_cost_follows_the_channels_units(now):
    profile = make_profile(now)
    message = queue(profile, now, inline={"body.txt": "x" * 161})
    assert message.units == 2
    assert message.cost == Decimal("0.10")


@pytest.mark.parametrize(
    ("setup", "purpose", "reason"),
    [
        ("no_phone", "transactional", "no rec address"),
        ("no_consent", "marketing", "marketing consent for sms not given"),
        ("withdrawn", "marketing", "marketing consent for sms withdrawn"),
        ("withdrawn_transactional", "transactional", "transactional consent for sms withdrawn"),
        ("suppressed", "marketing", "address suppressed: Hard bounce"),
        ("suppressed_everything", "transactional", "address suppressed: Invalid address"),
    ],
)
def test_unreachable_people_are_refused_with_the_reason(now, setup, purpose, reason):
    profile = CustomerProfile.objects.create()
    if setup != "no_phone":
        Identity.objects.create(profile=profile, kind=IdentityKind.PHONE, value="+447700900002")
    if setup == "withdrawn":
        record_consent(profile, channel="sms", purpose="marketing", granted=True, now=now)
        later = now + timedelta(seconds=1)
        record_consent(profile, channel="sms", purpose="marketing", granted=False, now=later)
    if setup == "withdrawn_transactional":
        record_consent(profile, channel="sms", purpose="transactional", granted=False, now=now)
    if setup == "suppressed":
        record_consent(profile, channel="sms", purpose="marketing", granted=True, now=now)
        Suppression.objects.create(
            channel="rec", address="+447700900002", reason=SuppressionReason.BOUNCED
        )
    if setup == "suppressed_everything":
        Suppression.objects.create(
            channel="rec",
            address="+447700900002",
            reason=SuppressionReason.INVALID,
            transactional_too=True,
        )
    with pytest.raises(NotReachable, match=reason):
        queue(profile, now, purpose=purpose)
    assert not Message.objects.exists()


def test_a_marketing_suppression_does_not_block_transactional_messages(now):
    profile = make_profile(now)
    Suppression.objects.create(
        channel="rec", address="+447700900001", reason=SuppressionReason.COMPLAINED
    )
    with pytest.raises(NotReachable):
        queue(profile, now)
    assert queue(profile, now, purpose="transactional").status == MessageStatus.QUEUED


def test_transactional_consent_can_be_required(now):
    profile = make_profile(now, marketing=False)
    strict = {**SETTINGS, "TRANSACTIONAL_REQUIRES_CONSENT": True}
    with (
        override_settings(OMNICHANNEL=strict),
        pytest.raises(NotReachable, match="transactional consent for sms not given"),
    ):
        queue(profile, now, purpose="transactional")


def test_a_dedupe_key_queues_once(now):
    profile = make_profile(now)
    first = queue(profile, now, dedupe_key="enrollment-1:step-1")
    second = queue(profile, now, dedupe_key="enrollment-1:step-1")
    assert first.pk == second.pk
    assert Message.objects.count() == 1


def test_unknown_purpose_and_channel_are_clear_errors(now):
    profile = make_profile(now)
    with pytest.raises(ValueError, match="unknown purpose 'promo'"):
        queue(profile, now, purpose="promo")
    with pytest.raises(ConfigurationError, match="no channel 'fax'"):
        queue(profile, now, channel="fax")


def test_missing_required_content_is_a_configuration_error(now):
    profile = make_profile(now)
    with pytest.raises(ConfigurationError, match=r"required part 'body.txt'"):
        queue(profile, now, inline={"subject.txt": "only a subject"})
    assert not Message.objects.exists()


# --- delivering --------------------------------------------------------------------------------


def test_due_messages_are_sent_once(now):
    profile = make_profile(now)
    message = queue(profile, now)
    assert deliver_due_messages(now=now) == 1
    message.refresh_from_db()
    assert message.status == MessageStatus.SENT
    assert message.provider_message_id == "rec-1"
    assert message.sent_at == now
    assert message.attempts == 1
    assert list(message.history.values_list("status", flat=True)) == ["queued", "sent"]
    assert deliver_due_messages(now=now + timedelta(minutes=5)) == 0
    assert len(recording_channel.calls) == 1


def test_scheduled_messages_wait_for_their_time(now):
    profile = make_profile(now)
    queue(profile, now, send_at=now + timedelta(hours=1))
    assert deliver_due_messages(now=now) == 0
    assert deliver_due_messages(now=now + timedelta(hours=1)) == 1


def test_a_temporary_failure_is_retried_with_backoff_then_sent(now):
    profile = make_profile(now)
    recording_channel.script["+447700900001"] = [TemporaryChannelError("503 from provider")]
    message = queue(profile, now)
    deliver_due_messages(now=now)
    message.refresh_from_db()
    assert message.status == MessageStatus.QUEUED
    assert message.error == "503 from provider"
    assert now + timedelta(seconds=30) <= message.next_attempt_at <= now + timedelta(seconds=60)
    assert deliver_due_messages(now=now + timedelta(seconds=29)) == 0
    deliver_due_messages(now=now + timedelta(seconds=61))
    message.refresh_from_db()
    assert message.status == MessageStatus.SENT
    assert message.attempts == 2
    assert message.error == ""


def test_temporary_failures_give_up_after_the_last_attempt(now):
    profile = make_profile(now)
    recording_channel.script["+447700900001"] = [TemporaryChannelError("timeout")] * 5
    message = queue(profile, now)
    moment = now
    for _ in range(3):
        deliver_due_messages(now=moment)
        moment += timedelta(hours=1)
    message.refresh_from_db()
    assert message.status == MessageStatus.FAILED
    assert message.error == "timeout"
    assert message.attempts == 3
    assert len(recording_channel.calls) == 3


def test_retry_delay_is_capped_and_jittered():
    with override_settings(OMNICHANNEL=SETTINGS):
        delays = [retry_delay(attempt) for attempt in range(1, 12)]
    assert all(0 < delay <= 600 for delay in delays)
    assert delays[0] <= 60
    assert max(delays) >= 300


def test_a_permanent_failure_fails_only_that_recipient(now):
    bad = make_profile(now, "+447700900009")
    good = make_profile(now, "+447700900001")
    recording_channel.script["+447700900009"] = [PermanentChannelError("21211: invalid 'To'")]
    bad_message, good_message = queue(bad, now), queue(good, now)
    deliver_due_messages(now=now)
    bad_message.refresh_from_db()
    good_message.refresh_from_db()
    assert bad_message.status == MessageStatus.FAILED
    assert bad_message.error == "21211: invalid 'To'"
    assert bad_message.failed_at == now
    assert good_message.status == MessageStatus.SENT


def test_a_429_pauses_the_whole_channel_and_requeues_without_counting(now):
    profiles = [make_profile(now, f"+4477009000{i:02d}") for i in range(1, 5)]
    recording_channel.script["+447700900001"] = [RateLimited("429 slow down", retry_after=45)]
    messages = [queue(profile, now) for profile in profiles]
    other = queue(profiles[1], now, channel="rec2", dedupe_key="other")
    deliver_due_messages(now=now)

    throttle = ChannelThrottle.objects.get(channel="rec")
    assert throttle.paused_until == now + timedelta(seconds=45)
    for message in messages:
        message.refresh_from_db()
        # the first batch (2 messages) met the 429; the second was not even claimed
        assert message.status == MessageStatus.QUEUED
        assert message.attempts == 0
    other.refresh_from_db()
    assert other.status == MessageStatus.SENT  # another channel is not paused

    assert deliver_due_messages(now=now + timedelta(seconds=44)) == 0
    assert deliver_due_messages(now=now + timedelta(seconds=45)) == 4
    assert Message.objects.filter(channel="rec", status=MessageStatus.SENT).count() == 4


def test_consecutive_429s_double_the_pause_up_to_the_cap(now):
    profile = make_profile(now)
    recording_channel.script["+447700900001"] = [RateLimited("429")] * 4
    queue(profile, now)
    pauses = []
    moment = now
    for _ in range(4):
        deliver_due_messages(now=moment)
        throttle = ChannelThrottle.objects.get(channel="rec")
        pauses.append((throttle.paused_until - moment).total_seconds())
        moment = throttle.paused_until
    assert pauses == [30, 60, 120, 120]


def test_consent_withdrawn_between_queueing_and_sending_means_not_sent(now):
    profile = make_profile(now)
    message = queue(profile, now)
    later = now + timedelta(seconds=1)
    record_consent(profile, channel="sms", purpose="marketing", granted=False, now=later)
    deliver_due_messages(now=later)
    message.refresh_from_db()
    assert message.status == MessageStatus.SUPPRESSED
    assert "withdrawn" in message.error
    assert recording_channel.calls == []


def test_a_pre_send_receiver_can_cancel(now):
    profile = make_profile(now)
    message = queue(profile, now)

    def cancel(sender, message, channel, **kwargs):
        raise SendCancelled("holiday freeze")

    pre_send.connect(cancel)
    try:
        deliver_due_messages(now=now)
    finally:
        pre_send.disconnect(cancel)
    message.refresh_from_db()
    assert message.status == MessageStatus.SUPPRESSED
    assert message.error == "cancelled: holiday freeze"
    assert recording_channel.calls == []


def test_a_crash_in_a_backend_fails_the_batch_without_losing_it(now):
    profile = make_profile(now)
    recording_channel.script["+447700900001"] = [ZeroDivisionError("bug")]
    message = queue(profile, now)
    deliver_due_messages(now=now)
    message.refresh_from_db()
    assert message.status == MessageStatus.FAILED
    assert message.error == "ZeroDivisionError: bug"


def test_a_message_claimed_by_a_worker_that_died_is_never_sent_twice(now):
    profile = make_profile(now)
    message = queue(profile, now)
    claimed = claim_due_messages(now=now, limit=10)  # the worker dies after claiming
    assert [m.pk for m in claimed] == [message.pk]
    assert claim_due_messages(now=now, limit=10) == []  # nobody else gets it
    assert deliver_due_messages(now=now + timedelta(seconds=299)) == 0
    message.refresh_from_db()
    assert message.status == MessageStatus.SENDING

    deliver_due_messages(now=now + timedelta(seconds=301))
    message.refresh_from_db()
    assert message.status == MessageStatus.FAILED
    assert "not retried" in message.error
    assert recording_channel.calls == []


def test_deliver_message_sends_one_now_and_ignores_a_sent_one(now):
    profile = make_profile(now)
    message = queue(profile, now, send_at=now + timedelta(days=1))
    # a test send from the admin goes now, whatever the schedule says
    message.next_attempt_at = now
    message.save(update_fields=["next_attempt_at"])
    assert deliver_message(message, now=now).status == MessageStatus.SENT
    assert deliver_message(message, now=now).status == MessageStatus.SENT
    assert len(recording_channel.calls) == 1


# --- status reports -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "reported", "expected"),
    [
        ("sent", "delivered", "delivered"),
        ("opened", "delivered", "opened"),
        ("clicked", "opened", "clicked"),
        ("sent", "bounced", "bounced"),
        ("clicked", "unsubscribed", "unsubscribed"),
        ("bounced", "delivered", "bounced"),
        ("bounced", "failed", "bounced"),
        ("bounced", "complained", "complained"),
    ],
)
def test_next_status(current, reported, expected):
    assert next_status(current, reported) == expected


def test_reports_keep_the_first_time_and_the_whole_history(now):
    profile = make_profile(now)
    message = queue(profile, now)
    deliver_due_messages(now=now)
    opened, delivered = now + timedelta(minutes=5), now + timedelta(minutes=1)
    record_status(message, "opened", at=opened, source="esp")
    record_status(message, "delivered", at=delivered, source="esp")  # late report
    record_status(message, "opened", at=now + timedelta(minutes=9), source="esp")  # replayed
    message.refresh_from_db()
    assert message.status == MessageStatus.OPENED
    assert message.delivered_at == delivered
    assert message.opened_at == opened
    assert message.history.filter(status="opened").count() == 2
    with pytest.raises(ValueError, match="unknown message status"):
        record_status(message, "read", at=now)


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"BACKEND": "nowhere.Channel"}, "cannot import 'nowhere.Channel'"),
        ({"BACKEND": "omnichannel.conf.AppSettings"}, "is not a BaseChannel subclass"),
        ({"BACKEND": "tests.channels.recording_channel.RecordingChannel", "COST": "x"}, "COST"),
        ({"BACKEND": "tests.channels.recording_channel.RecordingChannel", "COST": -1}, "negative"),
        ({"BACKEND": "tests.channels.recording_channel.RecordingChannel", "OPTION": 1}, "OPTION"),
        ("tests.channels.recording_channel.RecordingChannel", "must be a dict"),
    ],
)
def test_bad_channel_settings_name_the_problem(config, error):
    with (
        override_settings(OMNICHANNEL={**SETTINGS, "CHANNELS": {"bad": config}}),
        pytest.raises(ConfigurationError, match=error),
    ):
        registry.get_channel("bad")


def test_channels_are_rebuilt_when_settings_change():
    first = registry.get_channel("rec")
    assert registry.get_channel("rec") is first
    with override_settings(OMNICHANNEL={**SETTINGS, "CHANNELS": {"rec": CHANNELS["rec2"]}}):
        assert registry.get_channel("rec").cost == Decimal("0.01")
    assert registry.get_channel("rec").cost == Decimal("0.05")


def test_a_suppression_holds_for_every_channel_of_the_same_kind(now):
    # "rec" and "rec2" are both SMS channels (e.g. two providers): a bounce on one counts.
    profile = make_profile(now)
    Suppression.objects.create(
        channel="rec2", address="+447700900001", reason=SuppressionReason.BOUNCED
    )
    with pytest.raises(NotReachable, match="suppressed"):
        queue(profile, now, channel="rec")


def test_a_webhook_that_beats_the_send_bookkeeping_keeps_its_status_and_the_id(now):
    profile = make_profile(now)
    message = queue(profile, now)
    (claimed,) = claim_due_messages(now=now, limit=1)
    record_status(claimed, "delivered", at=now, source="esp")  # the ESP was quicker than us
    from omnichannel.channels.sending import _finish

    _finish(claimed, "provider-42", now=now)
    message.refresh_from_db()
    assert message.provider_message_id == "provider-42"
    assert message.status == MessageStatus.DELIVERED
    assert message.sent_at == now


def test_a_failing_pre_send_receiver_is_logged_and_the_message_still_goes(now, caplog):
    profile = make_profile(now)
    message = queue(profile, now)

    def broken(sender, message, channel, **kwargs):
        raise KeyError("host bug")

    pre_send.connect(broken)
    try:
        deliver_due_messages(now=now)
    finally:
        pre_send.disconnect(broken)
    message.refresh_from_db()
    assert message.status == MessageStatus.SENT
    assert "host bug" in caplog.text


def test_a_message_failed_as_stale_is_not_sent_by_its_late_worker(now):
    from omnichannel.channels.sending import _deliver_claimed, fail_stale_sends

    profile = make_profile(now)
    message = queue(profile, now)
    claimed = claim_due_messages(now=now, limit=10)  # this worker then stalls past its lease
    assert fail_stale_sends(now=now + timedelta(seconds=301)) == 1  # another worker's run
    _deliver_claimed("rec", claimed, now=now + timedelta(seconds=302))
    message.refresh_from_db()
    assert message.status == MessageStatus.FAILED
    assert recording_channel.calls == []
