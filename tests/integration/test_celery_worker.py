"""A real Celery worker, on Redis, folds the events a real checkout recorded.

The worker is a separate process (``celery -A sandbox worker``) using the test settings and
the test database of this run: the SQLite file of tests/settings.py, or test_<NAME> on
PostgreSQL, named through OMNICHANNEL_WORKER_DATABASE_NAME. The test runs with
transaction=True so what the checkout writes is committed and visible to the worker.

Each run uses its own queue and node name, so concurrent runs sharing the Redis database
(the SQLite and PostgreSQL passes, another developer) never take each other's tasks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.db import connection

from omnichannel.profiles.models import CustomerProfile, Event
from omnichannel.tasks import fold_events_task
from tests import shop

PROJECT_DIR = Path(__file__).resolve().parents[2]
DEADLINE_SECONDS = 60


class Worker:
    def __init__(self, process: subprocess.Popen, log_path: Path, queue: str, nodename: str):
        self.process = process
        self.log_path = log_path
        self.queue = queue
        self.nodename = nodename

    def log(self) -> str:
        text = self.log_path.read_text(errors="replace")
        return f"\n--- celery worker log ({self.log_path}) ---\n{text[-20000:]}"

    def assert_alive(self) -> None:
        code = self.process.poll()
        assert code is None, f"the Celery worker exited with status {code}{self.log()}"


@pytest.fixture
def worker(transactional_db, redis_url, celery_broker, tmp_path):
    """A ``celery worker`` process on ``redis_url``, stopped (and its queue removed) at the end.

    Depends on ``transactional_db`` so it stops before pytest-django empties the database.
    """
    queue = f"omnichannel-test-{uuid.uuid4().hex[:12]}"
    nodename = f"{queue}@localhost"
    app = celery_broker(redis_url, task_default_queue=queue)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "CELERY_BROKER_URL": redis_url,
        "OMNICHANNEL_WORKER_DATABASE_NAME": str(connection.settings_dict["NAME"]),
        "PYTHONUNBUFFERED": "1",
    }
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "sandbox",
        "worker",
        "--pool=solo",
        "--concurrency=1",
        "--loglevel=INFO",
        "--without-gossip",
        "--without-mingle",
        "-Q",
        queue,
        "-n",
        nodename,
    ]
    log_path = tmp_path / "celery-worker.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, cwd=PROJECT_DIR, env=env, stdout=log_file, stderr=subprocess.STDOUT
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


def _wait_until_ready(app, worker: Worker) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        worker.assert_alive()
        if app.control.ping(destination=[worker.nodename], timeout=1.0):
            return
    pytest.fail(f"the Celery worker did not answer a ping in {DEADLINE_SECONDS} s{worker.log()}")


def _remove_queue(redis_url: str, queue: str) -> None:
    """Delete the keys kombu made for this run's queue (the queue itself and its binding)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"*{queue}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.mark.redis
@pytest.mark.celery_worker
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_a_real_worker_folds_the_events_of_a_checkout(client, worker):
    product = shop.create_product("42.00", title="Kettle")
    shop.add_to_basket(client, product)
    order = shop.checkout(client, guest_email="worker@example.com", phone="07911 123456")
    assert Event.objects.filter(processed_at__isnull=True).count() == 2

    fold_events_task.delay()

    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        pending = Event.objects.filter(processed_at__isnull=True).count()
        profiles = list(CustomerProfile.objects.values_list("pk", "orders_count"))
        if pending == 0 and profiles:
            break
        worker.assert_alive()
        assert time.monotonic() < deadline, (
            f"after {DEADLINE_SECONDS} s: {pending} events not folded, profiles {profiles}"
            f"{worker.log()}"
        )
        time.sleep(0.2)

    profile = CustomerProfile.objects.get()
    assert profile.orders_count == 1, worker.log()
    assert profile.total_spent == order.total_incl_tax
    assert set(Event.objects.values_list("profile_id", flat=True)) == {profile.pk}
    assert "omnichannel.profiles.fold_events" in worker.log_path.read_text(errors="replace")


@pytest.mark.redis
@pytest.mark.celery_worker
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_a_real_worker_delivers_queued_messages_once(worker):
    """The beat task's work, run by a worker: queued SMS and email go out (to the demo
    outbox the test settings configure) exactly once, even when the task runs twice."""
    from django.utils import timezone

    from omnichannel.channels.models import Message, MessageStatus, OutboxEntry
    from omnichannel.channels.sending import queue_message
    from omnichannel.profiles.consents import record_consent
    from omnichannel.profiles.models import Identity, IdentityKind
    from omnichannel.tasks import deliver_due_messages_task

    now = timezone.now()
    messages = []
    for index in range(3):
        profile = CustomerProfile.objects.create(first_name=f"Worker{index}")
        Identity.objects.create(
            profile=profile, kind=IdentityKind.PHONE, value=f"+4477009001{index:02d}"
        )
        Identity.objects.create(
            profile=profile, kind=IdentityKind.EMAIL, value=f"worker{index}@example.com"
        )
        for channel in ("sms", "email"):
            record_consent(profile, channel=channel, purpose="marketing", granted=True, now=now)
            messages.append(
                queue_message(
                    profile, channel=channel, purpose="marketing", template="test", now=now
                )
            )

    deliver_due_messages_task.delay()
    deliver_due_messages_task.delay()

    deadline = time.monotonic() + DEADLINE_SECONDS
    while Message.objects.filter(status=MessageStatus.SENT).count() < len(messages):
        worker.assert_alive()
        statuses = list(Message.objects.values_list("channel", "status", "error"))
        assert time.monotonic() < deadline, f"not all sent: {statuses}{worker.log()}"
        time.sleep(0.2)
    time.sleep(1)  # let the second task run: it must find nothing to send

    assert OutboxEntry.objects.count() == len(messages), worker.log()
    assert set(OutboxEntry.objects.values_list("message_id", flat=True)) == {m.pk for m in messages}
    assert "omnichannel.channels.deliver_due" in worker.log_path.read_text(errors="replace")
