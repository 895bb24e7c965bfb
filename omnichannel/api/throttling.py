"""Rate limits per API key: a fixed-window counter in Django's cache.

DRF's ``SimpleRateThrottle`` keeps a list of every request's time in the cache and rewrites
it on each request, which gets slow at the rates a busy app key needs (thousands per minute);
a counter per window is one ``incr``. With several server processes the cache must be shared
(Redis, Memcached): LocMemCache counts per process.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.cache import caches
from rest_framework.throttling import BaseThrottle

from ..conf import app_settings

_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(rate: str) -> tuple[int, int]:
    """``"600/min"`` -> (600, 60). Raises ValueError with a readable message."""
    try:
        count, period = rate.split("/")
        requests = int(count)
        seconds = _PERIODS[period.strip()[:1].lower()]
    except (ValueError, KeyError, AttributeError):
        raise ValueError(
            f"{rate!r} is not a rate: write <requests>/<second|minute|hour|day>, e.g. 600/min"
        ) from None
    if requests < 1:
        raise ValueError(f"{rate!r} is not a usable rate: it allows no request at all")
    return requests, seconds


class ApiKeyRateThrottle(BaseThrottle):
    """Allow each API key ``rate_limit`` requests per period (or ``API_RATE_LIMIT``)."""

    def __init__(self) -> None:
        self._wait: float | None = None

    def allow_request(self, request: Any, view: Any) -> bool:
        from .models import ApiKey

        key = request.auth
        if not isinstance(key, ApiKey):
            return True  # no key: refused by authentication/permissions, not counted here
        rate = key.rate_limit or app_settings.API_RATE_LIMIT
        if not rate:
            return True
        limit, period = parse_rate(rate)
        now = time.time()
        window = int(now // period)
        cache = caches[app_settings.API_THROTTLE_CACHE]
        cache_key = f"omnichannel:api-throttle:{key.pk}:{period}:{window}"
        # add() only sets a missing key; incr() is atomic in Redis/Memcached (and per process
        # in LocMemCache). The window's key expires with it.
        cache.add(cache_key, 0, timeout=period + 1)
        try:
            count = cache.incr(cache_key)
        except ValueError:  # expired between add and incr
            cache.set(cache_key, 1, timeout=period + 1)
            count = 1
        if count > limit:
            self._wait = (window + 1) * period - now
            return False
        return True

    def wait(self) -> float | None:
        return self._wait
