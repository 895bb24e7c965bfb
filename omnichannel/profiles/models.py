"""Customer profiles: one per person, the identities that name them, their events and consents."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class IdentityKind(models.TextChoices):
    """How a person can be recognised. Values are stored: never rename them."""

    USER = "user", _("User account")
    EMAIL = "email", _("Email")
    PHONE = "phone", _("Phone")
    LOYALTY_CARD = "loyalty_card", _("Loyalty card")
    DEVICE = "device", _("Device / push token")
    TELEGRAM = "telegram", _("Telegram chat")
    VISITOR = "visitor", _("Anonymous visitor")


#: When the identities named by one event belong to different profiles, the strongest decides
#: which profile the event joins first (and a user account is never merged into another).
IDENTITY_STRENGTH = [
    IdentityKind.USER,
    IdentityKind.EMAIL,
    IdentityKind.PHONE,
    IdentityKind.LOYALTY_CARD,
    IdentityKind.DEVICE,
    IdentityKind.TELEGRAM,
    IdentityKind.VISITOR,
]


class EventSource(models.TextChoices):
    WEB = "web", _("Web shop")
    APP = "app", _("Mobile app")
    OFFLINE = "offline", _("Offline store")
    API = "api", _("API")


class EventType(models.TextChoices):
    """Built-in event types. Custom types (any other slug) are allowed on Event.type."""

    PRODUCT_VIEWED = "product_viewed", _("Viewed a product")
    BASKET_LINE_ADDED = "basket_line_added", _("Added to basket")
    BASKET_LINE_CHANGED = "basket_line_changed", _("Changed basket quantity")
    BASKET_LINE_REMOVED = "basket_line_removed", _("Removed from basket")
    BASKET_SUBMITTED = "basket_submitted", _("Submitted basket")
    ORDER_PLACED = "order_placed", _("Placed an order")
    WISHLIST_LINE_ADDED = "wishlist_line_added", _("Added to wishlist")
    WISHLIST_LINE_REMOVED = "wishlist_line_removed", _("Removed from wishlist")
    USER_REGISTERED = "user_registered", _("Registered")
    USER_LOGGED_IN = "user_logged_in", _("Logged in")


#: Event types that count as basket activity (abandoned-basket timers restart on them).
BASKET_ACTIVITY_TYPES = (
    EventType.BASKET_LINE_ADDED,
    EventType.BASKET_LINE_CHANGED,
    EventType.BASKET_LINE_REMOVED,
)


class Channel(models.TextChoices):
    """Channels a consent can be given for. Values are stored: never rename them."""

    EMAIL = "email", _("Email")
    SMS = "sms", _("SMS")
    PUSH = "push", _("Mobile push")
    WEBPUSH = "webpush", _("Web push")
    MESSENGER = "messenger", _("Messenger")


class Purpose(models.TextChoices):
    TRANSACTIONAL = "transactional", _("Transactional")
    MARKETING = "marketing", _("Marketing")


class ConsentSource(models.TextChoices):
    """Where a consent change came from (the first four are the event sources)."""

    WEB = "web", _("Web shop")
    APP = "app", _("Mobile app")
    OFFLINE = "offline", _("Offline store")
    API = "api", _("API")
    PREFERENCES = "preferences", _("Preference centre")
    UNSUBSCRIBE = "unsubscribe", _("Unsubscribe link")
    PROVIDER = "provider", _("Provider report (bounce, complaint)")
    MESSENGER = "messenger", _("Messenger (chat linked)")
    ADMIN = "admin", _("Staff in admin")
    IMPORT = "import", _("Import")


class CustomerProfile(models.Model):
    """One person, however many accounts, devices and addresses they use.

    The aggregate fields are a cache of the event log, refreshed by the fold task and by
    ``omnichannel_rebuild_profiles``; the event log is the truth.
    """

    uuid = models.UUIDField(_("public id"), default=uuid.uuid4, unique=True, editable=False)
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        verbose_name=_("user account"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="omnichannel_profile",
    )
    first_name = models.CharField(_("first name"), max_length=150, blank=True)
    last_name = models.CharField(_("last name"), max_length=150, blank=True)
    language = models.CharField(
        _("language"),
        max_length=16,
        blank=True,
        help_text=_(
            "Language of messages and the preference centre (one of LANGUAGES); "
            "empty: the shop's default."
        ),
    )
    time_zone = models.CharField(
        _("time zone"),
        max_length=64,
        blank=True,
        help_text=_(
            "IANA name, e.g. Europe/Berlin: quiet hours are in the person's time; "
            "empty: the shop's TIME_ZONE."
        ),
    )
    created_at = models.DateTimeField(_("created"), default=timezone.now, db_index=True)

    # Aggregates, recomputed from events (see profiles.aggregates).
    orders_count = models.PositiveIntegerField(_("orders"), default=0)
    total_spent = models.DecimalField(_("total spent"), max_digits=14, decimal_places=2, default=0)
    average_order_value = models.DecimalField(
        _("average order value"), max_digits=14, decimal_places=2, default=0
    )
    first_order_at = models.DateTimeField(_("first order"), null=True, blank=True)
    last_order_at = models.DateTimeField(_("last order"), null=True, blank=True)
    last_seen_at = models.DateTimeField(_("last seen"), null=True, blank=True)
    last_basket_activity_at = models.DateTimeField(_("last basket activity"), null=True, blank=True)
    registered_at = models.DateTimeField(_("registered"), null=True, blank=True)
    seen_on_web = models.BooleanField(_("used the web shop"), default=False)
    seen_on_app = models.BooleanField(_("used the mobile app"), default=False)
    seen_offline = models.BooleanField(_("bought offline"), default=False)
    devices_count = models.PositiveSmallIntegerField(_("devices"), default=0)
    aggregates_updated_at = models.DateTimeField(_("aggregates updated"), null=True, blank=True)

    class Meta:
        verbose_name = _("customer profile")
        verbose_name_plural = _("customer profiles")
        indexes = [
            models.Index(fields=["last_order_at"], name="oc_profile_last_order"),
            models.Index(fields=["last_seen_at"], name="oc_profile_last_seen"),
        ]

    def __str__(self) -> str:
        name = f"{self.first_name} {self.last_name}".strip()
        return name or f"Profile {self.pk}"

    @property
    def sources(self) -> list[str]:
        """Sources this person has used, as EventSource values."""
        flags = [
            (self.seen_on_web, EventSource.WEB),
            (self.seen_on_app, EventSource.APP),
            (self.seen_offline, EventSource.OFFLINE),
        ]
        return [str(source) for seen, source in flags if seen]


class Identity(models.Model):
    """A normalised value that names a person: at most one profile holds each (kind, value)."""

    profile = models.ForeignKey(
        CustomerProfile,
        verbose_name=_("profile"),
        on_delete=models.CASCADE,
        related_name="identities",
    )
    kind = models.CharField(_("kind"), max_length=20, choices=IdentityKind.choices)
    value = models.CharField(_("value"), max_length=255)
    created_at = models.DateTimeField(_("first seen"), default=timezone.now)

    class Meta:
        verbose_name = _("identity")
        verbose_name_plural = _("identities")
        constraints = [
            models.UniqueConstraint(fields=["kind", "value"], name="oc_identity_unique_value"),
        ]
        indexes = [models.Index(fields=["profile", "kind"], name="oc_identity_profile_kind")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.value}"


class Event(models.Model):
    """Append-only log of what people did. The row is also the queue of the fold task.

    Receivers only INSERT here; ``profile`` stays empty until the fold task resolves the
    identities named in ``user``/``visitor_key``/``identities`` and sets ``processed_at``.
    """

    type = models.CharField(_("type"), max_length=64, db_index=True)
    occurred_at = models.DateTimeField(_("occurred"), default=timezone.now)
    recorded_at = models.DateTimeField(_("recorded"), default=timezone.now)
    source = models.CharField(
        _("source"), max_length=16, choices=EventSource.choices, default=EventSource.WEB
    )
    profile = models.ForeignKey(
        CustomerProfile,
        verbose_name=_("profile"),
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="events",
    )
    # Who did it, as known when it happened; resolved into `profile` by the fold task.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("user"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    visitor_key = models.CharField(_("visitor key"), max_length=64, blank=True)
    identities = models.JSONField(
        _("identities"),
        default=dict,
        blank=True,
        help_text=_('Other identities named by the event, e.g. {"email": "a@b.c"}.'),
    )
    basket = models.ForeignKey(
        "basket.Basket",
        verbose_name=_("basket"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    order = models.ForeignKey(
        "order.Order",
        verbose_name=_("order"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    product = models.ForeignKey(
        "catalogue.Product",
        verbose_name=_("product"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    amount = models.DecimalField(
        _("amount"),
        max_digits=14,
        decimal_places=2,
        null=True,
        blank=True,
        help_text=_("Money the event is about: an order's total including tax."),
    )
    currency = models.CharField(_("currency"), max_length=3, blank=True)
    payload = models.JSONField(_("payload"), default=dict, blank=True)
    processed_at = models.DateTimeField(_("folded into profile"), null=True, blank=True)

    class Meta:
        verbose_name = _("event")
        verbose_name_plural = _("events")
        indexes = [
            models.Index(fields=["profile", "type", "occurred_at"], name="oc_event_profile_type"),
            models.Index(fields=["profile", "occurred_at"], name="oc_event_profile_time"),
            # The fold task's queue: only the unprocessed rows are indexed.
            models.Index(
                fields=["id"], name="oc_event_pending", condition=Q(processed_at__isnull=True)
            ),
            models.Index(fields=["order"], name="oc_event_order"),
            # "Viewed / added product X (or a category's products) N times in D days": the
            # segment conditions go from the product to the people (PostgreSQL: covering).
            models.Index(
                fields=["product", "type", "occurred_at"],
                name="oc_event_product_type",
                include=["profile"],
                condition=Q(product__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} at {self.occurred_at:%Y-%m-%d %H:%M}"


class Consent(models.Model):
    """One grant or withdrawal; history is kept and the latest per channel and purpose wins."""

    profile = models.ForeignKey(
        CustomerProfile,
        verbose_name=_("profile"),
        on_delete=models.CASCADE,
        related_name="consents",
    )
    channel = models.CharField(_("channel"), max_length=20, choices=Channel.choices)
    purpose = models.CharField(_("purpose"), max_length=20, choices=Purpose.choices)
    granted = models.BooleanField(_("granted"))
    source = models.CharField(
        _("source"), max_length=16, choices=ConsentSource.choices, default=ConsentSource.WEB
    )
    note = models.CharField(_("note"), max_length=255, blank=True)
    created_at = models.DateTimeField(_("time"), default=timezone.now)

    class Meta:
        verbose_name = _("consent")
        verbose_name_plural = _("consents")
        indexes = [
            models.Index(
                fields=["profile", "channel", "purpose", "-created_at"], name="oc_consent_latest"
            )
        ]
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        verb = _("granted") if self.granted else _("withdrawn")
        return f"{self.get_channel_display()} / {self.get_purpose_display()}: {verb}"


class ProfileMerge(models.Model):
    """Record of two profiles proven to be one person."""

    survivor = models.ForeignKey(
        CustomerProfile,
        verbose_name=_("survivor"),
        on_delete=models.CASCADE,
        related_name="merges",
    )
    merged_profile_id = models.BigIntegerField(_("merged profile id"))
    merged_uuid = models.UUIDField(_("merged profile public id"), db_index=True)
    reason = models.CharField(_("reason"), max_length=255)
    event = models.ForeignKey(
        Event,
        verbose_name=_("proving event"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    moved = models.JSONField(_("rows moved"), default=dict, blank=True)
    created_at = models.DateTimeField(_("time"), default=timezone.now)

    class Meta:
        verbose_name = _("profile merge")
        verbose_name_plural = _("profile merges")

    def __str__(self) -> str:
        return f"{self.merged_profile_id} -> {self.survivor_id}"


class PurchasedCategory(models.Model):
    """A catalogue category a person bought from, online or offline (an aggregate of orders).

    Rebuilt with the other aggregates; a variant counts for its parent's categories.
    """

    profile = models.ForeignKey(
        CustomerProfile,
        verbose_name=_("profile"),
        on_delete=models.CASCADE,
        related_name="purchased_categories",
    )
    category = models.ForeignKey(
        "catalogue.Category",
        verbose_name=_("category"),
        on_delete=models.CASCADE,
        related_name="+",
    )
    orders_count = models.PositiveIntegerField(_("orders"), default=0)
    last_bought_at = models.DateTimeField(_("last bought"))

    #: Derived rows: a merge drops the merged profile's rows instead of moving them, and the
    #: survivor's are recomputed from the (moved) events.
    derived_from_events = True

    class Meta:
        verbose_name = _("purchased category")
        verbose_name_plural = _("purchased categories")
        constraints = [
            models.UniqueConstraint(fields=["profile", "category"], name="oc_purchased_category")
        ]
        indexes = [
            models.Index(fields=["category", "last_bought_at"], name="oc_purchased_cat_time"),
        ]

    def __str__(self) -> str:
        return f"{self.profile_id} bought in {self.category_id}"
