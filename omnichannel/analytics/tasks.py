"""Celery tasks of the results: thin shells over plain functions. Names are stable (beat
stores them); ``omnichannel.tasks`` imports this module so every worker registers them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from celery import shared_task
from django.core.cache import cache
from django.db import connection
from django.utils import timezone

ATTRIBUTE_ORDERS_TASK = "omnichannel.analytics.attribute_orders"

#: pg_try_advisory_lock key of the attribution job (a fixed 64-bit number: "omni-att").
ADVISORY_LOCK_KEY = 0x6F6D6E692D617474
#: Cache key and lifetime of the lock on other databases: longer than a bounded run, short
#: enough that a worker killed mid-run blocks the job for one interval or two only.
CACHE_LOCK_KEY = "omnichannel:attribution-lock"
CACHE_LOCK_SECONDS = 15 * 60
#: Batches one task run does at most; the rest waits for the next run.
TASK_MAX_BATCHES = 50


@contextmanager
def attribution_lock() -> Iterator[bool]:
    """Hold the attribution job's lock while the block runs; yields False (and holds
    nothing) when another run has it. PostgreSQL: a session advisory lock, released at the
    end or when the worker's connection dies. Others: an atomic cache ``add`` with a timeout
    (a shared cache such as Redis is needed for workers on several machines)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [ADVISORY_LOCK_KEY])
            (acquired,) = cursor.fetchone()
        try:
            yield acquired
        finally:
            if acquired:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [ADVISORY_LOCK_KEY])
        return
    token = uuid.uuid4().hex
    acquired = cache.add(CACHE_LOCK_KEY, token, CACHE_LOCK_SECONDS)
    try:
        yield acquired
    finally:
        # Only our own lock: after its timeout another run may hold a new one.
        if acquired and cache.get(CACHE_LOCK_KEY) == token:
            cache.delete(CACHE_LOCK_KEY)


@shared_task(name=ATTRIBUTE_ORDERS_TASK, ignore_result=True)
def attribute_orders_task() -> dict[str, int]:
    """Attribute new orders and re-check late reports (run by beat every ATTRIBUTION_INTERVAL);
    returns at once (``skipped``: 1) while another run holds the lock."""
    from .attribution import attribute_orders

    with attribution_lock() as acquired:
        if not acquired:
            return {"skipped": 1}
        return attribute_orders(now=timezone.now(), max_batches=TASK_MAX_BATCHES).as_dict()
