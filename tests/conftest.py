"""Shared fixtures. Services that may be missing skip with a reason, but fail under CI=true."""

from __future__ import annotations

import os
import socket

import pytest
from django.db import connection

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require(condition: bool, reason: str) -> None:
    """Skip the test when a service is missing, except in CI where that is a failure."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: required here)")
    pytest.skip(reason)


@pytest.fixture
def postgres_db(db):
    require(connection.vendor == "postgresql", "needs PostgreSQL (set DATABASE_URL)")


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("OMNICHANNEL_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    require(_port_open("127.0.0.1", 6379), "needs Redis at 127.0.0.1:6379")
    return url


# --- Added for tests/integration/ (CI): point the demo shop's Celery app at another broker for
# one test, and put the original configuration back when the test ends. ----------------------
def _drop_celery_connection_pools(app) -> None:
    # The app caches its connection and producer pools (built from broker_url on first use);
    # drop them so the next send uses the new URL, as Celery itself does after a fork.
    # The app's pool comes from kombu's global registry, keyed by the broker URL: closing it
    # in place would leave an empty pool for the next test on the same URL, whose first
    # acquire then waits forever. Reset the registry instead.
    from kombu import pools

    pools.reset()
    app._pool = None
    if "amqp" in app.__dict__:
        app.__dict__["amqp"]._producer_pool = None


@pytest.fixture
def celery_broker():
    """``use(url, **conf)`` points ``sandbox.celery.app`` at ``url`` until the test ends."""
    from sandbox.celery import app

    saved: dict[str, object] = {}

    def use(url: str, **conf: object):
        for key, value in {"broker_url": url, **conf}.items():
            saved.setdefault(key, app.conf[key])
            app.conf[key] = value
        _drop_celery_connection_pools(app)
        return app

    yield use
    for key, value in saved.items():
        app.conf[key] = value
    _drop_celery_connection_pools(app)
