"""Admin of segments: a rule builder instead of raw JSON, a live count and sample, snapshots.

The rules field is a plain JSON textarea that ``segment_builder.js`` hides and edits as a tree
of groups and conditions (progressive enhancement: without JavaScript the JSON is edited by
hand). Whatever is posted goes through the engine's ``validate_rules``; its errors name the
place in the tree and are shown on the form, never as a 500.

Two JSON endpoints under the segment admin serve the builder, both for staff who may view
segments: ``preview/`` (POST, CSRF-protected) counts the rules being edited and returns a
sample of members, ``lookup/`` (GET) finds products, categories and segments by name.

The list shows each segment's live size: one COUNT query per row. That is fine for the tens of
segments a shop keeps (each count is one indexed query); a shop with hundreds should hide the
column (``list_display``) or page the list shorter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.formats import number_format
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.text import Truncator
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_GET, require_POST
from oscar.core.loading import get_model

from ..profiles.models import CustomerProfile, Identity, IdentityKind
from ..segments import selectors
from ..segments.conditions import condition_catalog
from ..segments.models import Segment, SegmentSnapshot
from ..segments.ready_made import ReadyMadeResult, create_ready_made_segments
from ..segments.rules import describe_rules, validate_rules
from ..segments.snapshots import snapshot_segment
from .display import EMPTY
from .display import admin_url as _admin_url
from .display import when as _when

Product = get_model("catalogue", "Product")
Category = get_model("catalogue", "Category")

#: Members shown beside the builder while the rules are edited.
PREVIEW_SAMPLE_SIZE = 10
#: Results of one lookup (product, category or segment search) in the builder.
LOOKUP_LIMIT = 20
#: Snapshots listed on a segment's page; the rest are in the snapshot list.
SNAPSHOTS_SHOWN = 10
#: Members listed on a snapshot's page; the rest are counted.
SNAPSHOT_MEMBERS_SHOWN = 200
#: Parameter types whose values are ids of objects the builder shows by name.
OBJECT_PARAM_TYPES = ("product", "category", "segment")
#: Actions that work on the whole table, with or without a selection.
ACTIONS_WITHOUT_SELECTION = ("create_ready_made_segments",)

_PATH_RE = re.compile(
    r"^(?P<path>[A-Za-z_][\w]*(?:\[\d+\])?(?:\.[A-Za-z_][\w]*(?:\[\d+\])?)*)\s*:\s*"
)
_STEP_RE = re.compile(r"([A-Za-z_]\w*)(?:\[(\d+)\])?")


# --- the catalogue of conditions and the rules tree ---------------------------------------------


def _catalog_by_key(catalog: list[dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    return {entry["key"]: entry for entry in (catalog or condition_catalog())}


def _iter_conditions(node: Any) -> Iterator[dict[str, Any]]:
    """Every condition dict of a (possibly invalid) rules tree."""
    if not isinstance(node, dict):
        return
    children = node.get("children")
    if isinstance(children, list):
        for child in children:
            yield from _iter_conditions(child)
    elif "type" in node:
        yield node


def _object_ids(rules: Any, catalog: dict[str, dict[str, Any]]) -> dict[str, set[int]]:
    """Ids of the products, categories and segments the rules name, by parameter type."""
    found: dict[str, set[int]] = {kind: set() for kind in OBJECT_PARAM_TYPES}
    for condition in _iter_conditions(rules):
        entry = catalog.get(condition.get("type"))
        params = condition.get("params")
        if entry is None or not isinstance(params, dict):
            continue
        for spec in entry["params"]:
            if spec["type"] not in OBJECT_PARAM_TYPES:
                continue
            value = params.get(spec["name"])
            values = value if isinstance(value, list) else [value]
            for item in values:
                if isinstance(item, int) or (isinstance(item, str) and item.isdigit()):
                    found[spec["type"]].add(int(item))
    return found


def category_names(categories: Iterable[Any]) -> dict[int, str]:
    """Full names ("Kitchen > Fridges") of categories, in one query for all their ancestors."""
    categories = list(categories)
    steplen = Category.steplen
    prefixes = {
        category.path[:end]
        for category in categories
        for end in range(steplen, len(category.path), steplen)
    }
    names = {category.path: category.name for category in categories}
    if prefixes - names.keys():
        names.update(
            Category.objects.filter(path__in=prefixes - names.keys()).values_list("path", "name")
        )
    separator = getattr(Category, "_full_name_separator", " > ")
    return {
        category.pk: separator.join(
            names.get(category.path[:end], "?")
            for end in range(steplen, len(category.path) + 1, steplen)
        )
        for category in categories
    }


def _product_label(product: Any) -> str:
    title = product.title or (product.parent.title if product.parent_id else "") or f"#{product.pk}"
    return f"{title} ({product.upc})" if product.upc else title


def object_labels(rules: Any, catalog: dict[str, dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Names of the objects the rules name, so the builder shows names rather than ids."""
    ids = _object_ids(rules, catalog)
    labels: dict[str, dict[str, str]] = {kind: {} for kind in OBJECT_PARAM_TYPES}
    if ids["product"]:
        products = Product.objects.filter(pk__in=ids["product"]).select_related("parent")
        labels["product"] = {str(p.pk): _product_label(p) for p in products}
    if ids["category"]:
        found = Category.objects.filter(pk__in=ids["category"])
        labels["category"] = {str(pk): name for pk, name in category_names(found).items()}
    if ids["segment"]:
        segments = Segment.objects.filter(pk__in=ids["segment"]).values_list("pk", "name")
        labels["segment"] = {str(pk): name for pk, name in segments}
    return labels


