"""Admin of campaigns and enrollments: the cascade editor, activation, preview and test send.

A campaign's page edits the campaign and its steps (the cascade, one row per step); the trigger
is chosen from the trigger registry and its options are documented beside the JSON they go in.
Whatever is posted goes through ``Campaign.clean`` and ``Step.clean``, whose errors are shown
on the field they name, never as a 500. Status changes only through the Activate / Pause /
Finish actions (and the buttons on the page), so a campaign is checked before it goes live.

"Preview" (staff who may change the campaign) asks the engine what it would do for one person
now (``engine.explain``: the channel and why, or why nothing goes, and the steps it skipped)
and renders that step's message for that person, storing nothing. "Send test" sends the step's
content to the person through the real channel (``queue_message`` then ``deliver_message``),
tagged ``test``: the message is not linked to the campaign, so reports never count it.

A/B variants and the holdout: the campaign's "Measurement" fields set the share of people held
out (they get nothing, so the report can show the uplift) and the conversion window. A step's
variants are edited on the step's own page (the "variants" link on each step row: Django has
no nested inlines), one row per variant with its weight, channel, subject and content, checked
by ``campaigns.content.validate_variant``. The preview says whether the person is held out and
which variant they get, and renders that variant (or the one staff pick); a test send to a
held-out person is refused unless staff tick "Send even though held out".

Enrollments are the engine's records: read-only here, with their history and messages; "End
now" exits active ones.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Count, IntegerField, OuterRef, Q, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce, Greatest
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone
from django.utils.dateparse import parse_duration
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from ..campaigns import engine
from ..campaigns.content import inline_parts, validate_variant
from ..campaigns.groups import is_held_out, pick_variant
from ..campaigns.models import (
    BEST_CHANNEL,
    Campaign,
    CampaignKind,
    CampaignStatus,
    Enrollment,
    EnrollmentAction,
    EnrollmentLog,
    EnrollmentState,
    ExitReason,
    Step,
    Variant,
)
from ..campaigns.triggers import registry as triggers
from ..channels.base import BaseChannel
from ..channels.models import Message, OutboxEntry
from ..channels.sending import deliver_message, queue_message
from ..exceptions import NotReachable
from ..profiles.models import CustomerProfile
from .display import EMPTY, ProfileAutocomplete, ProfileFilter
from .display import admin_url as _admin_url
from .display import link as _link
from .display import when as _when
from .messages import (
    _pretty_json,
    build_preview,
    configured_channels,
    status_badge,
    template_keys,
)
from .reports import report_urls

logger = logging.getLogger("omnichannel.admin")

CSS = "omnichannel/admin/campaign_admin.css"
JS = "omnichannel/admin/campaign_admin.js"
MESSAGES_CSS = "omnichannel/admin/messages.css"

#: Empty step rows on the page of a campaign without steps.
STEP_EXTRA = 2
#: Messages of one enrollment listed on its page (an enrollment has one per step).
ENROLLMENT_MESSAGES_SHOWN = 50
#: The tags of a test send: "test" keeps it out of campaign figures (it has no campaign link).
TEST_TAG = "test"

#: Badge colours of campaign statuses and enrollment states.
STATUS_COLOURS = {
    CampaignStatus.DRAFT: "#6c757d",
    CampaignStatus.ACTIVE: "#198754",
    CampaignStatus.PAUSED: "#a35200",
    CampaignStatus.FINISHED: "#343a40",
    EnrollmentState.ACTIVE: "#0b5ed7",
    EnrollmentState.COMPLETED: "#198754",
    EnrollmentState.EXITED: "#6c757d",
}
#: How staff end an enrollment by hand. ExitReason has no "ended by staff" value yet: the
#: campaign-ended reason is the nearest, and the history row says who ended it.
STAFF_EXIT_REASON = getattr(ExitReason, "ENDED_BY_STAFF", ExitReason.CAMPAIGN_ENDED)


def _badge(value: str, label: str) -> SafeString:
    return format_html(
        '<span class="oc-status oc-status-{}" style="background:{}">{}</span>',
        value,
        STATUS_COLOURS.get(value, "#6c757d"),
        label,
    )


def _count(queryset: QuerySet) -> Subquery:
    """A correlated COUNT of ``queryset`` (filtered on OuterRef), 0 when there are none."""
    counted = queryset.order_by().values("campaign_id").annotate(n=Count("pk")).values("n")
    return Coalesce(Subquery(counted, output_field=IntegerField()), 0)


def trigger_label(key: str) -> str:
    """The registry's label of a trigger key ("unknown: key" when it is not registered)."""
    if not key:
        return EMPTY
    if key in triggers:
        return str(triggers[key].label or key)
    return gettext("unknown: %(key)s") % {"key": key}


# --- form fields --------------------------------------------------------------------------------


class KeySelect(forms.Select):
    """A select of registry keys that keeps showing a stored key the registry no longer has."""

    def get_context(self, name: str, value: Any, attrs: dict[str, Any] | None) -> dict[str, Any]:
        known = {str(key) for key, _label in self.choices}
        if value not in (None, "") and str(value) not in known:
            self.choices = [*self.choices, (value, gettext("unknown: %(key)s") % {"key": value})]
        return super().get_context(name, value, attrs)


#: "30m", "2h", "1d 12h", "90s", "0", or Django's "1 02:00:00" / ISO 8601 "P1DT2H".
_DURATION_PART_RE = re.compile(r"(\d+)\s*([dhms])", re.IGNORECASE)
_DURATION_RE = re.compile(r"^\s*(?:\d+\s*[dhms]\s*)+$", re.IGNORECASE)
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def format_duration(value: timedelta | None) -> str:
    """``timedelta(days=1, hours=6)`` -> "1d 6h"; zero -> "0"."""
    if value is None:
        return ""
    seconds = int(value.total_seconds())
    if seconds <= 0:
        return "0" if seconds == 0 else str(value)
    parts = []
    for unit, size in _UNIT_SECONDS.items():
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return " ".join(parts)


def parse_wait(text: str) -> timedelta:
    """A wait typed by staff: "2h", "1d 12h", "30m", "0"; ValueError when it is none of those."""
    text = text.strip()
    if text in ("", "0"):
        return timedelta(0)
    if _DURATION_RE.match(text):
        seconds = sum(
            int(amount) * _UNIT_SECONDS[unit.lower()]
            for amount, unit in _DURATION_PART_RE.findall(text)
        )
        return timedelta(seconds=seconds)
    parsed = parse_duration(text)
    if parsed is None:
        raise ValueError(text)
    return parsed


class WaitField(forms.Field):
    """A step's wait as short text ("2h", "1d 12h", "30m"); empty means no wait."""

    widget = forms.TextInput(attrs={"size": 8, "class": "oc-wait", "placeholder": "2h"})
    default_error_messages = {
        "invalid": _('Enter a wait like "30m", "2h", "1d" or "1d 12h".'),
    }

    def prepare_value(self, value: Any) -> Any:
        return format_duration(value) if isinstance(value, timedelta) else value

    def to_python(self, value: Any) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_wait(str(value or ""))
        except (ValueError, OverflowError):
            raise ValidationError(self.error_messages["invalid"], code="invalid") from None


class WindowField(WaitField):
    """The campaign's conversion window as short text ("7d", "36h"); must be longer than 0."""

    widget = forms.TextInput(attrs={"size": 8, "class": "oc-window", "placeholder": "7d"})
    default_error_messages = {
        "invalid": _('Enter a window like "7d", "36h" or "1d 12h".'),
        "not_positive": _("The conversion window must be longer than 0."),
    }

    def to_python(self, value: Any) -> timedelta | None:  # type: ignore[override]
        if value in self.empty_values:
            return None  # "required", not "0"
        return super().to_python(value)

    def validate(self, value: Any) -> None:
        super().validate(value)
        if value is not None and value <= timedelta(0):
            raise ValidationError(self.error_messages["not_positive"], code="not_positive")


