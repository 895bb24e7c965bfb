"""Admin of the results: conversions (orders and the message each is attributed to).

Read-only: the attribution job writes these rows (see docs/analytics.md); staff filter and
read them, with the messages that touched an order without winning it inline.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from ..analytics.models import Conversion, Influence
from ..campaigns.models import Campaign
from ..channels.models import Message
from ..profiles.models import CustomerProfile, EventSource
from .display import EMPTY, ProfileFilter, admin_url, link
from .messages import ConfiguredChannelFilter


class ReadOnlyMixin:
    """Rows written by the attribution job only."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class InfluenceInline(ReadOnlyMixin, admin.TabularInline):
    """Messages that touched the order within the windows without winning it."""

    model = Influence
    fields = ("message_link", "channel", "model", "touched_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("-touched_at", "-id")
    verbose_name_plural = _("other messages that touched the order")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Influence]:
        return super().get_queryset(request).select_related("message")

    @admin.display(description=_("message"))
    def message_link(self, obj: Influence) -> SafeString:
        url = admin_url(Message, "change", obj.message_id, site_name=self.admin_site.name)
        return link(url, obj.message)

    @admin.display(description=_("channel"))
    def channel(self, obj: Influence) -> str:
        return obj.message.channel


class AttributedFilter(admin.SimpleListFilter):
    """Orders some message earned, and orders nothing touched."""

    title = _("attributed")
    parameter_name = "attributed"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("yes", _("to a message")), ("no", _("to no message"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "yes":
            return queryset.filter(message__isnull=False)
        if self.value() == "no":
            return queryset.filter(message__isnull=True)
        return queryset


class SourceFilter(admin.SimpleListFilter):
    """Where the order was placed (the web shop, the app, a store's till)."""

    title = _("placed in")
    parameter_name = "source"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return list(EventSource.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value in EventSource.values:
            return queryset.filter(order_event__source=value)
        return queryset


class CampaignFilter(admin.SimpleListFilter):
    """Campaigns by name (no DISTINCT over the conversions); any ?campaign=<id> works."""

    title = _("campaign")
    parameter_name = "campaign"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [(str(pk), name) for pk, name in Campaign.objects.values_list("pk", "name")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value and value.isascii() and value.isdigit():
            return queryset.filter(campaign_id=int(value))
        return queryset


@admin.register(Conversion)
class ConversionAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """Every order with the message it is attributed to (or none), and its revenue."""

    list_display = (
        "ordered_at",
        "order_display",
        "revenue_display",
        "model",
        "campaign",
        "step",
        "variant",
        "channel",
        "message_link",
        "touched_at",
        "profile_link",
    )
    list_display_links = ("ordered_at",)
    list_filter = (
        "model",
        AttributedFilter,
        CampaignFilter,
        ConfiguredChannelFilter,
        SourceFilter,
        ("ordered_at", admin.DateFieldListFilter),
        ProfileFilter,
    )
    # The variant shows as "step: name": its step too, or one query per row.
    list_select_related = ("campaign", "step", "variant__step", "order_event", "order")
    search_fields = ("=order__number", "=order_event__payload__number")
    search_help_text = _("Oscar order number or offline receipt number (exact).")
    date_hierarchy = "ordered_at"
    show_full_result_count = False  # one row per order: a large table
    inlines = (InfluenceInline,)
    fieldsets = (
        (
            _("Order"),
            {
                "fields": (
                    "order_display",
                    "source_display",
                    "ordered_at",
                    "revenue_display",
                    "profile_link",
                )
            },
        ),
        (
            _("Attributed to"),
            {
                "fields": (
                    "model",
                    "message_link",
                    "touched_at",
                    "campaign",
                    "step",
                    "variant",
                    "channel",
                    "attributed_at",
                )
            },
        ),
    )
    readonly_fields = (
        "order_display",
        "source_display",
        "ordered_at",
        "revenue_display",
        "profile_link",
        "model",
        "message_link",
        "touched_at",
        "campaign",
        "step",
        "variant",
        "channel",
        "attributed_at",
    )

    @admin.display(description=_("order"))
    def order_display(self, obj: Conversion) -> SafeString:
        if obj.order is not None:
            try:
                url = reverse("dashboard:order-detail", kwargs={"number": obj.order.number})
            except NoReverseMatch:
                url = None
            return link(url, obj.order.number)
        number = obj.order_event.payload.get("number") if obj.order_event.payload else None
        return link(None, number or f"event {obj.order_event_id}")

    @admin.display(description=_("placed in"))
    def source_display(self, obj: Conversion) -> str:
        return obj.order_event.get_source_display()

    @admin.display(description=_("revenue"), ordering="revenue")
    def revenue_display(self, obj: Conversion) -> str:
        return f"{obj.revenue} {obj.currency}".strip()

    @admin.display(description=_("message"))
    def message_link(self, obj: Conversion) -> SafeString:
        if obj.message_id is None:
            return link(None, EMPTY)
        url = admin_url(Message, "change", obj.message_id, site_name=self.admin_site.name)
        return link(url, f"#{obj.message_id}")

    @admin.display(description=_("profile"))
    def profile_link(self, obj: Conversion) -> SafeString:
        url = admin_url(CustomerProfile, "change", obj.profile_id, site_name=self.admin_site.name)
        return link(url, f"#{obj.profile_id}")