# --- errors -------------------------------------------------------------------------------------


def _node_at(rules: Any, steps: list[tuple[str, int | None]]) -> Any:
    node = rules
    for name, index in steps:
        if not isinstance(node, dict):
            return None
        node = node.get(name)
        if index is not None:
            node = node[index] if isinstance(node, list) and index < len(node) else None
    return node


def describe_path(path: str, rules: Any, catalog: dict[str, dict[str, Any]]) -> str:
    """Words for a place in the rules: ``children[1].params.days`` -> condition 2 ... "Days"."""
    steps = [(m.group(1), int(m.group(2)) if m.group(2) else None) for m in _STEP_RE.finditer(path)]
    numbers: list[str] = []
    node_steps: list[tuple[str, int | None]] = []
    rest: list[str] = []
    for name, index in steps:
        if name == "children" and index is not None and not rest:
            numbers.append(str(index + 1))
            node_steps.append((name, index))
        else:
            rest.append(name)
    node = _node_at(rules, node_steps)
    if not numbers:
        place = gettext("the top group")
    elif isinstance(node, dict) and "children" in node:
        place = gettext("group %(number)s") % {"number": ".".join(numbers)}
    else:
        place = gettext("condition %(number)s") % {"number": ".".join(numbers)}
        entry = catalog.get(node.get("type")) if isinstance(node, dict) else None
        if entry is not None:
            place = f"{place} \u201c{entry['label']}\u201d"
            if len(rest) == 2 and rest[0] == "params":
                spec = next((s for s in entry["params"] if s["name"] == rest[1]), None)
                if spec is not None:
                    return f"{place}, \u201c{spec['label']}\u201d"
    if rest:
        return f"{place}, {'.'.join(rest)}"
    return place


def rule_errors(error: ValidationError, rules: Any = None) -> list[dict[str, str]]:
    """The engine's validation errors as ``{"path", "message", "text"}``, text in words."""
    catalog = _catalog_by_key()
    entries = []
    if hasattr(error, "error_dict"):
        raw = [
            f"{key}: {message}" if key not in ("__all__", "rules") else message
            for key, messages_ in error.message_dict.items()
            for message in messages_
        ]
    else:
        raw = list(error.messages)
    for message in raw:
        match = _PATH_RE.match(message)
        where = match.group("path") if match else ""
        text = message[match.end() :] if match else message
        if where == "rules":  # the engine's name for the tree itself
            entries.append({"path": "", "message": text, "text": f"{gettext('Rules')}: {text}"})
            continue
        if where:
            described = describe_path(where, rules, catalog)
            full = gettext("%(place)s (%(path)s): %(message)s") % {
                "place": described[:1].upper() + described[1:],
                "path": where,
                "message": text,
            }
        else:
            full = text
        entries.append({"path": where, "message": text, "text": full})
    return entries


def parse_rules(raw: Any) -> Any:
    """Rules from posted text (or an already decoded object); malformed JSON is a form error."""
    if not isinstance(raw, str):
        return raw
    if not raw.strip():
        return {"op": "all", "negate": False, "children": []}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            _("Rules: not valid JSON (line %(line)s, column %(column)s: %(problem)s)."),
            code="invalid_json",
            params={"line": exc.lineno, "column": exc.colno, "problem": exc.msg},
        ) from exc


