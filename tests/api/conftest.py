"""Fixtures of the API tests: keys with chosen scopes, and DRF clients that send them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from omnichannel.api.models import ApiKey, Scope
from omnichannel.profiles.models import EventSource

ALL_SCOPES = list(Scope.values)


@pytest.fixture(autouse=True)
def _clear_throttle_counters():
    # The rate-limit counters live in the default cache (LocMemCache here): start clean.
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def make_client(db) -> Callable[..., APIClient]:
    """``make_client(scopes=[...], source=...)``: an APIClient sending a new key's header."""

    def make(
        *, scopes: list[str] | None = None, source: str = EventSource.APP, rate_limit: str = ""
    ) -> APIClient:
        key, raw = ApiKey.objects.create_key(
            name="test key",
            source=source,
            scopes=ALL_SCOPES if scopes is None else scopes,
            rate_limit=rate_limit,
        )
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw}")
        client.key = key  # type: ignore[attr-defined]
        client.raw_key = raw  # type: ignore[attr-defined]
        return client

    return make


@pytest.fixture
def app_client(make_client) -> APIClient:
    """A client with every scope, as the mobile app (source app)."""
    return make_client()


@pytest.fixture
def till_client(make_client) -> APIClient:
    """A client with every scope, as a store's till (source offline)."""
    return make_client(source=EventSource.OFFLINE)
