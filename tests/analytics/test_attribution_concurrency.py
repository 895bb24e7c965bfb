"""Attribution runs that overlap, in real processes on PostgreSQL.

Each worker is a separate Python process with the test settings, opening this run's test
database through OMNICHANNEL_WORKER_DATABASE_NAME (as tests/campaigns/test_concurrency.py
does); the test writes with ``transactional_db`` so the workers see the rows. Workers wait for
"go" after Django is set up, so their runs really overlap. PostgreSQL only: SQLite has one
writer at a time, so runs there queue behind each other instead of racing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection

from omnichannel.analytics.models import AttributionModel, Conversion, Influence
from omnichannel.channels.models import Message, MessageStatus, MessageStatusChange
from omnichannel.profiles.models import CustomerProfile, Event, EventType

PROJECT_DIR = Path(__file__).resolve().parents[2]
ORDER_AT = datetime(2026, 3, 16, 9, 0, tzinfo=UTC)
RUN_AT = ORDER_AT + timedelta(hours=1)

WORKER = r"""
import json, sys
from datetime import datetime

import django

django.setup()
from django.db import connection

connection.ensure_connection()
print(json.dumps({"ready": True}), flush=True)
sys.stdin.readline()
from omnichannel.analytics.attribution import attribute_orders

result = attribute_orders(now=datetime.fromisoformat(sys.argv[1]), batch_size=int(sys.argv[2]))
print(json.dumps(result.as_dict()), flush=True)
"""

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="needs PostgreSQL: SQLite has a single writer, so overlapping runs cannot race "
        "(CI's PostgreSQL pass runs this; set DATABASE_URL to run it here)",
    ),
]


def start_worker(batch_size: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "OMNICHANNEL_WORKER_DATABASE_NAME": str(connection.settings_dict["NAME"]),
        "PYTHONUNBUFFERED": "1",
    }
    process = subprocess.Popen(
        [sys.executable, "-c", WORKER, RUN_AT.isoformat(), str(batch_size)],
        cwd=PROJECT_DIR,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert json.loads(process.stdout.readline()) == {"ready": True}
    return process


def test_overlapping_runs_attribute_each_order_once(transactional_db):
    orders = 300
    for index in range(orders):
        profile = CustomerProfile.objects.create()
        for status, column, before in (
            (MessageStatus.CLICKED, "clicked_at", timedelta(days=1)),
            (MessageStatus.OPENED, "opened_at", timedelta(hours=1)),
        ):
            sent = Message.objects.create(
                profile=profile,
                channel="email",
                purpose="marketing",
                status=status,
                **{column: ORDER_AT - before},
            )
            # Attribution reads the reports.
            MessageStatusChange.objects.create(
                message=sent, status=status, occurred_at=ORDER_AT - before
            )
        Event.objects.create(
            type=EventType.ORDER_PLACED,
            profile=profile,
            occurred_at=ORDER_AT + timedelta(seconds=index),
            amount=Decimal("10.00"),
            currency="GBP",
            processed_at=ORDER_AT,
        )

    workers = [start_worker(batch_size) for batch_size in (25, 40, 60)]
    for worker in workers:
        worker.stdin.write("go\n")
        worker.stdin.flush()
    results = []
    for worker in workers:
        out, errors = worker.communicate(timeout=120)
        assert worker.returncode == 0, errors[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))

    assert sum(result["attributed"] for result in results) == orders
    assert Conversion.objects.count() == orders
    assert set(Conversion.objects.values_list("model", flat=True)) == {AttributionModel.CLICK}
    assert Influence.objects.count() == orders
    assert set(Influence.objects.values_list("model", flat=True)) == {AttributionModel.OPEN}


def test_a_second_task_returns_at_once_while_a_run_holds_the_lock(transactional_db):
    """The lock is held by another session (a thread with its own connection), as a running
    task holds it; the task returns without attributing, then runs once it is free."""
    import threading
    from io import StringIO

    from django.core.management import CommandError, call_command
    from django.db import connections

    from omnichannel.analytics.tasks import attribute_orders_task, attribution_lock

    profile = CustomerProfile.objects.create()
    Event.objects.create(
        type=EventType.ORDER_PLACED,
        profile=profile,
        occurred_at=datetime.now(UTC) - timedelta(hours=1),
        amount=Decimal("10.00"),
        currency="GBP",
    )
    holding, release = threading.Event(), threading.Event()
    held = []

    def first_run() -> None:
        try:
            with attribution_lock() as acquired:
                held.append(acquired)
                holding.set()
                release.wait(30)
        finally:
            connections.close_all()

    thread = threading.Thread(target=first_run)
    thread.start()
    try:
        assert holding.wait(30) and held == [True]
        assert attribute_orders_task() == {"skipped": 1}
        with pytest.raises(CommandError, match="in progress"):
            call_command("omnichannel_attribute_orders", stdout=StringIO())
        assert not Conversion.objects.exists()
    finally:
        release.set()
        thread.join(30)

    assert attribute_orders_task()["attributed"] == 1


def test_a_batch_reads_one_snapshot(transactional_db):
    """Outside any transaction (as in a worker) a batch runs at REPEATABLE READ, so its two
    INSERTs read the same messages; inside an outer one it keeps that one's level."""
    from django.db import transaction

    from omnichannel.analytics.attribution import _one_snapshot

    def level() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SHOW transaction_isolation")
            return cursor.fetchone()[0]

    with _one_snapshot():
        assert level() == "repeatable read"
    with transaction.atomic(), _one_snapshot():
        assert level() == "read committed"
