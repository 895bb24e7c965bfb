"""A real Celery worker, on Redis, runs the campaign tick and the per-batch delivery tasks.

The worker is started like the one of test_celery_worker.py (same test settings, this run's
test database, a queue and node name of its own), with two differences made in the launching
process: the app's default queue is this run's queue, so the delivery tasks the tick sends
from inside the worker come back to it (and never reach another run's worker); and a small
DELIVERY_BATCH_SIZE, so one tick makes several delivery tasks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from omnichannel.campaigns.models import Campaign, CampaignKind, CampaignStatus, Enrollment, Step
from omnichannel.channels.models import Message, MessageStatus, OutboxEntry
from omnichannel.profiles.consents import record_consent
from omnichannel.profiles.models import CustomerProfile, Identity, IdentityKind
from omnichannel.tasks import CAMPAIGN_TICK_TASK, DELIVER_BATCH_TASK, campaign_tick_task
from tests.integration.test_celery_worker import (
    DEADLINE_SECONDS,
    PROJECT_DIR,
    Worker,
    _remove_queue,
    _wait_until_ready,
)

DELIVERY_BATCH_SIZE = 10
PEOPLE = 25

#: Runs ``celery worker`` with the run's queue as the default queue and settings overrides.
LAUNCH = r"""
import json, os, sys

import django

django.setup()
from django.conf import settings

settings.OMNICHANNEL = {**settings.OMNICHANNEL, **json.loads(os.environ["OMNICHANNEL_OVERRIDES"])}
from sandbox.celery import app

queue, nodename = sys.argv[1], sys.argv[2]
app.conf.task_default_queue = queue
app.worker_main(
    ["worker", "--pool=solo", "--concurrency=1", "--loglevel=INFO", "--without-gossip",
     "--without-mingle", "-Q", queue, "-n", nodename]
)
"""


@pytest.fixture
def campaign_worker(transactional_db, redis_url, celery_broker, tmp_path):
    """A worker process on ``redis_url`` whose own tasks go to its own queue."""
    queue = f"omnichannel-test-{uuid.uuid4().hex[:12]}"
    nodename = f"{queue}@localhost"
    app = celery_broker(redis_url, task_default_queue=queue)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "CELERY_BROKER_URL": redis_url,
        "OMNICHANNEL_WORKER_DATABASE_NAME": str(connection.settings_dict["NAME"]),
        "OMNICHANNEL_OVERRIDES": json.dumps({"DELIVERY_BATCH_SIZE": DELIVERY_BATCH_SIZE}),
        "PYTHONUNBUFFERED": "1",
    }
    log_path = tmp_path / "celery-worker.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, queue, nodename],
            cwd=PROJECT_DIR,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    running = Worker(process, log_path, queue, nodename)
    try:
        _wait_until_ready(app, running)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        _remove_queue(redis_url, queue)


def due_enrollments(count: int) -> Campaign:
    now = timezone.now()
    campaign = Campaign.objects.create(
        name="Welcome",
        kind=CampaignKind.TRIGGERED,
        trigger="welcome",
        status=CampaignStatus.ACTIVE,
        quiet_hours=False,  # the worker ticks at the real time, which may be night
    )
    Step.objects.create(
        campaign=campaign,
        position=1,
        channel="email",
        template="welcome",
        content={"email": {"subject.txt": "Welcome", "body.txt": "Hello {{ first_name }}"}},
    )
    for n in range(count):
        profile = CustomerProfile.objects.create(first_name=f"Worker{n}")
        Identity.objects.create(
            profile=profile, kind=IdentityKind.EMAIL, value=f"worker{n}@example.com"
        )
        record_consent(profile, channel="email", purpose="marketing", granted=True, now=now)
        Enrollment.objects.create(
            campaign=campaign,
            profile=profile,
            subject_key="welcome",
            enrolled_at=now - timedelta(hours=1),
            next_due_at=now - timedelta(minutes=1),
        )
    return campaign


@pytest.mark.redis
@pytest.mark.celery_worker
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_a_real_worker_ticks_and_delivers_in_batches(campaign_worker):
    campaign = due_enrollments(PEOPLE)

    campaign_tick_task.delay()

    deadline = time.monotonic() + DEADLINE_SECONDS
    while Message.objects.filter(status=MessageStatus.SENT).count() < PEOPLE:
        campaign_worker.assert_alive()
        statuses = list(Message.objects.values_list("status", "error").distinct())
        assert time.monotonic() < deadline, f"not all sent: {statuses}{campaign_worker.log()}"
        time.sleep(0.2)

    messages = Message.objects.filter(campaign=campaign)
    assert messages.count() == PEOPLE
    assert set(messages.values_list("enrollment_id", flat=True)) == set(
        Enrollment.objects.values_list("pk", flat=True)
    )
    assert OutboxEntry.objects.count() == PEOPLE
    assert set(OutboxEntry.objects.values_list("message_id", flat=True)) == set(
        messages.values_list("pk", flat=True)
    )
    assert not Enrollment.objects.filter(state="active").exists()  # one step: all completed
    log = campaign_worker.log_path.read_text(errors="replace")
    assert f"Task {CAMPAIGN_TICK_TASK}[" in log
    # One delivery task per DELIVERY_BATCH_SIZE messages of the tick: 10 + 10 + 5.
    batches = -(-PEOPLE // DELIVERY_BATCH_SIZE)
    assert log.count(f"Task {DELIVER_BATCH_TASK}[") == 2 * batches, campaign_worker.log()