class TriggerOptionsWidget(forms.Textarea):
    """The trigger options JSON, with each trigger's options (name, default, help) below it.

    Without JavaScript every trigger's options are listed; campaign_admin.js shows only those
    of the trigger chosen in the form.
    """

    template_name = "admin/omnichannel/campaign/trigger_options_widget.html"

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        super().__init__(
            attrs={"rows": 3, "cols": 60, "class": "oc-trigger-options", **(attrs or {})}
        )

    def get_context(self, name: str, value: Any, attrs: dict[str, Any] | None) -> dict[str, Any]:
        context = super().get_context(name, value, attrs)
        context["triggers"] = trigger_catalog()
        return context


def trigger_catalog() -> list[dict[str, Any]]:
    """Each registered trigger with its options, for the options help."""
    catalog = []
    for key, label in triggers.choices():
        trigger = triggers[key]
        options = [
            {
                "name": name,
                "default": json.dumps(option.default),
                "type": getattr(option.type, "__name__", str(option.type)),
                "required": option.required,
                "help": option.help,
            }
            for name, option in trigger.options.items()
        ]
        example = {
            o_name: o.default
            for o_name, o in trigger.options.items()
            if o.default not in (None, "")
        }
        catalog.append(
            {
                "key": key,
                "label": label,
                "description": trigger.description,
                "options": options,
                "example": json.dumps(example) if example else "",
            }
        )
    return catalog


class CampaignForm(forms.ModelForm):
    """The campaign; Campaign.clean names the failing field (trigger, trigger options, ...)."""

    measure_window = WindowField(
        label=_("conversion window"),
        initial=timedelta(days=7),
        help_text=Campaign._meta.get_field("measure_window").help_text,
    )

    class Meta:
        model = Campaign
        fields = (
            "name",
            "kind",
            "purpose",
            "priority",
            "trigger",
            "trigger_options",
            "audience",
            "exclusion",
            "reenroll_after",
            "starts_at",
            "ends_at",
            "quiet_hours",
            "cap_per_day",
            "cap_per_week",
            "when_capped",
            "send_at",
            "send_at_best_hour",
            "holdout_percent",
            "measure_window",
        )
        widgets = {"trigger_options": TriggerOptionsWidget()}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        trigger = self.fields.get("trigger")
        if trigger is not None:
            # Any text is accepted here so that Campaign.clean, which lists the known
            # triggers, is the one to reject an unknown key.
            trigger.widget = KeySelect(
                choices=[("", gettext("(none: a mass campaign)")), *triggers.choices()],
                attrs={"class": "oc-trigger"},
            )
        kind = self.fields.get("kind")
        if kind is not None:
            kind.widget.attrs["class"] = "oc-kind"

    def clean_trigger_options(self) -> Any:
        # An emptied textarea means no options (the column is not nullable).
        value = self.cleaned_data.get("trigger_options")
        return {} if value in (None, "") else value


def step_channel_choices() -> list[tuple[str, str]]:
    """The configured channels that load, then "best"."""
    channels, _broken = configured_channels()
    return [
        *((name, backend.label or name) for name, backend in channels.items()),
        (BEST_CHANNEL, gettext("Best channel for the person")),
    ]


class StepForm(forms.ModelForm):
    """One row of the cascade; Step.clean rejects unknown channels and bad content."""

    wait = WaitField(
        label=_("wait"),
        required=False,
        help_text=_('After the previous message (step 1: after the trigger): "30m", "2h", "1d".'),
    )

    class Meta:
        model = Step
        fields = ("position", "channel", "wait", "stop_if", "template", "best_hour", "content")
        widgets = {
            "position": forms.NumberInput(
                attrs={"class": "oc-position", "min": 1, "style": "width: 4em"}
            ),
            "template": forms.TextInput(
                attrs={"list": "oc-campaign-templates", "size": 18, "autocomplete": "off"}
            ),
            "content": forms.Textarea(attrs={"rows": 2, "cols": 34, "class": "oc-step-content"}),
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Text, not a ChoiceField: an unknown channel reaches Step.clean, whose error lists
        # the configured ones.
        self.fields["channel"].widget = KeySelect(
            choices=[("", "---------"), *step_channel_choices()]
        )
        self.fields["wait"].initial = timedelta(0)

    def clean_wait(self) -> timedelta:
        return self.cleaned_data.get("wait") or timedelta(0)

    def clean_content(self) -> Any:
        value = self.cleaned_data.get("content")
        return {} if value in (None, "") else value


class StepInline(admin.TabularInline):
    """The cascade: one row per step, in order."""

    model = Step
    form = StepForm
    extra = 0
    min_num = 0
    ordering = ("position", "id")
    fields = (
        "position",
        "channel",
        "wait",
        "stop_if",
        "template",
        "best_hour",
        "content",
        "variants_link",
    )
    readonly_fields = ("variants_link",)
    verbose_name = _("step")
    verbose_name_plural = _("steps (the cascade, in order)")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Step]:
        return super().get_queryset(request).prefetch_related("variants")

    def get_extra(self, request, obj=None, **kwargs):
        if obj is None or not obj.pk or not obj.steps.exists():
            return STEP_EXTRA
        return 0

    @admin.display(description=_("A/B variants"))
    def variants_link(self, obj: Step) -> SafeString:
        if obj is None or obj.pk is None:
            return format_html("{}", gettext("save the step first"))
        url = _admin_url(Step, "change", obj.pk, site_name=self.admin_site.name)
        variants = list(obj.variants.all())
        summary = variant_shares(variants) if variants else gettext("none")
        return format_html(
            '{} <a href="{}" class="oc-variants-link">{}</a>', summary, url or "", gettext("edit")
        )


def variant_shares(variants: list[Variant]) -> str:
    """ "A 50 %, B 50 %": each variant's name and share of the step's people."""
    total = sum(max(variant.weight, 1) for variant in variants) or 1
    return ", ".join(
        f"{variant.name} {round(100 * max(variant.weight, 1) / total)} %"
        for variant in sorted(variants, key=lambda variant: variant.pk)
    )


# --- variants (on the step's page) --------------------------------------------------------------


def variant_channel_choices() -> list[tuple[str, str]]:
    return [("", gettext("(the step's channel)")), *step_channel_choices()]


