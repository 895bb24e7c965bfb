"""Parallel ticks and killed workers, in real processes on PostgreSQL.

Each worker is a separate Python process (``python -c WORKER``) with the test settings, opening
this run's test database through OMNICHANNEL_WORKER_DATABASE_NAME (as the Celery worker tests
do). The tests run with ``transactional_db`` so what they write is committed and visible to the
workers. Workers wait on stdin for "go" after Django is set up, so parallel ones really overlap.

PostgreSQL only: SQLite has one writer at a time, so there is no race to test there (the
workers would queue behind each other's transactions). CI's PostgreSQL pass runs these.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.db.models import Count
from django.utils import timezone

from omnichannel.campaigns.engine import tick
from omnichannel.campaigns.models import (
    Campaign,
    CampaignKind,
    CampaignStatus,
    Enrollment,
    EnrollmentLog,
    Step,
)
from omnichannel.channels.models import Message, MessageStatus, OutboxEntry
from omnichannel.channels.sending import deliver_due_messages
from omnichannel.conf import app_settings
from omnichannel.profiles.models import Consent, CustomerProfile, Identity, IdentityKind

PROJECT_DIR = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 3, 16, 9, 0, tzinfo=UTC)
DEADLINE_SECONDS = 60

#: The worker process. argv: mode, now (ISO), then the mode's argument.
WORKER = r"""
import json, sys, time
from datetime import datetime

import django

django.setup()
from django.db import connection

mode, now, argument = sys.argv[1], datetime.fromisoformat(sys.argv[2]), int(sys.argv[3])
connection.ensure_connection()
print(json.dumps({"ready": connection.connection.info.backend_pid}), flush=True)
sys.stdin.readline()


def stop_here(what):
    # Tell the test where we are, then wait to be killed (SIGKILL: no cleanup runs).
    print(json.dumps(what), flush=True)
    time.sleep(600)
    raise SystemExit("not killed")


if mode == "tick":
    from omnichannel.campaigns.engine import tick

    result = tick(now=now, batch_size=argument, max_batches=10_000, dispatch=False)
    print(json.dumps(result.as_dict()), flush=True)
elif mode == "claim-enrollments":
    from omnichannel.campaigns.engine import claim_due_enrollments

    stop_here([e.pk for e in claim_due_enrollments(now=now, limit=argument)])
elif mode == "advance-uncommitted":
    from omnichannel.campaigns import engine

    create_messages = engine._create_messages

    def create_then_die(decisions, *, now):
        created = create_messages(decisions, now=now)  # inside advance's transaction
        stop_here(sorted(created.values()))  # message ids

    engine._create_messages = create_then_die
    engine.tick(now=now, batch_size=argument, dispatch=False)
elif mode == "deliver":
    from omnichannel.channels.registry import get_channel
    from omnichannel.channels.sending import deliver_due_messages

    def provider_call(self, messages):
        stop_here(sorted(m.pk for m in messages))

    type(get_channel("email")).send_batch = provider_call
    deliver_due_messages(now=now, limit=argument)
