"""All of the app's settings, read lazily from ``settings.OMNICHANNEL`` with defaults.

Usage::

    from omnichannel.conf import app_settings
    app_settings.DEFAULT_PHONE_REGION

Values are read at access time and the cache is dropped on ``setting_changed``, so
``override_settings(OMNICHANNEL={...})`` works in tests. An unknown key in the host's
``OMNICHANNEL`` dict is reported by the system check ``omnichannel.E001``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

DEFAULTS: dict[str, Any] = {
    # Region used to parse phone numbers written without a +country prefix (ISO 3166 alpha-2).
    # None means such numbers are rejected rather than guessed.
    "DEFAULT_PHONE_REGION": None,
    # Name of the cookie that keys an anonymous visitor's profile.
    "VISITOR_COOKIE_NAME": "omnichannel_vid",
    "VISITOR_COOKIE_AGE": 60 * 60 * 24 * 365 * 2,
    # Events folded into profiles per database transaction by the fold task.
    "EVENT_BATCH_SIZE": 1000,
    # Batches the fold task works through before it yields the worker to other tasks.
    "EVENT_MAX_BATCHES_PER_RUN": 50,
    # How often beat runs the fold task (seconds); read by omnichannel_setup_schedules.
    "EVENT_FOLD_INTERVAL": 10,
    # Record product_viewed events (one row per product page view).
    "RECORD_PRODUCT_VIEWS": True,
    # --- Channels (omnichannel/channels/) -------------------------------------------------------
    # name -> {"BACKEND": dotted path of a BaseChannel subclass, "COST": per message (or per
    # SMS segment / push device), "OPTIONS": {...} for the backend}. The name is stored on
    # every Message: never rename one that has sent. See docs/channels.md.
    "CHANNELS": {
        "email": {"BACKEND": "omnichannel.channels.email.EmailChannel"},
    },
    # Currency of channel costs (ISO 4217).
    "COST_CURRENCY": "EUR",
    # Absolute base URL of the shop for links in messages (https://shop.example.com); None
    # builds them from the Sites framework's current domain over https.
    "SITE_URL": None,
    # Transactional messages need no recorded consent (a receipt is owed); marketing needs a
    # grant. Set True to require a grant for transactional messages too.
    "TRANSACTIONAL_REQUIRES_CONSENT": False,
    # Messages claimed and sent per delivery task run, and how often beat runs it (seconds).
    "DELIVERY_BATCH_SIZE": 200,
    "DELIVERY_INTERVAL": 5,
    # A message claimed for sending whose worker died: after this many seconds it is marked
    # failed (never resent: the provider may have taken it).
    "SENDING_LEASE": 300,
    # Temporary failures: attempts in all, and the backoff (exponential with full jitter).
    "SEND_MAX_ATTEMPTS": 5,
    "SEND_RETRY_BASE_DELAY": 30,
    "SEND_RETRY_MAX_DELAY": 3600,
    # A 429 pauses the whole channel: first pause (or the provider's Retry-After), doubled on
    # each consecutive 429, up to the cap (seconds).
    "THROTTLE_BASE_PAUSE": 30,
    "THROTTLE_MAX_PAUSE": 900,
    # --- Tracking links (omnichannel/tracking/) ---------------------------------------------
    # Lifetime of signed links, in seconds. Unsubscribe links never expire (RFC 8058 mail sits
    # in inboxes for years).
    "CLICK_LINK_MAX_AGE": 60 * 60 * 24 * 90,
    "PREFERENCES_LINK_MAX_AGE": 60 * 60 * 24 * 365,
    "BASKET_LINK_MAX_AGE": 60 * 60 * 24 * 14,
    "TELEGRAM_LINK_MAX_AGE": 60 * 60 * 24 * 30,
    # Add a 1x1 open pixel to emails (most ESPs track opens themselves; see anymail's
    # track_opens). Push, SMS and Telegram report no opens.
    "EMAIL_OPEN_PIXEL": False,
    # Wrap links in emails through our signed click redirect (when the ESP does not track).
    "EMAIL_CLICK_REDIRECT": False,
    # --- Segments (omnichannel/segments/) ----------------------------------------------------
    # How often beat refreshes the RFM and engagement scores (seconds); read by
    # omnichannel_setup_schedules. About 20 s of database work per million profiles.
    "SEGMENT_SCORES_REFRESH_INTERVAL": 60 * 60,
    # Messages of the last N days count for the preferred channel and best send hour.
    "ENGAGEMENT_WINDOW_DAYS": 180,
    # Consent channels whose transactional messages (receipts, order updates) the preference
    # centre shows as always on: a shop owes an order confirmation on a durable medium. The
    # transactional toggles of other channels can be switched off there.
    "PREFERENCES_LOCKED_TRANSACTIONAL": ["email"],
    # --- Campaigns (omnichannel/campaigns/) ---------------------------------------------------
    # Most marketing contacts per person across all campaigns and channels, per rolling day and
    # week. A contact is one enrollment's messages (a cascade's follow-ups are the same news) or
    # one message outside campaigns. None (or a missing key) for no cap.
    "FREQUENCY_CAPS": {"day": 2, "week": 5},
    # No marketing message between these hours of the person's local time (start, end; 24 h
    # clock, the end exclusive): it is deferred to the end, not dropped. None: no quiet hours.
    "QUIET_HOURS": (21, 8),
    # A "best channel" step picks the reachable channel with the most expected engagement per
    # money: smoothed engagement rate / (cost per message + this floor), so free channels are
    # not infinitely good and a person who ignores push still gets email (COST_CURRENCY).
    "BEST_CHANNEL_COST_FLOOR": "0.001",
    # Hour (shop TIME_ZONE) of "best hour" sends for people whose habits are unknown.
    "DEFAULT_SEND_HOUR": 10,
    # How often beat runs the campaign tick (seconds); read by omnichannel_setup_schedules.
    "CAMPAIGN_TICK_INTERVAL": 30,
    # Create or update the app's django-celery-beat periodic tasks after every migrate.
    "SETUP_SCHEDULES_ON_MIGRATE": True,
    # Enrollments claimed and advanced per batch, and batches per tick before it yields.
    "CAMPAIGN_BATCH_SIZE": 500,
    "CAMPAIGN_MAX_BATCHES_PER_TICK": 40,
    # A tick's claim on enrollments expires after this many seconds (a killed worker's
    # enrollments come back; their messages exist already and cannot be created twice).
    "CAMPAIGN_CLAIM_LEASE": 300,
    # Enrollments of a mass campaign inserted per statement when it fans out.
    "MASS_FANOUT_CHUNK": 50_000,
    # "Bought together" and fallback recommendations shown in a message.
    "RECOMMENDATIONS_LIMIT": 4,
    # --- Results (omnichannel/analytics/) -------------------------------------------------------
    # Attribution of each order to at most one message: "last_touch" (the last click within
    # the click window, else the last open within the open window, else the last delivery
    # within the delivery window on channels that report no opens) or "last_click" (clicks
    # only). Windows in seconds.
    "ATTRIBUTION_MODEL": "last_touch",
    "ATTRIBUTION_CLICK_WINDOW": 5 * 24 * 60 * 60,
    "ATTRIBUTION_OPEN_WINDOW": 24 * 60 * 60,
    "ATTRIBUTION_DELIVERY_WINDOW": 12 * 60 * 60,
    # Channels whose deliveries can win an order (they report no opens); None: the channels
    # whose backend says it reports no opens (SMS, push, web push, Telegram).
    "ATTRIBUTION_DELIVERY_CHANNELS": None,
    # How often beat runs the attribution job (seconds), and orders attributed per statement.
    "ATTRIBUTION_INTERVAL": 300,
    "ATTRIBUTION_BATCH_SIZE": 5000,
    # Confidence level of the uplift intervals and of "significant" in the reports.
    "UPLIFT_CONFIDENCE": 0.95,
    # --- API (omnichannel/api/) -----------------------------------------------------------------
    # Most events in one POST to events/; a larger batch is refused whole (400).
    "API_MAX_BATCH": 500,
    # Most lines in one offline order.
    "API_MAX_ORDER_LINES": 500,
    # Largest JSON payload of one event, in bytes (UTF-8).
    "API_PAYLOAD_MAX_BYTES": 16 * 1024,
    # Requests per key and period when the key has no rate limit of its own (DRF syntax,
    # "<n>/second|minute|hour|day"); None or "" for no limit.
    "API_RATE_LIMIT": "1200/min",
    # Django cache holding the rate-limit counters: shared by every server process in
    # production (Redis, Memcached); LocMemCache counts per process.
    "API_THROTTLE_CACHE": "default",
    # How far ahead of the server's clock a client's occurred_at may be (seconds).
    "API_MAX_FUTURE_SKEW": 24 * 60 * 60,
    # Largest request body (Content-Length) the API reads, in bytes; larger ones get 413.
    "API_MAX_REQUEST_BYTES": 16 * 1024 * 1024,
}


class AppSettings:
    """Attribute access to the OMNICHANNEL settings dict, falling back to DEFAULTS."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    @property
    def user_settings(self) -> dict[str, Any]:
        return getattr(settings, "OMNICHANNEL", None) or {}

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"Unknown omnichannel setting: {name!r}")
        if name not in self._cache:
            self._cache[name] = self.user_settings.get(name, DEFAULTS[name])
        return self._cache[name]

    def unknown_keys(self) -> list[str]:
        """Keys in the host's OMNICHANNEL dict that this version does not know."""
        return sorted(set(self.user_settings) - set(DEFAULTS))

    def reload(self) -> None:
        self._cache.clear()


app_settings = AppSettings()


@receiver(setting_changed)
def _reload_app_settings(*, setting: str, **kwargs: Any) -> None:
    if setting == "OMNICHANNEL":
        app_settings.reload()
