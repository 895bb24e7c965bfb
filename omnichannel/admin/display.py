"""Small display helpers shared by the app's admin modules."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.widgets import AutocompleteSelect
from django.db.models import Model
from django.urls import NoReverseMatch, reverse
from django.utils import formats, timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

#: What an empty value shows as.
EMPTY = "-"


def when(value: Any) -> str:
    """A datetime in the current time zone and locale, or EMPTY."""
    if value is None:
        return EMPTY
    return formats.localize(timezone.template_localtime(value))


def admin_url(
    model: type[Model] | Model, action: str, *args: Any, site_name: str = "admin"
) -> str | None:
    """The URL of an admin view of ``model`` (e.g. "change", pk), or None if not registered."""
    opts = model._meta
    try:
        return reverse(
            f"admin:{opts.app_label}_{opts.model_name}_{action}", args=args, current_app=site_name
        )
    except NoReverseMatch:
        return None


def link(url: str | None, text: Any) -> SafeString:
    """``text`` as a link to ``url``, or as plain (escaped) text when there is no URL."""
    if url is None:
        return format_html("{}", text)
    return format_html('<a href="{}">{}</a>', url, text)


class ProfileAutocomplete(AutocompleteSelect):
    """The admin's profile search; a typed-in value that is not an id shows as nothing chosen
    (the field's error says why) instead of failing the page."""

    def optgroups(self, name: str, value: list[Any], attr: dict[str, Any] | None = None) -> Any:
        ids = [v for v in value if str(v).isascii() and str(v).isdigit()]
        return super().optgroups(name, ids, attr)


class ProfileFilter(admin.SimpleListFilter):
    """``?profile=<id>``: the rows of one person (linked from the profile page)."""

    title = _("profile")
    parameter_name = "profile"

    def _profile_id(self) -> int | None:
        value = self.value()
        return int(value) if value and value.isascii() and value.isdigit() else None

    def lookups(self, request: Any, model_admin: Any) -> list[tuple[str, str]]:
        from ..profiles.models import CustomerProfile

        pk = self._profile_id()
        if pk is None:
            return []
        profile = CustomerProfile.objects.filter(pk=pk).first()
        return [(str(pk), str(profile) if profile else gettext("Profile %s") % pk)]

    def queryset(self, request: Any, queryset: Any) -> Any:
        pk = self._profile_id()
        return queryset.filter(profile_id=pk) if pk is not None else queryset
