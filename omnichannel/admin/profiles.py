"""Admin of customer profiles, their identities, consents, events and merges.

Everything a profile page shows is built in a fixed number of queries whatever the size of
the profile, and the profile list does not query per row (the primary email and phone are
subqueries of the list query). The aggregate fields and the event log are read-only here:
the aggregates are a cache of the event log, which is append-only.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.contrib import admin, messages
from django.db.models import F, OuterRef, Q, QuerySet, Subquery
from django.http import HttpRequest
from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from ..exceptions import InvalidIdentity
from ..profiles.aggregates import refresh_aggregates
from ..profiles.models import (
    Channel,
    Consent,
    CustomerProfile,
    Event,
    EventSource,
    EventType,
    Identity,
    IdentityKind,
    ProfileMerge,
    Purpose,
)
from ..profiles.normalise import normalise_email, normalise_identity, normalise_phone
from .display import EMPTY, ProfileFilter
from .display import admin_url as _admin_url
from .display import link as _link
from .display import when as _when
from .segments import profile_segments_html

#: How many events the profile page shows; the rest are one click away in the event list.
TIMELINE_LIMIT = 100

_TYPE_LABELS = dict(EventType.choices)
_SOURCE_LABELS = dict(EventSource.choices)
_CHANNEL_ORDER = {value: rank for rank, value in enumerate(Channel.values)}
_PURPOSE_ORDER = {value: rank for rank, value in enumerate(Purpose.values)}


# --- helpers ------------------------------------------------------------------------------------


def event_type_label(value: str) -> str:
    """The label of a built-in event type, or the custom type's slug itself."""
    return str(_TYPE_LABELS.get(value, value))


def _product_title(product: Any) -> str:
    """Title of a product without Product.__str__ (which may query attributes per row)."""
    if product is None:
        return ""
    if product.title:
        return product.title
    parent = product.parent if product.parent_id else None
    return (parent.title if parent is not None else "") or f"#{product.pk}"


def _order_number(event: Event) -> str:
    if event.order_id is not None and event.order is not None:
        return event.order.number
    payload = event.payload if isinstance(event.payload, dict) else {}
    number = payload.get("number")
    return str(number) if number else ""


def _amount(event: Event) -> str:
    if event.amount is None:
        return ""
    return f"{formats.localize(event.amount)} {event.currency}".strip()