def clean_rules(raw: Any, *, segment: Segment | None = None) -> dict[str, Any]:
    """Validated rules, or a ValidationError whose messages name the failing place in words."""
    data = parse_rules(raw)
    try:
        cleaned = validate_rules(data, segment_id=segment.pk if segment else None)
    except ValidationError as exc:
        raise ValidationError([entry["text"] for entry in rule_errors(exc, data)]) from exc
    return cleaned


# --- the form -----------------------------------------------------------------------------------


def builder_strings() -> dict[str, str]:
    """The builder's words, translated here so the page needs no JavaScript catalogue."""
    return {
        "match": gettext("Match"),
        "all": gettext("all of"),
        "any": gettext("any of"),
        "and": gettext("AND"),
        "or": gettext("OR"),
        "or_word": gettext("or"),
        "not": gettext("NOT"),
        "following": gettext("the following:"),
        "root_lead": gettext("Customers who match"),
        "group_lead": gettext("Match"),
        "not_root_title": gettext("Invert: everyone who does NOT match the rules below"),
        "not_group_title": gettext("Invert this group: people who do NOT match it"),
        "not_condition_title": gettext("Invert this condition: people for whom it is NOT true"),
        "empty_root": gettext("No conditions yet: this segment holds every customer."),
        "empty_group": gettext("Empty group: it matches everyone."),
        "add_condition": gettext("Add condition"),
        "add_group": gettext("Add group"),
        "remove": gettext("Remove"),
        "remove_condition": gettext("Remove this condition"),
        "remove_group": gettext("Remove this group"),
        "condition": gettext("Condition"),
        "choose": gettext("Choose a condition\u2026"),
        "other": gettext("Other"),
        "unknown_type": gettext("Unknown condition \u201c%(key)s\u201d"),
        "any_value": gettext("(any)"),
        "search": gettext("Search %(what)s\u2026"),
        "no_results": gettext("Nothing found"),
        "yes": gettext("yes"),
        "no": gettext("no"),
        "summary": gettext("In words"),
        "everyone": gettext("Every customer"),
        "everyone_lower": gettext("everyone"),
        "preview": gettext("Matching customers now"),
        "sample": gettext("Some of them"),
        "counting": gettext("Counting\u2026"),
        "customer": gettext("customer"),
        "customers": gettext("customers"),
        "and_more": gettext("\u2026 and %(count)s more"),
        "fix_errors": gettext("Fix the rules to see who matches."),
        "preview_failed": gettext("The count could not be fetched; saving still works."),
        "edit_json": gettext("Edit as JSON"),
        "hide_json": gettext("Back to the builder"),
        "raw_note": gettext(
            "Power users: edit the rules as JSON. The builder follows as soon as the text is "
            "a valid rules tree."
        ),
        "raw_invalid": gettext("The JSON is not a rules tree the builder can show."),
    }


