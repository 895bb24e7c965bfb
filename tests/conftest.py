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