def _parse_uuid(term: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(term)
    except ValueError:
        return None


def _identity_matches(term: str) -> Q | None:
    """Identities equal to the search term once normalised (email, E.164 phone, card)."""
    term = term.strip()
    if not term:
        return None
    condition = Q()
    normalisers = [
        (IdentityKind.EMAIL, normalise_email),
        (IdentityKind.PHONE, normalise_phone),
        (IdentityKind.LOYALTY_CARD, lambda v: normalise_identity(IdentityKind.LOYALTY_CARD, v)),
    ]
    for kind, normalise in normalisers:
        try:
            value = normalise(term)
        except InvalidIdentity:
            continue
        condition |= Q(kind=kind, value=value)
    return condition or None


# --- list filters -------------------------------------------------------------------------------


class HasOrdersFilter(admin.SimpleListFilter):
    title = _("orders")
    parameter_name = "has_orders"

    def lookups(self, request, model_admin):
        return [("yes", _("Has ordered")), ("no", _("Never ordered"))]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(orders_count__gt=0)
        if self.value() == "no":
            return queryset.filter(orders_count=0)
        return queryset


class SourceFilter(admin.SimpleListFilter):
    title = _("used")
    parameter_name = "source"
    flags = {
        EventSource.WEB: "seen_on_web",
        EventSource.APP: "seen_on_app",
        EventSource.OFFLINE: "seen_offline",
    }

    def lookups(self, request, model_admin):
        return [(str(source), source.label) for source in self.flags]

    def queryset(self, request, queryset):
        field = self.flags.get(self.value())  # type: ignore[call-overload]
        return queryset.filter(**{field: True}) if field else queryset


class LastSeenFilter(admin.SimpleListFilter):
    title = _("last seen")
    parameter_name = "last_seen"
    ranges = {"1": 1, "7": 7, "30": 30, "90": 90}

    def lookups(self, request, model_admin):
        return [
            ("1", _("Past 24 hours")),
            ("7", _("Past 7 days")),
            ("30", _("Past 30 days")),
            ("90", _("Past 90 days")),
            ("older", _("More than 90 days ago")),
            ("never", _("Never")),
        ]

    def queryset(self, request, queryset):
        value = self.value()
        now = timezone.now()
        if value in self.ranges:
            return queryset.filter(last_seen_at__gte=now - timedelta(days=self.ranges[value]))
        if value == "older":
            return queryset.filter(last_seen_at__lt=now - timedelta(days=90))
        if value == "never":
            return queryset.filter(last_seen_at__isnull=True)
        return queryset


class EventTypeFilter(admin.SimpleListFilter):
    """Built-in types with their labels; ``?type=slug`` also filters on a custom type."""

    title = _("type")
    parameter_name = "type"

    def lookups(self, request, model_admin):
        choices = list(EventType.choices)
        value = self.value()
        if value and value not in _TYPE_LABELS:
            choices.append((value, value))
        return choices

    def queryset(self, request, queryset):
        value = self.value()
        return queryset.filter(type=value) if value else queryset


class ProcessedFilter(admin.SimpleListFilter):
    title = _("folded into a profile")
    parameter_name = "processed"

    def lookups(self, request, model_admin):
        return [("yes", _("Yes")), ("no", _("No, still queued"))]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(processed_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(processed_at__isnull=True)
        return queryset


# --- read-only admins ---------------------------------------------------------------------------


class ReadOnlyModelAdmin(admin.ModelAdmin):
    """Nothing is added or changed here; only superusers may delete."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_superuser and super().has_delete_permission(request, obj)


# --- inlines ------------------------------------------------------------------------------------


class IdentityInline(admin.TabularInline):
    model = Identity
    fields = ("kind", "value", "created_at")
    readonly_fields = fields
    extra = 0
    ordering = ("kind", "created_at", "pk")
    verbose_name_plural = _("identities (recognised as this person)")

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ConsentInline(admin.TabularInline):
    """The consent history, newest first. Staff may record a new grant or withdrawal;
    past rows never change (the latest row per channel and purpose wins)."""

    model = Consent
    fields = ("created_at", "channel", "purpose", "granted", "source", "note")
    readonly_fields = ("created_at",)
    extra = 0
    verbose_name_plural = _("consent history (newest first)")

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# --- profiles -----------------------------------------------------------------------------------


def _first_identity(kind: str) -> Subquery:
    return Subquery(
        Identity.objects.filter(profile=OuterRef("pk"), kind=kind)
        .order_by("created_at", "pk")
        .values("value")[:1]
    )


AGGREGATE_READONLY = (
    "orders_count",
    "total_spent",
    "average_order_value",
    "first_order_at",
    "last_order_at",
    "last_seen_at",
    "last_basket_activity_at",
    "registered_at",
    "sources_display",
    "devices_count",
    "purchased_categories_display",
    "aggregates_updated_at",
)


@admin.register(CustomerProfile)
class CustomerProfileAdmin(admin.ModelAdmin):
    list_display = (
        "__str__",
        "primary_email",
        "primary_phone",
        "orders_count",
        "total_spent",
        "last_order_at",
        "last_seen_at",
        "sources_display",
        "devices_count",
    )
    list_filter = (HasOrdersFilter, SourceFilter, LastSeenFilter)
    search_fields = ("identities__value", "first_name", "last_name", "user__email")
    search_help_text = _(
        "Email, phone (any format), loyalty card, device or visitor key, name or account email."
    )
    ordering = (F("last_seen_at").desc(nulls_last=True), "-pk")  # never seen: at the end
    list_per_page = 50
    actions = ["recompute_aggregates"]
    inlines = [IdentityInline, ConsentInline]
    readonly_fields = (
        "uuid",
        "user_account",
        "created_at",
        *AGGREGATE_READONLY,
        "current_consents",
        "segments",
        "timeline",
        "merge_history",
    )
    fieldsets = (
        (None, {"fields": ("uuid", "user_account", "first_name", "last_name", "created_at")}),
        (
            _("Aggregates (recomputed from the event log, read-only)"),
            {"fields": AGGREGATE_READONLY},
        ),
        (_("Consent"), {"fields": ("current_consents",)}),
        (_("Segments"), {"fields": ("segments",)}),
        (_("Timeline"), {"fields": ("timeline",)}),
        (_("Merges"), {"fields": ("merge_history",)}),
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # profiles are made by folding events, never by hand

    def get_queryset(self, request: HttpRequest) -> QuerySet[CustomerProfile]:
        return (
            super()
            .get_queryset(request)
            .select_related("user")
            .annotate(
                primary_email=_first_identity(IdentityKind.EMAIL),
                primary_phone=_first_identity(IdentityKind.PHONE),
            )
        )

    def get_search_results(self, request, queryset, search_term):
        results, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        exact = _identity_matches(search_term)
        if exact is None:
            return results, may_have_duplicates
        # Also find identities equal to the normalised term ("07911 123456" is stored as
        # "+447911123456"). Both sides are pk subqueries, so no row comes twice.
        matching = Identity.objects.filter(exact).values("profile_id")
        combined = queryset.filter(Q(pk__in=results.values("pk")) | Q(pk__in=matching))
        return combined, False

    # --- columns --------------------------------------------------------------------------------

    @admin.display(description=_("email"), ordering="primary_email", empty_value=EMPTY)
    def primary_email(self, obj: CustomerProfile) -> str | None:
        return getattr(obj, "primary_email", None)

    @admin.display(description=_("phone"), ordering="primary_phone", empty_value=EMPTY)
    def primary_phone(self, obj: CustomerProfile) -> str | None:
        return getattr(obj, "primary_phone", None)

    @admin.display(description=_("sources"))
    def sources_display(self, obj: CustomerProfile) -> str:
        return ", ".join(str(_SOURCE_LABELS[source]) for source in obj.sources) or EMPTY

    # --- profile page ---------------------------------------------------------------------------

    @admin.display(description=_("segments now"))
    def segments(self, obj: CustomerProfile) -> SafeString:
        # Two queries whatever the number of segments (see omnichannel.segments.selectors).
        return profile_segments_html(obj, site_name=self.admin_site.name)

    @admin.display(description=_("categories bought"))
    def purchased_categories_display(self, obj: CustomerProfile) -> SafeString:
        rows = obj.purchased_categories.select_related("category").order_by("-last_bought_at")
        items = [
            (row.category.full_name, row.orders_count, _when(row.last_bought_at)) for row in rows
        ]
        if not items:
            return format_html("{}", EMPTY)
        return format_html(
            "<ul>{}</ul>",
            format_html_join("", "<li>{} ({} orders, last {})</li>", items),
        )

    @admin.display(description=_("user account"))
    def user_account(self, obj: CustomerProfile) -> SafeString:
        user = obj.user
        if user is None:
            return format_html("{}", _("None (never registered)"))
        url = _admin_url(user, "change", user.pk, site_name=self.admin_site.name)
        email = getattr(user, "email", "")
        username = user.get_username()
        text = format_html("{} ({})", email, username) if email else username
        return _link(url, text)

    @admin.display(description=_("current consent"))
    def current_consents(self, obj: CustomerProfile) -> SafeString:
        if obj.pk is None:
            return format_html("{}", EMPTY)
        latest: dict[tuple[str, str], Consent] = {}
        for consent in obj.consents.order_by("-created_at", "-pk"):
            latest.setdefault((consent.channel, consent.purpose), consent)
        if not latest:
            return format_html("<p>{}</p>", _("No consent recorded."))
        rows = sorted(
            latest.values(),
            key=lambda c: (_CHANNEL_ORDER.get(c.channel, 99), _PURPOSE_ORDER.get(c.purpose, 99)),
        )
        body = format_html_join(
            "",
            '<tr class="{}"><td>{}</td><td>{}</td><td><strong>{}</strong></td>'
            "<td>{}</td><td>{}</td></tr>",
            (
                (
                    "consent-granted" if c.granted else "consent-withdrawn",
                    c.get_channel_display(),
                    c.get_purpose_display(),
                    _("granted") if c.granted else _("withdrawn"),
                    _when(c.created_at),
                    c.get_source_display(),
                )
                for c in rows
            ),
        )
        return format_html(
            '<table class="omnichannel-consents"><thead><tr><th>{}</th><th>{}</th><th>{}</th>'
            "<th>{}</th><th>{}</th></tr></thead><tbody>{}</tbody></table>",
            _("Channel"),
            _("Purpose"),
            _("State"),
            _("Since"),
            _("Source"),
            body,
        )

    @admin.display(description=_("latest events"))
    def timeline(self, obj: CustomerProfile) -> SafeString:
        if obj.pk is None:
            return format_html("{}", EMPTY)
        events = list(
            Event.objects.filter(profile=obj)
            .select_related("product", "product__parent", "order")
            .order_by("-occurred_at", "-pk")[: TIMELINE_LIMIT + 1]
        )
        more = len(events) > TIMELINE_LIMIT
        events = events[:TIMELINE_LIMIT]
        changelist = _admin_url(Event, "changelist", site_name=self.admin_site.name)
        all_url = f"{changelist}?profile={obj.pk}" if changelist else None
        if not events:
            return format_html("<p>{}</p>", _("No events yet."))
        body = format_html_join(
            "",
            '<tr class="event-{}"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>'
            '<td style="text-align:right">{}</td></tr>',
            (
                (
                    event.type,
                    _when(event.occurred_at),
                    _link(
                        _admin_url(Event, "change", event.pk, site_name=self.admin_site.name),
                        event_type_label(event.type),
                    ),
                    _SOURCE_LABELS.get(event.source, event.source),
                    _product_title(event.product) or EMPTY,
                    _order_number(event) or EMPTY,
                    _amount(event) or EMPTY,
                )
                for event in events
            ),
        )
        if more:
            footer = format_html(
                "<p>{} {}</p>",
                _("Showing the latest %(limit)d events.") % {"limit": TIMELINE_LIMIT},
                _link(all_url, _("See all events of this profile")),
            )
        else:
            footer = format_html("<p>{}</p>", _link(all_url, _("Open these events in the list")))
        return format_html(
            '<table class="omnichannel-timeline"><thead><tr><th>{}</th><th>{}</th><th>{}</th>'
            "<th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>{}</tbody></table>{}",
            _("Time"),
            _("Event"),
            _("Source"),
            _("Product"),
            _("Order"),
            _("Amount"),
            body,
            footer,
        )

    @admin.display(description=_("merged into this profile"))
    def merge_history(self, obj: CustomerProfile) -> SafeString:
        if obj.pk is None:
            return format_html("{}", EMPTY)
        merges = list(ProfileMerge.objects.filter(survivor=obj).order_by("-created_at", "-pk"))
        if not merges:
            return format_html("<p>{}</p>", _("No other profile was merged into this one."))
        site = self.admin_site.name
        body = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    _link(
                        _admin_url(ProfileMerge, "change", m.pk, site_name=site),
                        _when(m.created_at),
                    ),
                    format_html("#{} ({})", m.merged_profile_id, m.merged_uuid),
                    m.reason,
                    _link(_admin_url(Event, "change", m.event_id, site_name=site), m.event_id)
                    if m.event_id
                    else EMPTY,
                    ", ".join(f"{label}: {n}" for label, n in sorted((m.moved or {}).items()))
                    or EMPTY,
                )
                for m in merges
            ),
        )
        return format_html(
            '<table class="omnichannel-merges"><thead><tr><th>{}</th><th>{}</th><th>{}</th>'
            "<th>{}</th><th>{}</th></tr></thead><tbody>{}</tbody></table>",
            _("Time"),
            _("Merged profile"),
            _("Reason"),
            _("Proving event"),
            _("Rows moved"),
            body,
        )

    # --- actions --------------------------------------------------------------------------------

    @admin.action(description=_("Recompute aggregates"), permissions=["change"])
    def recompute_aggregates(self, request: HttpRequest, queryset: QuerySet) -> None:
        ids = list(queryset.order_by().values_list("pk", flat=True))
        count = refresh_aggregates(ids, now=timezone.now())
        self.message_user(
            request,
            ngettext(
                "Recomputed the aggregates of %(count)d profile.",
                "Recomputed the aggregates of %(count)d profiles.",
                count,
            )
            % {"count": count},
            messages.SUCCESS,
        )


# --- identities ---------------------------------------------------------------------------------


@admin.register(Identity)
class IdentityAdmin(admin.ModelAdmin):
    """Identities are written by the fold task; here they are looked up (or deleted)."""

    list_display = ("value", "kind", "profile_link", "created_at")
    list_filter = ("kind",)
    search_fields = ("value",)
    search_help_text = _("Email, phone (any format), loyalty card, device or visitor key.")
    list_select_related = ("profile",)
    readonly_fields = ("profile", "kind", "value", "created_at")
    ordering = ("-created_at", "-pk")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_search_results(self, request, queryset, search_term):
        results, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        exact = _identity_matches(search_term)
        if exact is None:
            return results, may_have_duplicates
        return queryset.filter(Q(pk__in=results.values("pk")) | exact), False

    @admin.display(description=_("profile"), ordering="profile")
    def profile_link(self, obj: Identity) -> SafeString:
        url = _admin_url(CustomerProfile, "change", obj.profile_id, site_name=self.admin_site.name)
        return _link(url, obj.profile)


# --- events -------------------------------------------------------------------------------------


@admin.register(Event)
class EventAdmin(ReadOnlyModelAdmin):
    """The append-only event log: browse and inspect, never edit."""

    list_display = (
        "occurred_at",
        "type_label",
        "source",
        "profile_link",
        "visitor",
        "product_title",
        "order_number",
        "amount_display",
        "folded",
    )
    list_filter = (EventTypeFilter, "source", ProcessedFilter, ProfileFilter)
    search_fields = ("visitor_key",)
    search_help_text = _("Visitor key, profile id or public id, or order number (exact).")
    list_select_related = ("profile", "product", "product__parent", "order")
    date_hierarchy = "occurred_at"
    ordering = ("-occurred_at", "-pk")
    show_full_result_count = False  # the log is large: one COUNT per page is enough
    show_facets = admin.ShowFacets.NEVER  # a COUNT per filter choice is too much for the log
    list_per_page = 100

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        condition = Q(visitor_key=term) | Q(order__number=term)
        if term.isdigit():
            condition |= Q(profile_id=int(term))
        public_id = _parse_uuid(term)
        if public_id is not None:
            condition |= Q(profile__uuid=public_id)
        return queryset.filter(condition), False

    @admin.display(description=_("visitor"), ordering="visitor_key", empty_value=EMPTY)
    def visitor(self, obj: Event) -> SafeString | None:
        key = obj.visitor_key
        if not key:
            return None
        short = f"{key[:8]}\u2026" if len(key) > 9 else key
        return format_html('<span title="{}">{}</span>', key, short)

    @admin.display(description=_("type"), ordering="type")
    def type_label(self, obj: Event) -> str:
        return event_type_label(obj.type)

    @admin.display(description=_("profile"), ordering="profile")
    def profile_link(self, obj: Event) -> SafeString:
        if obj.profile_id is None:
            return format_html("{}", EMPTY)
        url = _admin_url(CustomerProfile, "change", obj.profile_id, site_name=self.admin_site.name)
        return _link(url, obj.profile)

    @admin.display(description=_("product"), empty_value=EMPTY)
    def product_title(self, obj: Event) -> str:
        return _product_title(obj.product)

    @admin.display(description=_("order"), empty_value=EMPTY)
    def order_number(self, obj: Event) -> str:
        return _order_number(obj)

    @admin.display(description=_("amount"), ordering="amount", empty_value=EMPTY)
    def amount_display(self, obj: Event) -> str:
        return _amount(obj)

    @admin.display(description=_("folded"), boolean=True, ordering="processed_at")
    def folded(self, obj: Event) -> bool:
        return obj.processed_at is not None


# --- merges -------------------------------------------------------------------------------------


@admin.register(ProfileMerge)
class ProfileMergeAdmin(ReadOnlyModelAdmin):
    list_display = (
        "created_at",
        "survivor_link",
        "merged_profile_id",
        "merged_uuid",
        "reason",
        "event",
    )
    search_fields = ("reason",)
    search_help_text = _("Merged profile id or public id, or the surviving profile's id.")
    list_select_related = ("survivor", "event")
    date_hierarchy = "created_at"
    ordering = ("-created_at", "-pk")

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        condition = Q(reason__icontains=term)
        if term.isdigit():
            condition |= Q(merged_profile_id=int(term)) | Q(survivor_id=int(term))
        public_id = _parse_uuid(term)
        if public_id is not None:
            condition |= Q(merged_uuid=public_id)
        return queryset.filter(condition), False

    @admin.display(description=_("survivor"), ordering="survivor")
    def survivor_link(self, obj: ProfileMerge) -> SafeString:
        url = _admin_url(CustomerProfile, "change", obj.survivor_id, site_name=self.admin_site.name)
        return _link(url, obj.survivor)
