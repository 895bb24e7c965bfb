"""Admin of API keys: create one (its secret is shown once), see when it was used, revoke it."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from ..api.models import ApiKey, Scope


class ApiKeyForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        label=_("scopes"),
        choices=Scope.choices,
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text=_("What the key may do; an endpoint outside its scopes answers 403."),
    )

    class Meta:
        model = ApiKey
        fields = ["name", "source", "scopes", "rate_limit"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyForm
    list_display = [
        "name",
        "prefix",
        "source",
        "scope_list",
        "rate_limit",
        "created_at",
        "last_used_at",
        "status",
    ]
    list_filter = ["source", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix"]
    readonly_fields = ["prefix", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        # The source is what the key's events say they are: fixed once events exist.
        fields = list(super().get_readonly_fields(request, obj))
        return [*fields, "source"] if obj is not None else fields

    @admin.display(description=_("scopes"))
    def scope_list(self, obj: ApiKey) -> str:
        return ", ".join(obj.scopes) if isinstance(obj.scopes, list) else ""

    @admin.display(description=_("status"))
    def status(self, obj: ApiKey) -> str:
        return str(_("revoked")) if obj.revoked_at else str(_("active"))

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        raw = obj.set_new_secret()
        obj.created_at = timezone.now()
        super().save_model(request, obj, form, change)
        # The only time the whole key exists outside the client: only its hash is stored.
        messages.warning(
            request,
            _(
                "The API key of “%(name)s” is: %(key)s — copy it now, it will not be shown "
                "again. Send it as the header: Authorization: Api-Key %(key)s"
            )
            % {"name": obj.name, "key": raw},
        )

    @admin.action(description=_("Revoke the selected API keys"))
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        now = timezone.now()
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=now)
        self.message_user(
            request,
            ngettext("%d key revoked.", "%d keys revoked.", count) % count,
            messages.SUCCESS,
        )