class RuleBuilderWidget(forms.Textarea):
    """The rules JSON textarea, with what segment_builder.js needs to draw the builder."""

    template_name = "admin/omnichannel/segment/rule_builder.html"

    class Media:
        css = {"all": ("omnichannel/admin/segment_builder.css",)}
        js = ("omnichannel/admin/segment_builder.js",)

    def __init__(
        self,
        *,
        preview_url: str = "",
        lookup_url: str = "",
        segment_id: Any = None,
        attrs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(attrs={"rows": 16, "cols": 80, "class": "oc-rules-raw", **(attrs or {})})
        self.preview_url = preview_url
        self.lookup_url = lookup_url
        self.segment_id = segment_id

    def get_context(self, name: str, value: Any, attrs: dict[str, Any] | None) -> dict[str, Any]:
        context = super().get_context(name, value, attrs)
        catalog = condition_catalog()
        try:
            rules = json.loads(value) if isinstance(value, str) and value else value
        except json.JSONDecodeError:
            rules = None
        base = context["widget"]["attrs"].get("id") or f"id_{name}"
        context.update(
            {
                "catalog": catalog,
                "labels": object_labels(rules, _catalog_by_key(catalog)),
                "strings": builder_strings(),
                "preview_url": self.preview_url,
                "lookup_url": self.lookup_url,
                "segment_id": self.segment_id or "",
                "catalog_id": f"{base}_catalog",
                "labels_id": f"{base}_labels",
                "strings_id": f"{base}_strings",
            }
        )
        return context


class RulesField(forms.JSONField):
    """JSON field whose text is indented for people and whose syntax errors say where."""

    default_error_messages = {
        "invalid": _("Rules: not valid JSON. Check the brackets, quotes and commas."),
    }

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value
        return json.dumps(value, ensure_ascii=False, indent=2, cls=self.encoder)

    def to_python(self, value: Any) -> Any:
        if self.disabled or value in self.empty_values:
            return super().to_python(value)
        if isinstance(value, str):
            try:
                json.loads(value, cls=self.decoder)
            except json.JSONDecodeError as exc:
                raise ValidationError(
                    _("Rules: not valid JSON (line %(line)s, column %(column)s: %(problem)s)."),
                    code="invalid",
                    params={"line": exc.lineno, "column": exc.colno, "problem": exc.msg},
                ) from exc
        return super().to_python(value)


class SegmentAdminForm(forms.ModelForm):
    class Meta:
        model = Segment
        fields = ("name", "description", "slug", "rules")

    def clean_rules(self) -> dict[str, Any]:
        return clean_rules(self.cleaned_data.get("rules"), segment=self.instance)


# --- members and profiles -----------------------------------------------------------------------


def _emails(profile_ids: list[int]) -> dict[int, str]:
    """The first email identity of each profile, in one query."""
    emails: dict[int, str] = {}
    rows = (
        Identity.objects.filter(profile_id__in=profile_ids, kind=IdentityKind.EMAIL)
        .order_by("created_at", "pk")
        .values_list("profile_id", "value")
    )
    for profile_id, value in rows:
        emails.setdefault(profile_id, value)
    return emails


def member_rows(profiles: list[CustomerProfile], *, site_name: str = "admin") -> list[dict]:
    """Profiles as ``{"id", "name", "email", "url"}`` for the preview (one query for emails)."""
    emails = _emails([profile.pk for profile in profiles])
    return [
        {
            "id": profile.pk,
            "name": str(profile),
            "email": emails.get(profile.pk, ""),
            "url": _admin_url(profile, "change", profile.pk, site_name=site_name),
        }
        for profile in profiles
    ]


def segments_of_profile(profile: CustomerProfile, *, now: datetime | None = None) -> list[Segment]:
    """The segments this profile is in now, by name (two queries whatever their number).

    A segment whose rules no longer compile (e.g. they name a deleted segment) is left out.
    """
    return selectors.segments_of_profile(profile, now=now or timezone.now())


def profile_segments_html(
    profile: CustomerProfile, *, now: datetime | None = None, site_name: str = "admin"
) -> SafeString:
    """The profile's segments as admin links, for a read-only field of the profile admin."""
    segments = segments_of_profile(profile, now=now)
    if not segments:
        return format_html("{}", gettext("In no segment."))
    return format_html(
        '<ul class="oc-profile-segments">{}</ul>',
        format_html_join(
            "",
            '<li><a href="{}">{}</a></li>',
            ((_admin_url(s, "change", s.pk, site_name=site_name) or "", s.name) for s in segments),
        ),
    )


# --- admin --------------------------------------------------------------------------------------


@admin.register(Segment)
class SegmentAdmin(admin.ModelAdmin):
    form = SegmentAdminForm
    list_display = ("name", "short_description", "size", "is_ready_made", "updated_at")
    search_fields = ("name", "slug", "description")
    ordering = ("name",)
    list_per_page = 50
    actions = ["snapshot_members", "create_ready_made_segments"]
    readonly_fields = (
        "ready_made_display",
        "created_at",
        "updated_at",
        "snapshots_display",
        "rules_in_words",
    )
    fieldsets = (
        (None, {"fields": ("name", "description")}),
        (
            _("Who is in this segment"),
            {
                "fields": ("rules",),
                "description": _(
                    "Pick conditions and combine them. The count on the right follows as you "
                    "edit; it is what the segment holds at this moment."
                ),
            },
        ),
        (_("Advanced"), {"fields": ("slug",), "classes": ("collapse",)}),
        (
            _("History"),
            {"fields": ("ready_made_display", "created_at", "updated_at", "snapshots_display")},
        ),
    )

    def get_fieldsets(self, request: HttpRequest, obj: Segment | None = None):
        if obj is None:
            return self.fieldsets[:3]  # nothing to show in History yet
        if not self.has_change_permission(request, obj):
            # View-only staff get the rules in words and the size, not a builder they cannot
            # save (Django would show the raw JSON).
            rules = (self.fieldsets[1][0], {"fields": ("rules_in_words",)})
            return (self.fieldsets[0], rules, *self.fieldsets[2:])
        return self.fieldsets

    @admin.display(description=_("rules"))
    def rules_in_words(self, obj: Segment) -> SafeString:
        try:
            size = number_format(obj.count(now=timezone.now()), force_grouping=True)
        except ValidationError:
            size = gettext("unknown (the rules need fixing)")
        return format_html("{}<br>{} {}", describe_rules(obj.rules), gettext("Members now:"), size)

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name == "rules":
            match = getattr(request, "resolver_match", None)
            object_id = match.kwargs.get("object_id") if match else None
            return RulesField(
                label=db_field.verbose_name,
                help_text=_(
                    "Without JavaScript, edit the rules as JSON: "
                    '{"op": "all" or "any", "negate": false, "children": [conditions or '
                    'groups]}, each condition {"type": ..., "negate": false, "params": {...}}.'
                ),
                required=False,
                initial=db_field.get_default,
                widget=RuleBuilderWidget(
                    preview_url=self._url("preview"),
                    lookup_url=self._url("lookup"),
                    segment_id=object_id,
                ),
            )
        if db_field.name == "description":
            kwargs["widget"] = forms.Textarea(attrs={"rows": 3, "cols": 80})
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def _url(self, name: str) -> str:
        opts = self.model._meta
        return reverse(
            f"admin:{opts.app_label}_{opts.model_name}_{name}", current_app=self.admin_site.name
        )

    def get_urls(self):
        opts = self.model._meta
        prefix = f"{opts.app_label}_{opts.model_name}"
        wrap = self.admin_site.admin_view
        return [
            path("preview/", wrap(self.preview_view), name=f"{prefix}_preview"),
            path("lookup/", wrap(self.lookup_view), name=f"{prefix}_lookup"),
            *super().get_urls(),
        ]

    # --- list -----------------------------------------------------------------------------------

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None):
        action = request.POST.get("action") if request.method == "POST" else None
        if action in ACTIONS_WITHOUT_SELECTION and not request.POST.getlist(ACTION_CHECKBOX_NAME):
            # Django runs actions on a selection only, and the list of a new shop is empty: these
            # work on the whole table, so they run without one (the list's button posts here).
            func = (self.get_actions(request).get(action) or (None,))[0]
            if func is None:
                raise PermissionDenied
            func(self, request, self.get_queryset(request).none())
            return HttpResponseRedirect(request.get_full_path())
        extra_context = {
            **(extra_context or {}),
            "can_create_ready_made": self.has_add_permission(request),
        }
        return super().changelist_view(request, extra_context)

    @admin.display(description=_("description"))
    def short_description(self, obj: Segment) -> str:
        return Truncator(obj.description).chars(80) or EMPTY

    @admin.display(description=_("members now"))
    def size(self, obj: Segment) -> str:
        # One COUNT per row: fine for the tens of segments of a shop (see the module docstring).
        try:
            return number_format(obj.count(now=timezone.now()), force_grouping=True)
        except ValidationError:
            return gettext("rules need fixing")

    @admin.display(description=_("ready-made"), boolean=True, ordering="ready_made")
    def is_ready_made(self, obj: Segment) -> bool:
        return bool(obj.ready_made)

    @admin.display(description=_("ready-made"))
    def ready_made_display(self, obj: Segment) -> str:
        return obj.ready_made or gettext("No (built by staff)")

    @admin.display(description=_("snapshots"))
    def snapshots_display(self, obj: Segment) -> SafeString:
        """The latest snapshots (frozen member lists), newest first, read-only."""
        snapshots = list(obj.snapshots.order_by("-created_at", "-pk")[:SNAPSHOTS_SHOWN])
        if not snapshots:
            return format_html(
                "{}",
                gettext('None yet: campaigns take them, as does "Snapshot members now".'),
            )
        site = self.admin_site.name
        rows = format_html_join(
            "",
            '<li><a href="{}">{}</a>: {} {}</li>',
            (
                (
                    _admin_url(snapshot, "change", snapshot.pk, site_name=site) or "",
                    _when(snapshot.created_at),
                    ngettext("%(n)s member", "%(n)s members", snapshot.size)
                    % {"n": number_format(snapshot.size, force_grouping=True)},
                    f"({snapshot.note})" if snapshot.note else "",
                )
                for snapshot in snapshots
            ),
        )
        every = _admin_url(SegmentSnapshot, "changelist", site_name=site)
        return format_html(
            '<ul class="oc-snapshots">{}</ul><a href="{}?segment__id__exact={}">{}</a>',
            rows,
            every or "",
            obj.pk,
            gettext("All snapshots of this segment"),
        )

    # --- actions --------------------------------------------------------------------------------

    @admin.action(description=_("Snapshot members now"), permissions=["change"])
    def snapshot_members(self, request: HttpRequest, queryset: QuerySet[Segment]) -> None:
        now = timezone.now()
        note = gettext("Taken in the admin by %(user)s") % {"user": request.user.get_username()}
        for segment in queryset:
            try:
                snapshot = snapshot_segment(segment, now=now, note=note)
            except ValidationError as exc:
                self.message_user(
                    request,
                    gettext("%(segment)s: no snapshot, the rules need fixing: %(error)s")
                    % {"segment": segment.name, "error": "; ".join(exc.messages)},
                    messages.ERROR,
                )
                continue
            self.message_user(
                request,
                ngettext(
                    "%(segment)s: snapshot of %(count)s member taken.",
                    "%(segment)s: snapshot of %(count)s members taken.",
                    snapshot.size,
                )
                % {"segment": segment.name, "count": number_format(snapshot.size)},
                messages.SUCCESS,
            )

    @admin.action(description=_("Create the ready-made segments"), permissions=["add"])
    def create_ready_made_segments(self, request: HttpRequest, queryset: QuerySet[Segment]) -> None:
        results = create_ready_made_segments()
        for level, text in ready_made_messages(results):
            self.message_user(request, text, level)

    # --- JSON endpoints -------------------------------------------------------------------------

    def preview_view(self, request: HttpRequest) -> HttpResponse:
        """Count and sample of the posted rules: ``{"count", "sample", "summary", "errors"}``."""
        return require_POST(self._preview)(request)

    def _preview(self, request: HttpRequest) -> JsonResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            body = _request_data(request)
        except ValueError as exc:
            return _preview_errors([_error_entry(str(exc))], status=400)
        segment = _segment_or_none(body.get("segment"))
        try:
            data = parse_rules(body.get("rules", ""))
        except ValidationError as exc:
            return _preview_errors([_error_entry(m) for m in exc.messages])
        try:
            preview = selectors.preview_rules(
                data,
                now=timezone.now(),
                sample_size=PREVIEW_SAMPLE_SIZE,
                segment_id=segment.pk if segment else None,
            )
        except ValidationError as exc:
            return _preview_errors(rule_errors(exc, data))
        return JsonResponse(
            {
                "count": preview.count,
                "sample": member_rows(preview.sample, site_name=self.admin_site.name),
                "summary": describe_rules(preview.rules),
                "errors": [],
            }
        )

    def lookup_view(self, request: HttpRequest) -> HttpResponse:
        """``?kind=product|category|segment&q=...``: ``{"results": [{"id", "text"}]}``."""
        return require_GET(self._lookup)(request)

    def _lookup(self, request: HttpRequest) -> JsonResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        kind = request.GET.get("kind", "")
        if kind not in OBJECT_PARAM_TYPES:
            message = gettext("Unknown kind %(kind)s.") % {"kind": repr(kind)[:40]}
            return JsonResponse({"results": [], "error": message}, status=400)
        term = request.GET.get("q", "").strip()[:100]
        return JsonResponse(
            {"results": lookup_objects(kind, term, exclude=request.GET.get("exclude"))}
        )


