"""API keys of the mobile app, the tills and other integrations, and the receipts that make
their writes idempotent."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from ..profiles.models import EventSource


class Scope(models.TextChoices):
    """What a key may do. Values are stored in ApiKey.scopes: never rename them."""

    EVENTS = "events", _("Send events")
    IDENTIFY = "identify", _("Identify people (link devices to contacts)")
    DEVICES = "devices", _("Register push devices")
    CONSENTS = "consents", _("Grant and withdraw consents")
    ORDERS = "orders", _("Send offline orders")


#: Sources a key can write as (the web shop records its own events through Oscar's signals).
KEY_SOURCES = [
    (EventSource.APP.value, EventSource.APP.label),
    (EventSource.OFFLINE.value, EventSource.OFFLINE.label),
    (EventSource.API.value, EventSource.API.label),
]

#: The whole key is ``<prefix>.<secret>``; the prefix finds the row, the secret proves it.
PREFIX_BYTES = 6  # 12 hex characters, shown in the admin and in logs
SECRET_BYTES = 32  # 256 bits from secrets.token_urlsafe: no slow hash needed
#: last_used_at is written at most this often per key, so a busy key is not one UPDATE per call.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def hash_secret(secret: str) -> str:
    """SHA-256 of the secret, hex. The secret is 256 random bits, so a fast hash is enough
    (a password hasher's 100 ms per request would only slow every call down)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def validate_rate(value: str) -> None:
    """A DRF-style rate: ``<requests>/<second|minute|hour|day>`` (``600/min``)."""
    from .throttling import parse_rate

    try:
        parse_rate(value)
    except ValueError as exc:
        raise ValidationError(str(exc)) from exc


class ApiKeyQuerySet(models.QuerySet):
    def active(self) -> ApiKeyQuerySet:
        return self.filter(revoked_at__isnull=True)


class ApiKeyManager(models.Manager.from_queryset(ApiKeyQuerySet)):  # type: ignore[misc]
    def create_key(
        self,
        *,
        name: str,
        source: str,
        scopes: list[str],
        rate_limit: str = "",
        now: datetime | None = None,
    ) -> tuple[ApiKey, str]:
        """Create a key; return it and the whole secret key, which is never stored."""
        key = self.model(name=name, source=source, scopes=list(scopes), rate_limit=rate_limit)
        raw = key.set_new_secret()
        key.created_at = now or timezone.now()
        key.full_clean()
        key.save(force_insert=True)
        return key, raw


class ApiKey(models.Model):
    """A credential of one client (the app, a store's till, an integration).

    Only a hash of the secret is kept: the whole key is shown once, when it is created.
    """

    name = models.CharField(
        _("name"), max_length=100, help_text=_("Who uses it, e.g. 'iOS app' or 'Store 12 till'.")
    )
    source = models.CharField(
        _("source"),
        max_length=16,
        choices=KEY_SOURCES,
        help_text=_("Source of the events and consents this key records."),
    )
    prefix = models.CharField(
        _("prefix"),
        max_length=32,
        unique=True,
        editable=False,
        help_text=_("The public part of the key, before the dot."),
    )
    secret_hash = models.CharField(_("secret hash"), max_length=64, editable=False)
    scopes = models.JSONField(
        _("scopes"),
        default=list,
        blank=True,
        help_text=_("What the key may do: events, identify, devices, consents, orders."),
    )
    rate_limit = models.CharField(
        _("rate limit"),
        max_length=32,
        blank=True,
        validators=[validate_rate],
        help_text=_(
            "Requests per period for this key, e.g. '600/min' or '20/second'; empty: the "
            "OMNICHANNEL API_RATE_LIMIT setting."
        ),
    )
    created_at = models.DateTimeField(_("created"), default=timezone.now)
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True)
    revoked_at = models.DateTimeField(_("revoked"), null=True, blank=True, db_index=True)

    objects = ApiKeyManager()

    class Meta:
        verbose_name = _("API key")
        verbose_name_plural = _("API keys")
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix})"

    def clean(self) -> None:
        unknown = (
            sorted(set(self.scopes) - set(Scope.values)) if isinstance(self.scopes, list) else None
        )
        if unknown is None or unknown:
            raise ValidationError(
                {"scopes": _("Scopes must be a list of: %s.") % ", ".join(Scope.values)}
            )

    def set_new_secret(self) -> str:
        """Give the key a new prefix and secret; return the whole key (to show once)."""
        self.prefix = secrets.token_hex(PREFIX_BYTES)
        secret = secrets.token_urlsafe(SECRET_BYTES)
        self.secret_hash = hash_secret(secret)
        return f"{self.prefix}.{secret}"

    def check_secret(self, secret: str) -> bool:
        """Constant-time comparison of the secret's hash with the stored one."""
        return hmac.compare_digest(hash_secret(secret), self.secret_hash)

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def has_scope(self, scope: str) -> bool:
        return isinstance(self.scopes, list) and scope in self.scopes

    def revoke(self, *, now: datetime) -> None:
        """Refuse the key from now on (the row and its receipts stay)."""
        if self.revoked_at is None:
            self.revoked_at = now
            ApiKey.objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=now)

    def touch(self, *, now: datetime) -> None:
        """Record a use, at most once per LAST_USED_RESOLUTION (no write on most requests)."""
        if self.last_used_at is None or now - self.last_used_at >= LAST_USED_RESOLUTION:
            self.last_used_at = now
            ApiKey.objects.filter(pk=self.pk).update(last_used_at=now)


class ReceiptKind(models.TextChoices):
    EVENT = "event", _("Event")
    ORDER = "order", _("Offline order")


class ApiEventReceipt(models.Model):
    """One event or offline order a key has sent, by the client's own id.

    The unique constraint is what makes a retried batch land once: the receipts are inserted
    in the same transaction as the events, so a retry that races the first attempt fails on
    the constraint and finds the first attempt's receipts instead.
    """

    key = models.ForeignKey(
        ApiKey, verbose_name=_("API key"), on_delete=models.CASCADE, related_name="receipts"
    )
    kind = models.CharField(_("kind"), max_length=8, choices=ReceiptKind.choices)
    client_id = models.CharField(
        _("client id"),
        max_length=64,
        help_text=_("The client's id of the event, or the till's order number."),
    )
    # The event log is append-only, but a deleted profile takes its events with it: the receipt
    # stays, so a late retry is still recognised.
    event = models.ForeignKey(
        "omnichannel.Event",
        verbose_name=_("event"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(_("received"), default=timezone.now)

    class Meta:
        verbose_name = _("API receipt")
        verbose_name_plural = _("API receipts")
        constraints = [
            models.UniqueConstraint(
                fields=["key", "kind", "client_id"], name="oc_api_receipt_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.client_id} -> {self.event_id}"