class VariantForm(forms.ModelForm):
    """One variant; ``validate_variant`` checks its channel, content JSON and templates."""

    class Meta:
        model = Variant
        fields = ("name", "weight", "channel", "subject", "content")
        widgets = {
            "name": forms.TextInput(attrs={"size": 10}),
            "weight": forms.NumberInput(attrs={"min": 1, "style": "width: 4em"}),
            "subject": forms.TextInput(attrs={"size": 30}),
            "content": forms.Textarea(attrs={"rows": 3, "cols": 40, "class": "oc-step-content"}),
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Text, not a ChoiceField: an unknown channel reaches validate_variant, whose error
        # lists the configured ones.
        self.fields["channel"].widget = KeySelect(choices=variant_channel_choices())

    def clean_content(self) -> Any:
        value = self.cleaned_data.get("content")
        return {} if value in (None, "") else value

    def _post_clean(self) -> None:
        super()._post_clean()
        try:
            validate_variant(self.instance)
        except ValidationError as exc:
            self._update_errors(exc)


class VariantInline(admin.TabularInline):
    """The step's A/B variants: each person gets one, by a stable hash, weighed."""

    model = Variant
    form = VariantForm
    extra = 0
    fields = ("name", "weight", "share", "channel", "subject", "content")
    readonly_fields = ("share",)
    verbose_name = _("A/B variant")
    verbose_name_plural = _("A/B variants (each person gets one)")

    def get_extra(self, request, obj=None, **kwargs):
        if obj is None or not obj.pk or not obj.variants.exists():
            return 2
        return 1

    def get_queryset(self, request: HttpRequest) -> QuerySet[Variant]:
        # Each row's share needs its step's weight total, and its title (``str``) its step:
        # both in the rows' own query, not once per row.
        weights = (
            Variant.objects.filter(step=OuterRef("step"))
            .order_by()
            .values("step")
            .annotate(total=Sum(Greatest("weight", Value(1))))
            .values("total")
        )
        return (
            super()
            .get_queryset(request)
            .select_related("step")
            .annotate(step_weight_total=Subquery(weights))
        )

    @admin.display(description=_("share"))
    def share(self, obj: Variant) -> str:
        if obj is None or obj.pk is None:
            return EMPTY
        total = getattr(obj, "step_weight_total", None)
        if total is None:  # a row not read through get_queryset
            total = sum(
                max(weight, 1) for weight in obj.step.variants.values_list("weight", flat=True)
            )
        return f"{round(100 * max(obj.weight, 1) / (total or 1))} %"


@admin.register(Step)
class StepAdmin(admin.ModelAdmin):
    """A step's page: its A/B variants (the step itself is edited on its campaign's page)."""

    inlines = [VariantInline]
    fields = (
        "campaign_link",
        "position",
        "channel",
        "wait_display",
        "template",
        "content_display",
    )
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Step]:
        return super().get_queryset(request).select_related("campaign")

    def has_module_permission(self, request: HttpRequest) -> bool:
        return False  # reached from a campaign's step rows, not the admin index

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # steps are added on their campaign's page

    @admin.display(description=_("campaign"))
    def campaign_link(self, obj: Step) -> SafeString:
        url = _admin_url(Campaign, "change", obj.campaign_id, site_name=self.admin_site.name)
        return _link(url, obj.campaign)

    @admin.display(description=_("wait"))
    def wait_display(self, obj: Step) -> str:
        return format_duration(obj.wait) or "0"

    @admin.display(description=_("inline content"))
    def content_display(self, obj: Step) -> SafeString:
        return _pretty_json(obj.content) if obj.content else format_html("{}", EMPTY)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        step = self.get_object(request, object_id)
        if step is not None:
            title = gettext("A/B variants of step %(position)s of %(campaign)s") % {
                "position": step.position,
                "campaign": step.campaign,
            }
            extra_context = {"title": title, **(extra_context or {})}
        return super().change_view(request, object_id, form_url, extra_context)

    def _back_to_campaign(self, obj: Step) -> HttpResponseRedirect:
        url = _admin_url(Campaign, "change", obj.campaign_id, site_name=self.admin_site.name)
        return HttpResponseRedirect(url or "../")

    def response_change(self, request: HttpRequest, obj: Step) -> HttpResponse:
        if "_continue" in request.POST or "_addanother" in request.POST:
            return super().response_change(request, obj)
        self.message_user(
            request,
            gettext("The variants of step %(position)s were saved.") % {"position": obj.position},
            messages.SUCCESS,
        )
        return self._back_to_campaign(obj)

    def response_delete(self, request: HttpRequest, obj_display: str, obj_id: Any) -> HttpResponse:
        response = super().response_delete(request, obj_display, obj_id)
        campaign_id = getattr(request, "_oc_deleted_step_campaign", None)
        if campaign_id is None:
            return response
        url = _admin_url(Campaign, "change", campaign_id, site_name=self.admin_site.name)
        return HttpResponseRedirect(url) if url else response

    def delete_model(self, request: HttpRequest, obj: Step) -> None:
        request._oc_deleted_step_campaign = obj.campaign_id  # type: ignore[attr-defined]
        super().delete_model(request, obj)


# --- filters ------------------------------------------------------------------------------------


class TriggerFilter(admin.SimpleListFilter):
    title = _("trigger")
    parameter_name = "trigger"

    def lookups(self, request, model_admin):
        choices = list(triggers.choices())
        value = self.value()
        if value and value not in triggers:
            choices.append((value, trigger_label(value)))
        return choices

    def queryset(self, request, queryset):
        value = self.value()
        return queryset.filter(trigger=value) if value else queryset


# --- campaigns ----------------------------------------------------------------------------------