def ready_made_messages(results: list[ReadyMadeResult]) -> list[tuple[int, str]]:
    """What the action tells staff: created, brought up to date, skipped (and why)."""
    created = [r.segment.name for r in results if r.created and r.segment]
    updated = [r.segment.name for r in results if not r.created and r.segment]
    skipped = [r for r in results if r.segment is None]
    lines: list[tuple[int, str]] = []
    if created:
        lines.append(
            (
                messages.SUCCESS,
                ngettext(
                    "Created %(count)s ready-made segment: %(names)s.",
                    "Created %(count)s ready-made segments: %(names)s.",
                    len(created),
                )
                % {"count": len(created), "names": ", ".join(created)},
            )
        )
    if updated:
        lines.append(
            (
                messages.INFO,
                gettext("Already there, rules brought up to date: %(names)s.")
                % {"names": ", ".join(updated)},
            )
        )
    for result in skipped:
        lines.append(
            (
                messages.WARNING,
                gettext("Not created: %(key)s (%(reason)s).")
                % {"key": result.key, "reason": result.skipped_reason},
            )
        )
    return lines


def _preview_errors(errors: list[dict[str, str]], *, status: int = 200) -> JsonResponse:
    return JsonResponse(
        {"count": None, "sample": [], "summary": "", "errors": errors}, status=status
    )