"""


pytestmark = [
    pytest.mark.postgres,
    # Decided before the test database is made: a skip on SQLite costs nothing.
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="needs PostgreSQL: SQLite has a single writer, so parallel workers cannot race "
        "(CI's PostgreSQL pass runs this; set DATABASE_URL to run it here)",
    ),
]


@pytest.fixture
def pg(transactional_db):
    """The test database, committed so that worker processes see what the test writes."""


class Worker:
    """One worker process; ``go()`` lets it start, ``line()`` reads what it reports."""

    def __init__(self, mode: str, now: datetime, argument: int) -> None:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "OMNICHANNEL_WORKER_DATABASE_NAME": str(connection.settings_dict["NAME"]),
            "PYTHONUNBUFFERED": "1",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER, mode, now.isoformat(), str(argument)],
            cwd=PROJECT_DIR,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.backend_pid = self.line()["ready"]

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def line(self):
        """The next JSON line the worker prints (fails with its stderr if it dies or hangs)."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + DEADLINE_SECONDS
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.2)
            if ready:
                text = self.process.stdout.readline()
                if text:
                    return json.loads(text)
            if self.process.poll() is not None:
                break
        self.process.kill()
        _, errors = self.process.communicate(timeout=10)
        pytest.fail(f"worker stopped or hung (status {self.process.returncode}):\n{errors[-5000:]}")

    def kill(self) -> None:
        """SIGKILL, then wait until PostgreSQL has ended its session (and rolled back)."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        deadline = time.monotonic() + DEADLINE_SECONDS
        with connection.cursor() as cursor:
            while time.monotonic() < deadline:
                cursor.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [self.backend_pid])
                if cursor.fetchone() is None:
                    return
                time.sleep(0.05)
        pytest.fail(f"PostgreSQL session {self.backend_pid} outlived its killed worker")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=10)


@pytest.fixture
def workers():
    started: list[Worker] = []

    def start(mode: str, now: datetime, argument: int) -> Worker:
        worker = Worker(mode, now, argument)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()


def due_enrollments(count: int, *, steps: int = 1, due: datetime = NOW) -> Campaign:
    """A live campaign of ``steps`` email steps and ``count`` reachable people due at ``due``."""
    campaign = Campaign.objects.create(
        name="Welcome",
        kind=CampaignKind.TRIGGERED,
        trigger="welcome",
        status=CampaignStatus.ACTIVE,
        quiet_hours=False,
    )
    for position in range(1, steps + 1):
        Step.objects.create(
            campaign=campaign,
            position=position,
            channel="email",
            wait=timedelta(days=position - 1),
            template="welcome",
            content={"email": {"subject.txt": "Hello", "body.txt": "Hello {{ first_name }}"}},
        )
    profiles = CustomerProfile.objects.bulk_create(
        CustomerProfile(first_name=f"P{n}", created_at=due - timedelta(days=1))
        for n in range(count)
    )
    Identity.objects.bulk_create(
        Identity(profile=p, kind=IdentityKind.EMAIL, value=f"p{p.pk}@example.com") for p in profiles
    )
    Consent.objects.bulk_create(
        Consent(
            profile=p,
            channel="email",
            purpose="marketing",
            granted=True,
            created_at=due - timedelta(days=1),
        )
        for p in profiles
    )
    Enrollment.objects.bulk_create(
        Enrollment(
            campaign=campaign,
            profile=p,
            subject_key="welcome",
            enrolled_at=due - timedelta(hours=1),
            next_due_at=due,
        )
        for p in profiles
    )
    return campaign


def assert_one_message_each(campaign: Campaign, count: int) -> None:
    per_enrollment = (
        Message.objects.filter(campaign=campaign)
        .values("enrollment_id", "step_id")
        .annotate(n=Count("id"))
    )
    assert len(per_enrollment) == count
    assert {row["n"] for row in per_enrollment} == {1}
    assert Enrollment.objects.filter(campaign=campaign, step_position=1).count() == count
    assert EnrollmentLog.objects.filter(action="sent").count() == count


@pytest.mark.timeout(180)
def test_two_ticks_in_parallel_processes_give_each_enrollment_exactly_one_message(pg, workers):
    count = 2000
    campaign = due_enrollments(count, steps=2)
    first, second = workers("tick", NOW, 100), workers("tick", NOW, 100)
    first.go()
    second.go()
    results = [first.line(), second.line()]

    assert sum(r["claimed"] for r in results) == count, results
    assert sum(r["sent"] for r in results) == count, results
    assert all(r["claimed"] > 0 for r in results), f"one process did all the work: {results}"
    assert_one_message_each(campaign, count)
    assert not Enrollment.objects.exclude(claimed_by="").exists()
    # Nothing left due: a third tick finds nothing.
    assert tick(now=NOW, dispatch=False).claimed == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["claim-enrollments", "advance-uncommitted"])
def test_enrollments_of_a_killed_tick_are_picked_up_after_the_lease_once(pg, workers, mode):
    count = 50
    campaign = due_enrollments(count)
    worker = workers(mode, NOW, count)
    worker.go()
    reported = worker.line()
    assert len(reported) == count  # claimed enrollments, or messages not yet committed
    worker.kill()

    assert not Message.objects.exists()  # a killed transaction leaves nothing behind
    assert Enrollment.objects.exclude(claimed_by="").count() == count
    # Within the lease nobody else takes them ...
    assert tick(now=NOW + timedelta(minutes=1), dispatch=False).claimed == 0
    # ... after it, the next tick does, and each gets exactly one message.
    lease = timedelta(seconds=int(app_settings.CAMPAIGN_CLAIM_LEASE) + 1)
    result = tick(now=NOW + lease, dispatch=False)
    assert (result.claimed, result.sent) == (count, count)
    assert_one_message_each(campaign, count)
    assert tick(now=NOW + 2 * lease, dispatch=False).claimed == 0


@pytest.mark.timeout(120)
def test_a_worker_killed_before_the_provider_call_never_sends_twice(pg, workers):
    now = timezone.now()
    campaign = due_enrollments(3, steps=2, due=now)
    assert tick(now=now, dispatch=False).sent == 3
    claimed = set(Message.objects.values_list("pk", flat=True))

    worker = workers("deliver", now, 10)
    worker.go()
    assert set(worker.line()) == claimed  # claimed and rendered; the provider comes next
    worker.kill()
    assert set(Message.objects.values_list("status", flat=True)) == {MessageStatus.SENDING}

    # Deliveries go on: within the lease the messages are left alone ...
    deliver_due_messages(now=now + timedelta(minutes=1))
    assert set(Message.objects.values_list("status", flat=True)) == {MessageStatus.SENDING}
    # ... after it they are failed as stale, never sent: the provider may have had them.
    # (Before each provider call the worker renews the lease from the wall clock: count the
    # lease from well after that.)
    lease = timedelta(seconds=int(app_settings.SENDING_LEASE) + 120)
    deliver_due_messages(now=now + lease)
    for message in Message.objects.all():
        assert message.status == MessageStatus.FAILED, message.error
        assert "worker stopped" in message.error
        assert message.sent_at is None
    assert not OutboxEntry.objects.exists()

    # Later ticks do not make that step's message again; the next step goes and is sent.
    assert tick(now=now + lease, dispatch=False).claimed == 0
    later = now + timedelta(days=1)
    assert tick(now=later, dispatch=False).sent == 3
    deliver_due_messages(now=later)
    assert Message.objects.filter(campaign=campaign).count() == 6
    sent = set(Message.objects.filter(status=MessageStatus.SENT).values_list("pk", flat=True))
    assert len(sent) == 3 and not sent & claimed
    assert set(OutboxEntry.objects.values_list("message_id", flat=True)) == sent