def activation_problems(campaign: Campaign) -> list[str]:
    """Why ``campaign`` cannot go live (empty when it can)."""
    problems: list[str] = []
    try:
        campaign.clean()
    except ValidationError as exc:
        problems.extend(exc.messages)
    steps = list(campaign.steps.order_by("position", "id"))
    if not steps:
        problems.append(gettext("it has no steps"))
    for step in steps:
        try:
            step.clean()
        except ValidationError as exc:
            problems.extend(
                gettext("step %(position)s: %(error)s")
                % {"position": step.position, "error": error}
                for error in exc.messages
            )
        for variant in step.variants.all():
            try:
                validate_variant(variant)
            except ValidationError as exc:
                problems.extend(
                    gettext("step %(position)s, variant %(name)s: %(error)s")
                    % {"position": step.position, "name": variant.name, "error": error}
                    for error in exc.messages
                )
    return problems


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    """Campaigns: what to say, to whom, when; the cascade of steps; preview and test send."""

    form = CampaignForm
    inlines = [StepInline]
    list_display = (
        "name",
        "kind",
        "status_display",
        "trigger_display",
        "audience",
        "priority",
        "enrollments_display",
        "messages_sent",
    )
    list_filter = ("kind", "status", TriggerFilter)
    list_select_related = ("audience",)
    search_fields = ("name",)
    search_help_text = _("Words of the name.")
    ordering = ("-priority", "name")
    actions = ["activate", "pause", "finish"]
    readonly_fields = (
        "status_display",
        "launched_at",
        "last_scanned_at",
        "created_at",
        "updated_at",
        "enrollment_summary",
    )
    fieldsets = (
        (
            _("What"),
            {"fields": ("name", ("kind", "status_display"), "purpose", "priority")},
        ),
        (
            _("Who"),
            {
                "fields": (
                    "trigger",
                    "trigger_options",
                    "audience",
                    "exclusion",
                    "reenroll_after",
                ),
                "description": _(
                    "A triggered campaign enrolls people as its trigger fires; a mass "
                    "campaign enrolls its audience segment once, at the send time."
                ),
            },
        ),
        (_("When"), {"fields": (("starts_at", "ends_at"), "quiet_hours")}),
        (
            _("Frequency caps"),
            {
                "fields": (("cap_per_day", "cap_per_week"), "when_capped"),
                "description": _("On top of the shop-wide caps of all marketing (FREQUENCY_CAPS)."),
            },
        ),
        (
            _("Mass send"),
            {"fields": ("send_at", "send_at_best_hour", "launched_at"), "classes": ("oc-mass",)},
        ),
        (
            _("Measurement: holdout and A/B variants"),
            {
                "fields": (("holdout_percent", "measure_window"),),
                "description": _(
                    "The holdout gets no message, so the report can compare the people who "
                    "got the campaign with those who did not; an order within the conversion "
                    "window after enrolling counts for both. Who is held out depends only on "
                    "the person and the campaign, so it stays the same. A step's A/B variants "
                    "are edited on the step's page: the variants link in its row."
                ),
            },
        ),
        (
            _("Progress"),
            {"fields": ("enrollment_summary", "last_scanned_at", ("created_at", "updated_at"))},
        ),
    )

    class Media:
        css = {"all": [MESSAGES_CSS, CSS]}
        js = [JS]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Campaign]:
        # Three correlated counts instead of joins: one query for the whole page.
        mine = {"campaign": OuterRef("pk")}
        return (
            super()
            .get_queryset(request)
            .annotate(
                active_count=_count(
                    Enrollment.objects.filter(**mine, state=EnrollmentState.ACTIVE)
                ),
                enrollment_count=_count(Enrollment.objects.filter(**mine)),
                sent_count=_count(Message.objects.filter(**mine, sent_at__isnull=False)),
            )
        )

    def get_fieldsets(self, request, obj=None):
        if obj is None:  # nothing to report before the campaign exists
            return [fs for fs in self.fieldsets if fs[1]["fields"][0] != "enrollment_summary"]
        return self.fieldsets

    def get_formset_kwargs(self, request, obj, inline, prefix):
        kwargs = super().get_formset_kwargs(request, obj, inline, prefix)
        if isinstance(inline, StepInline):
            # New rows are numbered after the existing steps (campaign_admin.js numbers rows
            # added with "Add another"). The same on POST, so an untouched row stays unchanged.
            last = 0
            if obj is not None and obj.pk:
                last = obj.steps.order_by("-position").values_list("position", flat=True).first()
            kwargs["initial"] = [{"position": (last or 0) + n} for n in range(1, STEP_EXTRA + 1)]
        return kwargs

    # --- columns --------------------------------------------------------------------------------

    @admin.display(description=_("status"), ordering="status")
    def status_display(self, obj: Campaign) -> SafeString:
        return _badge(obj.status, obj.get_status_display())

    @admin.display(description=_("trigger"), ordering="trigger")
    def trigger_display(self, obj: Campaign) -> str:
        if obj.kind == CampaignKind.MASS:
            return gettext("mass send")
        return trigger_label(obj.trigger)

    @admin.display(description=_("enrollments active / total"))
    def enrollments_display(self, obj: Campaign) -> SafeString:
        url = _admin_url(Enrollment, "changelist", site_name=self.admin_site.name)
        text = f"{getattr(obj, 'active_count', 0)} / {getattr(obj, 'enrollment_count', 0)}"
        if url is None:
            return format_html("{}", text)
        return _link(f"{url}?{urlencode({'campaign__id__exact': obj.pk})}", text)

    @admin.display(description=_("messages sent"), ordering="sent_count")
    def messages_sent(self, obj: Campaign) -> SafeString:
        url = _admin_url(Message, "changelist", site_name=self.admin_site.name)
        count = getattr(obj, "sent_count", 0)
        if url is None or not count:
            return format_html("{}", count)
        return _link(f"{url}?{urlencode({'campaign__id__exact': obj.pk})}", count)

    @admin.display(description=_("enrollments"))
    def enrollment_summary(self, obj: Campaign) -> SafeString:
        if obj.pk is None:
            return format_html("{}", EMPTY)
        counts = dict(
            Enrollment.objects.filter(campaign=obj)
            .order_by()
            .values_list("state")
            .annotate(n=Count("pk"))
            .values_list("state", "n")
        )
        url = _admin_url(Enrollment, "changelist", site_name=self.admin_site.name) or ""
        return format_html_join(
            ", ",
            '<a href="{}?{}">{}: {}</a>',
            (
                (
                    url,
                    urlencode({"campaign__id__exact": obj.pk, "state__exact": state}),
                    label,
                    counts.get(state, 0),
                )
                for state, label in EnrollmentState.choices
            ),
        )

    # --- saving ---------------------------------------------------------------------------------

    def save_model(self, request, obj, form, change):
        if not change:
            obj.status = CampaignStatus.DRAFT
        super().save_model(request, obj, form, change)

    # --- actions --------------------------------------------------------------------------------

    @admin.action(description=_("Activate the selected campaigns"), permissions=["change"])
    def activate(self, request: HttpRequest, queryset: QuerySet[Campaign]) -> None:
        for campaign in queryset:
            self._activate(request, campaign)

    @admin.action(description=_("Pause the selected campaigns"), permissions=["change"])
    def pause(self, request: HttpRequest, queryset: QuerySet[Campaign]) -> None:
        for campaign in queryset:
            self._pause(request, campaign)

    @admin.action(
        description=_("Finish the selected campaigns (running enrollments end)"),
        permissions=["change"],
    )
    def finish(self, request: HttpRequest, queryset: QuerySet[Campaign]) -> None:
        count = queryset.exclude(status=CampaignStatus.FINISHED).update(
            status=CampaignStatus.FINISHED, updated_at=timezone.now()
        )
        self.message_user(
            request,
            ngettext(
                "%(count)d campaign finished: its running enrollments end at the next tick.",
                "%(count)d campaigns finished: their running enrollments end at the next tick.",
                count,
            )
            % {"count": count},
            messages.SUCCESS,
        )

    def _activate(self, request: HttpRequest, campaign: Campaign) -> bool:
        if campaign.status == CampaignStatus.ACTIVE:
            self.message_user(
                request, gettext("%(name)s is already active.") % {"name": campaign}, messages.INFO
            )
            return False
        problems = activation_problems(campaign)
        if problems:
            self.message_user(
                request,
                gettext("%(name)s was not activated: %(problems)s")
                % {"name": campaign, "problems": "; ".join(problems)},
                messages.ERROR,
            )
            return False
        Campaign.objects.filter(pk=campaign.pk).update(
            status=CampaignStatus.ACTIVE, updated_at=timezone.now()
        )
        if campaign.kind == CampaignKind.MASS:
            when = _when(campaign.send_at) if campaign.send_at else gettext("at the next tick")
            text = gettext("%(name)s is active: it is sent %(when)s.") % {
                "name": campaign,
                "when": when,
            }
        else:
            text = gettext("%(name)s is active: its trigger enrolls people from now on.") % {
                "name": campaign
            }
        self.message_user(request, text, messages.SUCCESS)
        return True

    def _pause(self, request: HttpRequest, campaign: Campaign) -> bool:
        if campaign.status != CampaignStatus.ACTIVE:
            self.message_user(
                request,
                gettext("%(name)s is not active (%(status)s): nothing to pause.")
                % {"name": campaign, "status": campaign.get_status_display().lower()},
                messages.INFO,
            )
            return False
        Campaign.objects.filter(pk=campaign.pk).update(
            status=CampaignStatus.PAUSED, updated_at=timezone.now()
        )
        self.message_user(
            request,
            gettext("%(name)s is paused: its enrollments wait until it is activated again.")
            % {"name": campaign},
            messages.SUCCESS,
        )
        return True

    # --- URLs -----------------------------------------------------------------------------------

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        wrap = self.admin_site.admin_view
        return [
            path(
                "<path:object_id>/preview/",
                # A test send calls the provider: never inside ATOMIC_REQUESTS' transaction.
                transaction.non_atomic_requests(wrap(self.preview_view)),
                name="{}_{}_preview".format(*info),
            ),
            path(
                "<path:object_id>/activate/",
                wrap(self.activate_view),
                name="{}_{}_activate".format(*info),
            ),
            path(
                "<path:object_id>/pause/",
                wrap(self.pause_view),
                name="{}_{}_pause".format(*info),
            ),
            *report_urls(self),  # the campaign reports (admin/reports.py)
            *super().get_urls(),
        ]

    def _campaign_for_change(self, request: HttpRequest, object_id: str) -> Campaign:
        campaign = self.get_object(request, object_id)
        if campaign is None:
            raise Http404(gettext("No such campaign."))
        if not self.has_change_permission(request, campaign):
            raise PermissionDenied
        return campaign

    def activate_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST: activate the campaign (after the checks), back to its page."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        campaign = self._campaign_for_change(request, object_id)
        self._activate(request, campaign)
        return HttpResponseRedirect(self._change_url(campaign))

    def pause_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST: pause the campaign, back to its page."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        campaign = self._campaign_for_change(request, object_id)
        self._pause(request, campaign)
        return HttpResponseRedirect(self._change_url(campaign))

    def _change_url(self, campaign: Campaign) -> str:
        return _admin_url(Campaign, "change", campaign.pk, site_name=self.admin_site.name) or "/"

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), **self._page_context()}
        return super().change_view(request, object_id, form_url, extra_context)

    def add_view(self, request, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), **self._page_context()}
        return super().add_view(request, form_url, extra_context)

    def _page_context(self) -> dict[str, Any]:
        channels, _broken = configured_channels()
        keys = sorted({key for backend in channels.values() for key in template_keys(backend)})
        return {
            "template_keys": keys,
            "enrollments_url": _admin_url(Enrollment, "changelist", site_name=self.admin_site.name),
        }

    # --- preview and test send ------------------------------------------------------------------

    def preview_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """What the engine would do for a person now, the message it would send; a test send."""
        campaign = self._campaign_for_change(request, object_id)
        steps = list(campaign.steps.order_by("position", "id"))
        channels, broken = configured_channels()
        form_kwargs = {
            "campaign": campaign,
            "steps": steps,
            "channels": channels,
            "admin_site": self.admin_site,
        }
        preview: dict[str, Any] | None = None
        if request.method == "POST":
            form = CampaignPreviewForm(request.POST, **form_kwargs)
            if form.is_valid():
                if "_send" in request.POST:
                    response = self._test_send(request, campaign, form)
                    if response is not None:
                        return response
                else:
                    preview = build_campaign_preview(campaign, form, now=timezone.now())
        elif request.GET.get("profile"):
            form = CampaignPreviewForm(request.GET, **form_kwargs)
            if form.is_valid():
                preview = build_campaign_preview(campaign, form, now=timezone.now())
        else:
            form = CampaignPreviewForm(**form_kwargs)
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("Preview: %(name)s") % {"name": campaign},
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "original": campaign,
            "campaign": campaign,
            "steps": steps,
            "form": form,
            "media": self.media + form.media,
            "preview": preview,
            "broken_channels": sorted(broken.items()),
            "change_url": self._change_url(campaign),
            "has_view_permission": self.has_view_permission(request),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/omnichannel/campaign/preview.html", context)

    def _test_send(
        self, request: HttpRequest, campaign: Campaign, form: CampaignPreviewForm
    ) -> HttpResponse | None:
        """Queue and deliver the step's message now; a redirect, or None to show the errors."""
        profile: CustomerProfile = form.cleaned_data["profile"]
        if held_out(campaign, profile) and not form.cleaned_data.get("send_held_out"):
            # The test goes to the person's real address: someone in the holdout must get
            # nothing from the campaign, or the comparison with the others is spoiled.
            form.add_error(
                "send_held_out",
                gettext(
                    "Not sent: this person is in the campaign's holdout and must get no "
                    'message from it. Tick "Send even though held out" to send anyway.'
                ),
            )
            return None
        step, channel = form.cleaned_data["step"], form.cleaned_data["channel"]
        now = timezone.now()
        decision = None
        if step is None or not channel:
            decision = _explain(campaign, profile, now=now)
            step = step or _step_in_question(decision) or form.first_step
        if step is None:
            form.add_error(None, gettext("This campaign has no steps: there is nothing to send."))
            return None
        variant, _notes = variant_for(campaign, step, profile, form.cleaned_data.get("variant"))
        if not channel:
            channel = _decided_channel(decision, step) or _fixed_channel(step, variant)
        if not channel:
            form.add_error(
                "channel",
                gettext(
                    "Step %(position)s sends on the best channel and none can reach this "
                    "person now: choose a channel."
                )
                % {"position": step.position},
            )
            return None
        backend = form.channels.get(channel)
        if backend is None:
            form.add_error(
                "channel", gettext("The channel %(name)r cannot be used.") % {"name": channel}
            )
            return None
        extra, _notes = step_context(campaign, step, profile, backend, variant)
        tags = [TEST_TAG, f"campaign:{campaign.pk}", f"step:{step.position}"]
        if variant is not None:
            tags.append(f"variant:{variant.name}")
        try:
            message = queue_message(
                profile,
                channel=channel,
                purpose=campaign.purpose,
                now=now,
                template=step.template,
                inline=step_inline(step, backend, variant),
                context=extra,
                tags=tags,
            )
        except NotReachable as exc:
            form.add_error(
                "channel",
                gettext("Not sent: %(channel)s cannot reach this person: %(reason)s")
                % {"channel": backend.label or channel, "reason": exc},
            )
            return None
        except Exception as exc:  # a template or channel error is shown, never a 500
            logger.warning(
                "campaign %s: test send on %s failed to queue", campaign.pk, channel, exc_info=True
            )
            form.add_error(
                None,
                gettext("Not sent: the message could not be rendered: %(error)s")
                % {"error": f"{type(exc).__name__}: {exc}"},
            )
            return None
        message_url = _admin_url(Message, "change", message.pk, site_name=self.admin_site.name)
        try:
            message = deliver_message(message, now=now)
        except Exception as exc:  # the message exists: staff follow its link
            logger.exception("test send of message %s crashed", message.pk)
            self.message_user(
                request,
                format_html(
                    '{} <a href="{}">{}</a>',
                    gettext("The test message was queued but sending crashed: %(error)s")
                    % {"error": f"{type(exc).__name__}: {exc}"},
                    message_url or "",
                    gettext("Message #%(pk)s") % {"pk": message.pk},
                ),
                messages.ERROR,
            )
        else:
            self._report_test_send(request, message, message_url)
        query = {"profile": profile.pk, "step": step.pk, "channel": channel}
        if variant is not None and form.cleaned_data.get("variant") is not None:
            query["variant"] = variant.pk
        preview_url = _admin_url(Campaign, "preview", campaign.pk, site_name=self.admin_site.name)
        return HttpResponseRedirect(f"{preview_url}?{urlencode(query)}")

    def _report_test_send(self, request: HttpRequest, message: Message, url: str | None) -> None:
        link = format_html(
            '<a href="{}" class="oc-test-message">{}</a>',
            url or "",
            gettext("Message #%(pk)s in the message log") % {"pk": message.pk},
        )
        if message.sent_at is not None:
            entry = message.outbox_entries.order_by("-pk").first()
            outbox = ""
            if entry is not None:
                outbox = format_html(
                    ' (<a href="{}">{}</a>)',
                    _admin_url(OutboxEntry, "change", entry.pk, site_name=self.admin_site.name)
                    or "",
                    gettext("outbox mode: see it in the outbox"),
                )
            self.message_user(
                request,
                format_html(
                    "{} {}{}",
                    gettext("Test message sent to %(address)s:") % {"address": message.address},
                    link,
                    outbox,
                ),
                messages.SUCCESS,
            )
        else:
            self.message_user(
                request,
                format_html(
                    "{} {}",
                    gettext("Test message not sent yet (%(status)s): %(error)s")
                    % {"status": message.get_status_display(), "error": message.error or EMPTY},
                    link,
                ),
                messages.WARNING,
            )