def _error_entry(message: str) -> dict[str, str]:
    return {"path": "", "message": message, "text": message}


def _request_data(request: HttpRequest) -> dict[str, Any]:
    """``{"rules": ..., "segment": ...}`` from a JSON body (the builder) or form data."""
    if request.content_type == "application/json":
        try:
            data = json.loads(request.body or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(gettext("The request body is not valid JSON.")) from exc
        if not isinstance(data, dict):
            raise ValueError(gettext("The request body must be a JSON object."))
        return data
    return {"rules": request.POST.get("rules", ""), "segment": request.POST.get("segment")}


def _segment_or_none(value: Any) -> Segment | None:
    if value in (None, "") or isinstance(value, bool):
        return None
    try:
        return Segment.objects.filter(pk=int(value)).first()
    except (TypeError, ValueError):
        return None


def lookup_objects(kind: str, term: str, *, exclude: Any = None) -> list[dict[str, Any]]:
    """Products, categories or segments whose name contains ``term``, for the builder."""
    if kind == "product":
        products = Product.objects.select_related("parent").order_by("title", "pk")
        if term:
            products = products.filter(Q(title__icontains=term) | Q(upc__iexact=term))
        return [{"id": p.pk, "text": _product_label(p)} for p in products[:LOOKUP_LIMIT]]
    if kind == "category":
        categories = Category.objects.order_by("path")
        if term:
            categories = categories.filter(name__icontains=term)
        found = list(categories[:LOOKUP_LIMIT])
        names = category_names(found)
        return [{"id": c.pk, "text": names[c.pk]} for c in found]
    segments = Segment.objects.order_by("name")
    if term:
        segments = segments.filter(name__icontains=term)
    if exclude is not None and str(exclude).isdigit():
        segments = segments.exclude(pk=int(exclude))  # a segment cannot contain itself
    rows = segments.values_list("pk", "name")[:LOOKUP_LIMIT]
    return [{"id": pk, "text": name} for pk, name in rows]


# --- snapshots ----------------------------------------------------------------------------------


@admin.register(SegmentSnapshot)
class SegmentSnapshotAdmin(admin.ModelAdmin):
    """Snapshots are taken by campaigns and by the segment action, never edited by hand."""

    list_display = ("segment", "created_at", "size", "note")
    list_select_related = ("segment",)
    list_filter = ("segment",)
    search_fields = ("segment__name", "note")
    date_hierarchy = "created_at"
    ordering = ("-created_at", "-pk")
    readonly_fields = ("segment", "created_at", "size", "note", "rules_display", "members")
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description=_("rules used"))
    def rules_display(self, obj: SegmentSnapshot) -> str:
        return describe_rules(obj.rules) if obj.rules else EMPTY

    @admin.display(description=_("members"))
    def members(self, obj: SegmentSnapshot) -> SafeString:
        profiles = list(obj.profiles().order_by("pk")[:SNAPSHOT_MEMBERS_SHOWN])
        rows = member_rows(profiles, site_name=self.admin_site.name)
        items = format_html_join(
            "",
            '<li><a href="{}">{}</a> {}</li>',
            ((row["url"] or "", row["name"], row["email"]) for row in rows),
        )
        more = obj.size - len(rows)
        tail = (
            format_html("<li>{}</li>", gettext("\u2026 and %(count)s more") % {"count": more})
            if more > 0
            else ""
        )
        return format_html("<ol>{}{}</ol>", items, tail)