# --- preview ------------------------------------------------------------------------------------


class CampaignPreviewForm(forms.Form):
    """Who; optionally which step and channel (default: what the engine decides now)."""

    profile = forms.ModelChoiceField(
        label=_("Profile"),
        queryset=CustomerProfile.objects.all(),
        help_text=_("Search by email, phone or name."),
        error_messages={
            "required": _("Choose a person to preview the campaign for."),
            "invalid_choice": _("No customer profile with this id."),
        },
    )
    step = forms.TypedChoiceField(
        label=_("Step"),
        required=False,
        coerce=int,
        empty_value=None,
        help_text=_("Empty: the step the engine would send now (else the first step)."),
    )
    channel = forms.ChoiceField(
        label=_("Channel"),
        required=False,
        help_text=_("Empty: the channel the engine would choose (the step's own, or the best)."),
    )
    variant = forms.TypedChoiceField(
        label=_("A/B variant"),
        required=False,
        coerce=int,
        empty_value=None,
        help_text=_("Empty: the variant this person gets (steps with variants only)."),
    )
    send_held_out = forms.BooleanField(
        label=_("Send even though held out"),
        required=False,
        help_text=_(
            "A test send goes to the person's real address. Someone in the campaign's holdout "
            "gets none unless this is ticked."
        ),
    )

    def __init__(
        self,
        *args: Any,
        campaign: Campaign,
        steps: list[Step],
        channels: dict[str, BaseChannel],
        admin_site: admin.AdminSite,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.campaign = campaign
        self.steps = {step.pk: step for step in steps}
        self.first_step = steps[0] if steps else None
        self.channels = channels
        self.fields["step"].choices = [
            ("", gettext("(the engine's choice)")),
            *((step.pk, step_label(step)) for step in steps),
        ]
        self.fields["channel"].choices = [
            ("", gettext("(the engine's choice)")),
            *((name, backend.label or name) for name, backend in channels.items()),
        ]
        self.variants = {
            variant.pk: variant
            for variant in Variant.objects.filter(step__in=steps).order_by("step__position", "pk")
        }
        for variant in self.variants.values():
            variant.step = self.steps[variant.step_id]
        if self.variants:
            self.fields["variant"].choices = [
                ("", gettext("(the person's own)")),
                *(
                    (pk, f"{step_label(variant.step)}: {variant.name}")
                    for pk, variant in self.variants.items()
                ),
            ]
        else:
            del self.fields["variant"]
        profile = self.fields["profile"]
        # The profile admin's search (email, phone, name), as on the enrollment's profile field.
        profile.widget = ProfileAutocomplete(Enrollment._meta.get_field("profile"), admin_site)
        profile.widget.is_required = True
        profile.widget.choices = profile.choices

    def clean_step(self) -> Step | None:
        pk = self.cleaned_data.get("step")
        if pk is None:
            return None
        if pk not in self.steps:
            raise ValidationError(_("This step is not part of the campaign."))
        return self.steps[pk]

    def clean_variant(self) -> Variant | None:
        pk = self.cleaned_data.get("variant")
        if pk is None:
            return None
        if pk not in self.variants:
            raise ValidationError(_("This variant is not one of the campaign's."))
        return self.variants[pk]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        variant, step = cleaned.get("variant"), cleaned.get("step")
        if variant is not None:
            if step is None:
                cleaned["step"] = variant.step  # previewing a variant previews its step
            elif step.pk != variant.step_id:
                self.add_error(
                    "variant",
                    gettext("Variant %(name)s belongs to step %(position)s, not this step.")
                    % {"name": variant.name, "position": variant.step.position},
                )
        return cleaned


def step_label(step: Step) -> str:
    wait = format_duration(step.wait) or "0"
    channel = gettext("best channel") if step.channel == BEST_CHANNEL else step.channel
    return gettext("Step %(position)s: %(channel)s after %(wait)s (%(template)s)") % {
        "position": step.position,
        "channel": channel,
        "wait": wait,
        "template": step.template or EMPTY,
    }


def step_inline(
    step: Step, backend: BaseChannel, variant: Variant | None = None
) -> dict[str, str] | None:
    """The step's inline parts for this channel, the variant's over them (as the delivery
    task renders them: ``campaigns.content.inline_parts``)."""
    return inline_parts(backend, step, variant)


def held_out(campaign: Campaign, profile: CustomerProfile) -> bool:
    """Whether the person is in the campaign's holdout: by the hash now (what the preview
    says), or by the group stored on an enrollment of theirs (a share changed since moves
    nobody already enrolled)."""
    if campaign.holds_out and is_held_out(profile.pk, campaign):
        return True
    return campaign.enrollments.filter(profile=profile, holdout=True).exists()


def variant_for(
    campaign: Campaign, step: Step, profile: CustomerProfile, chosen: Variant | None = None
) -> tuple[Variant | None, list[str]]:
    """The variant of ``step`` to show (``chosen``, else the person's own) and notes saying
    whether the person is held out and which variant they get."""
    notes: list[str] = []
    if campaign.holds_out and is_held_out(profile.pk, campaign):
        notes.append(
            gettext(
                "Held out: this person is in the campaign's holdout (%(percent)s %% of the "
                "people) and gets no message from it. Below is what the others get."
            )
            % {"percent": campaign.holdout_percent}
        )
    variants = list(step.variants.all())
    own = pick_variant(profile.pk, campaign.pk, variants)
    if own is None:
        return None, notes
    if chosen is not None and chosen.pk != own.pk:
        notes.append(
            gettext(
                "A/B: shown is variant %(chosen)s of step %(position)s; this person gets "
                "variant %(own)s (%(shares)s)."
            )
            % {
                "chosen": chosen.name,
                "own": own.name,
                "position": step.position,
                "shares": variant_shares(variants),
            }
        )
        return chosen, notes
    notes.append(
        gettext("A/B: this person gets variant %(name)s of step %(position)s (%(shares)s).")
        % {"name": own.name, "position": step.position, "shares": variant_shares(variants)}
    )
    return own, notes


def _explain(
    campaign: Campaign, profile: CustomerProfile, *, now: datetime
) -> engine.Decision | None:
    try:
        return engine.explain(campaign, profile, now=now)
    except Exception:  # e.g. a segment's rules broken since: shown, not a 500
        logger.exception("explain failed for campaign %s, profile %s", campaign.pk, profile.pk)
        return None


def _step_in_question(decision: engine.Decision | None) -> Step | None:
    """The step the decision is about: the one it sends or waits for, else the first it skipped."""
    if decision is None:
        return None
    if decision.step is not None:
        return decision.step
    return decision.skipped[0][0] if decision.skipped else None


def _decided_channel(decision: engine.Decision | None, step: Step | None) -> str:
    """The engine's channel when it decided on this step."""
    if decision is None or step is None or decision.step is None:
        return ""
    return decision.channel if decision.step.pk == step.pk else ""


def step_context(
    campaign: Campaign,
    step: Step,
    profile: CustomerProfile,
    backend: BaseChannel,
    variant: Variant | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The template context beyond the common one, as the delivery task would build it.

    For a person with an active enrollment, the campaign's content builder gives the trigger's
    data, the current items and recommendations. Anyone else is previewed as if just enrolled,
    without a subject: no items, recommendations for the person. Returns (context, notes).
    """
    enrollment = (
        Enrollment.objects.filter(campaign=campaign, profile=profile, state=EnrollmentState.ACTIVE)
        .order_by("-enrolled_at", "-pk")
        .first()
    )
    notes: list[str] = []
    if enrollment is not None:
        built, note = _enrollment_context(campaign, step, profile, backend, enrollment, variant)
        if built is not None:
            return built, notes
        notes.append(note)
    else:
        notes.append(
            gettext(
                "Not enrolled: shown as if just enrolled, without a subject (no basket, order "
                "or items)."
            )
        )
    context: dict[str, Any] = {
        "campaign": campaign,
        "step": step,
        "variant": variant,
        "enrollment": enrollment,
        "items": [],
        "item": None,
        "recommendations": _recommendations(profile),
        "order": None,
        "restore_url": "",
        "wishlist_url": "",
    }
    from ..tracking import links

    context["action_url"] = links.site_url() + "/"
    return context, notes


def _enrollment_context(
    campaign: Campaign,
    step: Step,
    profile: CustomerProfile,
    backend: BaseChannel,
    enrollment: Enrollment,
    variant: Variant | None = None,
) -> tuple[dict[str, Any] | None, str]:
    """The content builder's context for an unsaved message of this enrollment and step."""
    try:
        from ..campaigns import content

        enrollment.campaign = campaign
        enrollment.profile = profile
        message = Message(
            profile=profile,
            channel=backend.name,
            purpose=campaign.purpose,
            campaign=campaign,
            enrollment=enrollment,
            step=step,
            language=profile.language or settings.LANGUAGE_CODE,
        )
        built = content.build_contexts([message]).get(message.pk)
        if isinstance(built, dict):
            built["variant"] = variant  # the unsaved message has none to load
    except Exception as exc:  # the preview goes on with a plain context
        logger.warning(
            "campaign %s: could not build the message context", campaign.pk, exc_info=True
        )
        return None, gettext(
            "The message data could not be built (%(error)s): shown without it."
        ) % {"error": f"{type(exc).__name__}: {exc}"}
    if isinstance(built, dict):
        return built, ""
    reason = getattr(built, "reason", "") or gettext("no content")
    return None, gettext("The delivery task would not send this message: %(reason)s") % {
        "reason": reason
    }


def _recommendations(profile: CustomerProfile) -> list[dict[str, Any]]:
    try:
        from .. import recommendations
        from ..campaigns import content
        from ..conf import app_settings

        limit = int(app_settings.RECOMMENDATIONS_LIMIT)
        if limit <= 0:
            return []
        ids = recommendations.for_profile(profile, limit=limit * 2)
        return [item for item in content.items_for(ids) if item["available"]][:limit]
    except Exception:  # recommendations are a bonus, in a preview too
        logger.warning("recommendations for profile %s failed", profile.pk, exc_info=True)
        return []


def render_step(
    backend: BaseChannel,
    *,
    campaign: Campaign,
    step: Step,
    profile: CustomerProfile,
    extra: dict[str, Any],
    variant: Variant | None = None,
) -> dict[str, Any]:
    """The step's (or variant's) message for ``profile`` on ``backend`` as the engine sends
    it; unsaved."""
    return build_preview(
        backend,
        profile=profile,
        channel=backend.name,
        purpose=campaign.purpose,
        template=step.template,
        context=extra,
        inline=step_inline(step, backend, variant),
    )


def describe_decision(decision: engine.Decision) -> dict[str, Any]:
    """The decision in words for the preview page: a headline, its reasons, the skipped steps."""
    step = decision.step
    channel = decision.channel
    if decision.action == "send":
        headline = gettext("Sends now: step %(position)s on %(channel)s to %(address)s.") % {
            "position": step.position if step else "?",
            "channel": channel,
            "address": decision.address or EMPTY,
        }
    elif decision.action == "defer":
        where = (
            gettext("step %(position)s on %(channel)s")
            % {"position": step.position, "channel": channel}
            if step and channel
            else gettext("step %(position)s") % {"position": step.position}
            if step
            else gettext("the next step")
        )
        headline = gettext("Nothing now: %(what)s waits until %(at)s.") % {
            "what": where,
            "at": _when(decision.at),
        }
    elif decision.action == "exit":
        label = (
            ExitReason(decision.exit_reason).label
            if decision.exit_reason in ExitReason.values
            else decision.exit_reason
        )
        headline = gettext("Nothing is sent: the enrollment would end (%(reason)s).") % {
            "reason": label or EMPTY
        }
    else:
        headline = gettext("Nothing is sent: every step is done.")
    return {
        "action": decision.action,
        "headline": headline,
        "channel": channel,
        "address": decision.address,
        "step": step,
        "at": decision.at,
        "reasons": list(decision.reasons),
        "skipped": [
            {"position": skipped.position, "channel": name, "why": why}
            for skipped, name, why in decision.skipped
        ],
    }


def build_campaign_preview(
    campaign: Campaign, form: CampaignPreviewForm, *, now: datetime
) -> dict[str, Any]:
    """The engine's decision for the chosen person now, and the chosen step's message."""
    profile: CustomerProfile = form.cleaned_data["profile"]
    decision = _explain(campaign, profile, now=now)
    result: dict[str, Any] = {
        "profile": profile,
        "profile_url": _admin_url(CustomerProfile, "change", profile.pk),
        "decision": describe_decision(decision) if decision is not None else None,
        "explain_error": ""
        if decision is not None
        else gettext("The engine could not decide for this person (see the server log)."),
        "notes": [],
        "rendered": None,
    }
    step = form.cleaned_data.get("step") or _step_in_question(decision) or form.first_step
    if step is None:
        result["notes"].append(gettext("This campaign has no steps yet."))
        return result
    variant, group_notes = variant_for(campaign, step, profile, form.cleaned_data.get("variant"))
    result["notes"].extend(group_notes)
    result["variant"] = variant
    channel = (
        form.cleaned_data.get("channel")
        or _decided_channel(decision, step)
        or _fixed_channel(step, variant)
    )
    result["step"] = step
    result["channel"] = channel
    if not channel:
        result["notes"].append(
            gettext(
                "Step %(position)s sends on the best channel and none can reach this person "
                "now: choose a channel to see its message."
            )
            % {"position": step.position}
        )
        return result
    backend = form.channels.get(channel)
    if backend is None:
        result["notes"].append(
            gettext("The channel %(name)r is not configured or cannot be loaded.")
            % {"name": channel}
        )
        return result
    result["channel_label"] = backend.label or channel
    extra, notes = step_context(campaign, step, profile, backend, variant)
    result["notes"].extend(notes)
    result["rendered"] = render_step(
        backend, campaign=campaign, step=step, profile=profile, extra=extra, variant=variant
    )
    return result


def _fixed_channel(step: Step, variant: Variant | None) -> str:
    """The variant's channel, else the step's; "" when it is the best channel per person."""
    channel = (variant.channel if variant is not None else "") or step.channel
    return "" if channel == BEST_CHANNEL else channel


# --- enrollments --------------------------------------------------------------------------------


class EnrollmentLogInline(admin.TabularInline):
    """The enrollment's history, oldest first: read-only."""

    model = EnrollmentLog
    fields = ("at", "action", "step_display", "channel", "message_link", "detail")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("at", "id")
    verbose_name_plural = _("history")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("step", "message")

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description=_("step"))
    def step_display(self, obj: EnrollmentLog) -> str:
        return str(obj.step.position) if obj.step_id and obj.step else EMPTY

    @admin.display(description=_("message"))
    def message_link(self, obj: EnrollmentLog) -> SafeString:
        if obj.message_id is None:
            return format_html("{}", EMPTY)
        url = _admin_url(Message, "change", obj.message_id, site_name=self.admin_site.name)
        badge = status_badge(obj.message.status) if obj.message else ""
        return format_html("{} {}", _link(url, f"#{obj.message_id}"), badge)


@admin.register(Enrollment)
class EnrollmentAdmin(admin.ModelAdmin):
    """Who is where in which campaign, and why they left: the engine's records, read-only."""

    list_display = (
        "enrolled_at",
        "campaign",
        "profile_link",
        "subject_key",
        "state_display",
        "exit_reason",
        "step_display",
        "next_due_at",
    )
    list_display_links = ("enrolled_at",)
    list_filter = ("campaign", "state", "exit_reason", ProfileFilter)
    list_select_related = ("campaign", "profile")
    search_fields = ("subject_key",)
    search_help_text = _("Profile id, email or phone (exact), or the subject (start of it).")
    ordering = ("-enrolled_at", "-id")
    show_full_result_count = False  # a large table: one COUNT per page is enough
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 100
    actions = ["end_now"]
    inlines = [EnrollmentLogInline]
    readonly_fields = (
        "campaign_link",
        "profile_link",
        "subject_key",
        "state_display",
        "exit_reason",
        "step_display",
        "next_due_at",
        "enrolled_at",
        "last_activity_at",
        "last_message_at",
        "ended_at",
        "context_display",
        "messages_display",
        "claimed_by",
        "claim_expires_at",
    )
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "campaign_link",
                    "profile_link",
                    "subject_key",
                    ("state_display", "exit_reason"),
                    "step_display",
                    "next_due_at",
                )
            },
        ),
        (
            _("Times"),
            {"fields": (("enrolled_at", "ended_at"), ("last_activity_at", "last_message_at"))},
        ),
        (_("Messages"), {"fields": ("messages_display",)}),
        (_("Trigger data"), {"fields": ("context_display",)}),
        (
            _("Engine"),
            {"fields": (("claimed_by", "claim_expires_at"),), "classes": ("collapse",)},
        ),
    )

    class Media:
        css = {"all": [MESSAGES_CSS, CSS]}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Enrollment]:
        steps = Step.objects.filter(campaign=OuterRef("campaign_id"))
        return super().get_queryset(request).annotate(step_count=_count(steps))

    # --- permissions: enrollments are the engine's records ----------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_end_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.change_{self.opts.model_name}")

    # --- search -----------------------------------------------------------------------------------

    def get_search_results(self, request, queryset, search_term):
        from ..profiles.models import Identity

        term = search_term.strip()
        if not term:
            return queryset, False
        condition = Q(subject_key__startswith=term)
        if term.isascii() and term.isdigit():
            condition |= Q(profile_id=int(term))
        values = {term, term.lower()}
        condition |= Q(
            profile_id__in=Identity.objects.filter(value__in=values).values("profile_id")
        )
        return queryset.filter(condition), False

    # --- columns ----------------------------------------------------------------------------------

    @admin.display(description=_("profile"), ordering="profile")
    def profile_link(self, obj: Enrollment) -> SafeString:
        url = _admin_url(CustomerProfile, "change", obj.profile_id, site_name=self.admin_site.name)
        return _link(url, obj.profile)

    @admin.display(description=_("campaign"))
    def campaign_link(self, obj: Enrollment) -> SafeString:
        url = _admin_url(Campaign, "change", obj.campaign_id, site_name=self.admin_site.name)
        return _link(url, obj.campaign)

    @admin.display(description=_("state"), ordering="state")
    def state_display(self, obj: Enrollment) -> SafeString:
        return _badge(obj.state, obj.get_state_display())

    @admin.display(description=_("last step done"), ordering="step_position")
    def step_display(self, obj: Enrollment) -> str:
        total = getattr(obj, "step_count", None)
        if total is None:
            return str(obj.step_position)
        return gettext("%(done)s of %(total)s") % {"done": obj.step_position, "total": total}

    @admin.display(description=_("trigger data"))
    def context_display(self, obj: Enrollment) -> SafeString:
        return _pretty_json(obj.context)

    @admin.display(description=_("messages"))
    def messages_display(self, obj: Enrollment) -> SafeString:
        rows = list(
            Message.objects.filter(enrollment=obj)
            .select_related("step")
            .order_by("created_at", "pk")[:ENROLLMENT_MESSAGES_SHOWN]
        )
        if not rows:
            return format_html("{}", gettext("None yet."))
        site = self.admin_site.name
        body = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    _link(_admin_url(Message, "change", m.pk, site_name=site), f"#{m.pk}"),
                    _when(m.created_at),
                    m.step.position if m.step_id and m.step else EMPTY,
                    m.channel,
                    status_badge(m.status),
                    m.subject or (f"[{m.template}]" if m.template else EMPTY),
                )
                for m in rows
            ),
        )
        return format_html(
            '<table class="oc-enrollment-messages"><thead><tr><th>{}</th><th>{}</th><th>{}</th>'
            "<th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>{}</tbody></table>",
            gettext("message"),
            gettext("created"),
            gettext("step"),
            gettext("channel"),
            gettext("status"),
            gettext("subject / template"),
            body,
        )

    # --- ending -----------------------------------------------------------------------------------

    @admin.action(description=_("End the selected enrollments now"), permissions=["end"])
    def end_now(self, request: HttpRequest, queryset: QuerySet[Enrollment]) -> None:
        ended = end_enrollments(
            queryset.values_list("pk", flat=True),
            by=request.user.get_username(),
            now=timezone.now(),
        )
        self.message_user(
            request,
            ngettext("%(count)d enrollment ended.", "%(count)d enrollments ended.", ended)
            % {"count": ended},
            messages.SUCCESS if ended else messages.WARNING,
        )

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "<path:object_id>/end/",
                self.admin_site.admin_view(self.end_view),
                name="{}_{}_end".format(*info),
            ),
            *super().get_urls(),
        ]

    def end_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST: end one enrollment now, back to its page."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_end_permission(request):
            raise PermissionDenied
        enrollment = (
            Enrollment.objects.filter(pk=int(object_id)).first()
            if object_id.isascii() and object_id.isdigit()
            else None
        )
        if enrollment is None:
            raise Http404(gettext("No such enrollment."))
        ended = end_enrollments([enrollment.pk], by=request.user.get_username(), now=timezone.now())
        if ended:
            self.message_user(request, gettext("The enrollment ended."), messages.SUCCESS)
        else:
            self.message_user(
                request,
                gettext("Not ended: it is not active, or the engine is working on it right now."),
                messages.WARNING,
            )
        return HttpResponseRedirect(
            _admin_url(Enrollment, "change", enrollment.pk, site_name=self.admin_site.name) or "/"
        )

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "can_end": self.has_end_permission(request),
        }
        return super().change_view(request, object_id, form_url, extra_context)


def end_enrollments(ids: Iterable[int], *, by: str, now: datetime) -> int:
    """Exit the active enrollments among ``ids`` that the engine is not working on; count.

    Their queued messages not yet rendered are suppressed by the delivery task (the
    enrollment has ended); the history row says who ended it.
    """
    with transaction.atomic():
        chosen = list(
            Enrollment.objects.select_for_update()
            .filter(pk__in=list(ids), state=EnrollmentState.ACTIVE)
            .filter(Q(claim_expires_at__isnull=True) | Q(claim_expires_at__lt=now))
            .values_list("pk", flat=True)
        )
        if not chosen:
            return 0
        Enrollment.objects.filter(pk__in=chosen).update(
            state=EnrollmentState.EXITED,
            exit_reason=STAFF_EXIT_REASON,
            ended_at=now,
            next_due_at=None,
            claimed_by="",
            claim_expires_at=None,
        )
        EnrollmentLog.objects.bulk_create(
            EnrollmentLog(
                enrollment_id=pk,
                at=now,
                action=EnrollmentAction.EXITED,
                detail=(gettext("ended in the admin by %(user)s") % {"user": by})[:500],
            )
            for pk in chosen
        )
    return len(chosen)
