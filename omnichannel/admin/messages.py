"""Admin of messages, the demo outbox, suppressions and channel throttles; preview and test send.

Messages and their status history are records of what was sent: nothing here edits them, and
only superusers may delete one. Content written by templates (and so by whoever edits them) is
shown inside sandboxed iframes or escaped: an email's HTML runs no script and its CSS never
reaches the admin page. The "Preview and test send" page renders any template for a chosen
profile without storing anything, and sends a real message (``queue_message`` then
``deliver_message``) when asked to; a failing channel shows an error, never a 500.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template import engines
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import formats, timezone, translation
from django.utils.html import escape, format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from ..channels.base import BaseChannel, Reach
from ..channels.models import (
    ChannelThrottle,
    Message,
    MessageStatus,
    MessageStatusChange,
    OutboxEntry,
    Suppression,
    SuppressionReason,
)
from ..channels.registry import get_channel
from ..channels.sending import deliver_message, message_context, queue_message
from ..conf import app_settings
from ..exceptions import InvalidIdentity, NotReachable
from ..profiles.models import Channel, CustomerProfile, Purpose
from ..profiles.normalise import normalise_email, normalise_phone
from .display import EMPTY, ProfileAutocomplete, ProfileFilter
from .display import admin_url as _admin_url
from .display import link as _link
from .display import when as _when

logger = logging.getLogger("omnichannel.admin")


#: Badge colours by status: grey waiting, blue on its way, green engaged, red failed.
STATUS_COLOURS = {
    MessageStatus.QUEUED: "#6c757d",
    MessageStatus.SENDING: "#0b5ed7",
    MessageStatus.SENT: "#0b5ed7",
    MessageStatus.DELIVERED: "#198754",
    MessageStatus.OPENED: "#157347",
    MessageStatus.CLICKED: "#0f5132",
    MessageStatus.FAILED: "#b02a37",
    MessageStatus.BOUNCED: "#b02a37",
    MessageStatus.COMPLAINED: "#842029",
    MessageStatus.SUPPRESSED: "#a35200",
    MessageStatus.UNSUBSCRIBED: "#59359a",
}
_STATUS_LABELS = dict(MessageStatus.choices)

#: How a channel's content is shown, by the consent channel it belongs to.
KIND_BY_CONSENT_CHANNEL = {
    Channel.EMAIL: "email",
    Channel.SMS: "sms",
    Channel.PUSH: "push",
    Channel.WEBPUSH: "push",
    Channel.MESSENGER: "chat",
}

#: A template key is one file-name stem: no path separators or dots can sneak in.
TEMPLATE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")

CSS = "omnichannel/admin/messages.css"


# --- helpers ------------------------------------------------------------------------------------


def _parse_uuid(term: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(term)
    except ValueError:
        return None


def _pretty_json(value: Any) -> SafeString:
    if value in (None, {}, []):
        return format_html("{}", EMPTY)
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return format_html('<pre class="oc-json">{}</pre>', text)


def status_badge(status: str) -> SafeString:
    """The status as a coloured pill (text stays readable in light and dark themes)."""
    return format_html(
        '<span class="oc-status oc-status-{}" style="background:{}">{}</span>',
        status,
        STATUS_COLOURS.get(status, "#6c757d"),
        _STATUS_LABELS.get(status, status),
    )


def money(amount: Any, currency: str) -> str:
    if amount is None:
        return EMPTY
    return f"{formats.localize(amount)} {currency}".strip()


def configured_channels() -> tuple[dict[str, BaseChannel], dict[str, str]]:
    """Configured channels that can be built, and the error of each that cannot.

    A channel whose backend cannot be imported must not take the whole admin down with it.
    """
    built: dict[str, BaseChannel] = {}
    broken: dict[str, str] = {}
    names = app_settings.CHANNELS if isinstance(app_settings.CHANNELS, dict) else {}
    for name in names:
        try:
            built[name] = get_channel(name)
        except Exception as exc:  # noqa: BLE001  (shown to staff; ImportError, ConfigurationError)
            broken[name] = str(exc)
    return built, broken


def _channel(name: str) -> BaseChannel | None:
    try:
        return get_channel(name)
    except Exception:  # noqa: BLE001  (a channel removed from settings still has old messages)
        return None


def channel_kind(name: str) -> str:
    """email, sms, push, chat or text: how a message of channel ``name`` is displayed."""
    backend = _channel(name)
    if backend is not None:
        return KIND_BY_CONSENT_CHANNEL.get(backend.consent_channel, "text")
    for kind, guess in (("email", "email"), ("sms", "sms"), ("push", "push"), ("telegram", "chat")):
        if kind in name:
            return guess
    return "text"


def _lookup(mapping: Any, *names: str) -> Any:
    """The first of ``names`` in a dict, case-insensitive; None when absent."""
    if not isinstance(mapping, dict):
        return None
    lowered = {str(key).lower(): value for key, value in mapping.items()}
    for name in names:
        value = lowered.get(name.lower())
        if value not in (None, "", [], {}):
            return value
    return None


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(_as_text(v) for v in value)
    if isinstance(value, dict):
        return _as_text(_lookup(value, "email", "address", "name")) or json.dumps(value)
    return f"{value}"


def _web_url(value: Any) -> str:
    """``value`` if it is an http(s) URL (safe as an href or img src), else ''."""
    text = _as_text(value).strip()
    return text if text.lower().startswith(("http://", "https://", "/")) else ""


def _chat_buttons(payload: dict[str, Any], data: dict[str, Any]) -> list[dict[str, str]]:
    """Inline keyboard buttons of a Telegram payload, or the button in the message data."""
    buttons: list[dict[str, str]] = []
    request = _lookup(payload, "json") if isinstance(_lookup(payload, "json"), dict) else payload
    markup = _lookup(request, "reply_markup")
    if isinstance(markup, str):
        try:
            markup = json.loads(markup)
        except ValueError:
            markup = None
    rows = _lookup(markup, "inline_keyboard") if isinstance(markup, dict) else None
    for row in rows or []:
        for button in row if isinstance(row, list) else [row]:
            if isinstance(button, dict) and button.get("text"):
                buttons.append(
                    {"text": _as_text(button["text"]), "url": _web_url(button.get("url"))}
                )
    if not buttons:
        text = _lookup(data, "button_text", "button")
        if text:
            url = _lookup(data, "button_url", "url")
            buttons.append({"text": _as_text(text), "url": _web_url(url)})
    return buttons


#: The HTML Telegram formats (parse_mode HTML); everything else is shown as text.
TELEGRAM_TAGS = {
    "b": "b",
    "strong": "strong",
    "i": "i",
    "em": "em",
    "u": "u",
    "ins": "ins",
    "s": "s",
    "strike": "s",
    "del": "del",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
    "a": "a",
    "tg-spoiler": "span",
    "span": "span",
}


class _TelegramHTML(HTMLParser):
    """Rebuilds Telegram-formatted text from scratch: allowed tags without attributes (links
    keep an http(s) href), text escaped, every tag closed, so nothing reaches the admin page
    that could run or restyle it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        name = TELEGRAM_TAGS.get(tag)
        if name is None:
            return
        if name == "a":
            href = _web_url(dict(attrs).get("href"))
            self.out.append(
                format_html('<a href="{}" target="_blank" rel="noopener noreferrer">', href)
                if href
                else "<a>"
            )
        elif name == "span":
            self.out.append('<span class="oc-spoiler">')
        else:
            self.out.append(f"<{name}>")
        self.open.append(name)

    def handle_endtag(self, tag: str) -> None:
        name = TELEGRAM_TAGS.get(tag)
        if name is None or name not in self.open:
            return
        while self.open:
            last = self.open.pop()
            self.out.append(f"</{last}>")
            if last == name:
                break

    def handle_data(self, data: str) -> None:
        self.out.append(str(escape(data)))

    def result(self) -> SafeString:
        self.close()
        closing = "".join(f"</{name}>" for name in reversed(self.open))
        return SafeString("".join(self.out) + closing)


def telegram_html(text: str) -> SafeString:
    """Telegram's HTML formatting as safe admin HTML (see _TelegramHTML)."""
    parser = _TelegramHTML()
    parser.feed(text)
    return parser.result()


def content_context(
    *,
    channel: str,
    address: str,
    subject: str,
    body_text: str,
    body_html: str,
    data: dict[str, Any] | None = None,
    payload: dict[str, Any] | None = None,
    units: int | None = None,
) -> dict[str, Any]:
    """What ``admin/omnichannel/includes/rendered_content.html`` shows for one message.

    ``payload`` is what the provider would receive (outbox entries); it fills the email
    headers, the push image and the Telegram buttons when the message data lacks them.
    """
    data = data if isinstance(data, dict) else {}
    payload = payload if isinstance(payload, dict) else {}
    backend = _channel(channel)
    kind = channel_kind(channel)
    options = backend.options if backend is not None else {}
    context: dict[str, Any] = {
        "kind": kind,
        "channel": channel,
        "channel_label": (backend.label if backend is not None else "") or channel,
        "address": address,
        "subject": subject,
        "body_text": body_text,
        "body_html": body_html,
        "units": units,
    }
    headers = _lookup(payload, "headers", "extra_headers") or {}
    if kind == "email":
        context["headers"] = [
            (
                _("From"),
                _as_text(
                    _lookup(payload, "from_email", "from")
                    or _lookup(options, "FROM_EMAIL")
                    or _lookup(data, "from_email")
                ),
            ),
            (_("To"), _as_text(_lookup(payload, "to", "recipients")) or address),
            (_("Subject"), _as_text(_lookup(payload, "subject")) or subject),
        ]
        reply_to = _lookup(payload, "reply_to")
        if reply_to:
            context["headers"].append((_("Reply-To"), _as_text(reply_to)))
        for name in ("Reply-To", "List-Unsubscribe", "List-Unsubscribe-Post"):
            value = _lookup(headers, name)
            if name == "Reply-To" and reply_to:
                continue
            if value:
                context["headers"].append((name, _as_text(value)))
    elif kind == "push":
        notification = _lookup(payload, "notification") or {}
        context["image"] = _web_url(
            _lookup(data, "image", "image_url")
            or _lookup(payload, "image", "image_url")
            or _lookup(notification, "image")
        )
        context["click_url"] = _web_url(
            _lookup(data, "url", "click_url", "link")
            or _lookup(payload, "url", "click_url", "link")
        )
        context["target_url"] = _web_url(_lookup(data, "target_url"))
        context["title"] = subject or _as_text(_lookup(notification, "title"))
        context["devices"] = units
    elif kind == "sms":
        context["segments"] = _lookup(data, "segments") or _lookup(payload, "segments") or units
        context["encoding"] = _as_text(_lookup(data, "encoding") or _lookup(payload, "encoding"))
        context["sender"] = _as_text(_lookup(payload, "from", "sender") or _lookup(options, "FROM"))
        context["characters"] = len(body_text)
    elif kind == "chat":
        request = _lookup(payload, "json") if isinstance(_lookup(payload, "json"), dict) else {}
        text = body_text or _as_text(_lookup(request, "text") or _lookup(payload, "text"))
        parse_mode = _lookup(request, "parse_mode") or getattr(backend, "parse_mode", "")
        context["buttons"] = _chat_buttons(payload, data)
        context["chat_html"] = (
            telegram_html(text) if str(parse_mode).upper() == "HTML" else escape(text)
        )
    return context


def render_content(**kwargs: Any) -> SafeString:
    """The rendered-content include as HTML (see content_context)."""
    template = engines["django"].get_template("admin/omnichannel/includes/rendered_content.html")
    return SafeString(template.render(content_context(**kwargs)))


# --- template keys --------------------------------------------------------------------------


def _template_dirs() -> list[Path]:
    dirs: list[Path] = []
    for engine in engines.all():
        dirs.extend(Path(d) for d in getattr(engine, "template_dirs", ()))
    return dirs


def template_keys(backend: BaseChannel) -> list[str]:
    """Keys that have every required part of ``backend`` as a template file.

    ``omnichannel/<folder>/<key>_<part>`` in any template directory (project and apps).
    """
    parts = list(backend.template_parts)
    required = {part for part, needed in backend.template_parts.items() if needed}
    found: dict[str, set[str]] = {}
    for directory in _template_dirs():
        folder = directory / "omnichannel" / backend.template_folder
        if not folder.is_dir():
            continue
        for file in folder.iterdir():
            for part in parts:
                suffix = f"_{part}"
                if file.name.endswith(suffix) and len(file.name) > len(suffix):
                    found.setdefault(file.name[: -len(suffix)], set()).add(part)
    return sorted(
        key for key, have in found.items() if required <= have and TEMPLATE_KEY_RE.match(key)
    )


# --- list filters -------------------------------------------------------------------------------


class ConfiguredChannelFilter(admin.SimpleListFilter):
    """The configured channels (no COUNT or DISTINCT over a large table); any ?channel= works."""

    title = _("channel")
    parameter_name = "channel"

    def lookups(self, request, model_admin):
        names = list(app_settings.CHANNELS) if isinstance(app_settings.CHANNELS, dict) else []
        value = self.value()
        if value and value not in names:
            names.append(value)
        return [(name, name) for name in names]

    def queryset(self, request, queryset):
        value = self.value()
        return queryset.filter(channel=value) if value else queryset


# --- messages -------------------------------------------------------------------------------


class StatusHistoryInline(admin.TabularInline):
    """Every report about the message, oldest first: read-only."""

    model = MessageStatusChange
    fields = ("occurred_at", "status_display", "source", "detail_display", "recorded_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("occurred_at", "id")
    verbose_name_plural = _("status history")

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description=_("status"))
    def status_display(self, obj: MessageStatusChange) -> SafeString:
        return status_badge(obj.status)

    @admin.display(description=_("detail"))
    def detail_display(self, obj: MessageStatusChange) -> SafeString:
        if not obj.detail:
            return format_html("{}", EMPTY)
        return format_html(
            "<code>{}</code>", json.dumps(obj.detail, sort_keys=True, ensure_ascii=False)
        )


TIME_FIELDS = (
    "created_at",
    "queued_at",
    "sending_at",
    "sent_at",
    "delivered_at",
    "opened_at",
    "clicked_at",
    "failed_at",
    "bounced_at",
    "complained_at",
    "suppressed_at",
    "unsubscribed_at",
    "status_changed_at",
)


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    """The message log: every send, its content, cost and status history. Read-only."""

    # The status early: on a narrow screen the table scrolls, and the status matters most.
    list_display = (
        "created_at",
        "channel",
        "status_display",
        "purpose",
        "address",
        "subject_or_template",
        "cost_display",
        "provider_message_id",
    )
    list_display_links = ("created_at", "subject_or_template")
    list_filter = (
        ConfiguredChannelFilter,
        "status",
        "purpose",
        "campaign",
        ("created_at", admin.DateFieldListFilter),
        ProfileFilter,
    )
    search_fields = ("address", "subject", "provider_message_id")
    search_help_text = _(
        "Address (start of it), public id, provider message id (exact) or words of the subject."
    )
    date_hierarchy = "created_at"
    ordering = ("-created_at", "-id")
    show_full_result_count = False  # the log is large: one COUNT per page is enough
    show_facets = admin.ShowFacets.NEVER
    list_per_page = 100
    inlines = [StatusHistoryInline]
    readonly_fields = (
        "uuid",
        "profile",
        "campaign",
        "enrollment",
        "step",
        "channel",
        "purpose",
        "address",
        "template",
        "language",
        "tags",
        "status_display",
        "error",
        "rendered_content",
        "data_display",
        "outbox_links",
        "units",
        "cost_display",
        "provider",
        "provider_message_id",
        "attempts",
        "next_attempt_at",
        "claimed_by",
        "lease_expires_at",
        "dedupe_key",
        *TIME_FIELDS,
    )
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "uuid",
                    "profile",
                    ("campaign", "step"),
                    "enrollment",
                    ("channel", "purpose"),
                    "address",
                    ("template", "language"),
                    "tags",
                    "status_display",
                    "error",
                )
            },
        ),
        (_("Content (as the recipient sees it)"), {"fields": ("rendered_content", "data_display")}),
        (_("Outbox"), {"fields": ("outbox_links",)}),
        (
            _("Cost and provider"),
            {
                "fields": (
                    ("units", "cost_display"),
                    ("provider", "provider_message_id"),
                    ("attempts", "next_attempt_at"),
                    ("claimed_by", "lease_expires_at"),
                    "dedupe_key",
                )
            },
        ),
        (
            _("Times (first report of each status)"),
            {"fields": TIME_FIELDS, "classes": ("collapse",)},
        ),
    )

    class Media:
        css = {"all": [CSS]}

    # --- permissions: messages are records ---------------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # made by queue_message (campaigns, the test send below), never by hand

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting loses the figures of a campaign: only superusers (e.g. to erase test sends).
        return request.user.is_superuser and super().has_delete_permission(request, obj)

    def has_test_send_permission(self, request: HttpRequest) -> bool:
        """Preview and test send: staff with "Can add message" (superusers have it)."""
        return (
            request.user.is_active
            and request.user.is_staff
            and request.user.has_perm(f"{self.opts.app_label}.add_{self.opts.model_name}")
        )

    # --- search ---------------------------------------------------------------------------------

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        # Index-friendly lookups on a large table: exact ids, address prefix; the subject is
        # searched word by word as the admin would.
        condition = Q(address__istartswith=term) | Q(provider_message_id=term)
        public_id = _parse_uuid(term)
        if public_id is not None:
            condition |= Q(uuid=public_id)
        words = term.split()
        if words:
            subject = Q()
            for word in words:
                subject &= Q(subject__icontains=word)
            condition |= subject
        return queryset.filter(condition), False

    # --- columns ----------------------------------------------------------------------------------

    @admin.display(description=_("subject / template"), ordering="subject")
    def subject_or_template(self, obj: Message) -> str:
        return obj.subject or (f"[{obj.template}]" if obj.template else EMPTY)

    @admin.display(description=_("status"), ordering="status")
    def status_display(self, obj: Message) -> SafeString:
        return status_badge(obj.status)

    @admin.display(description=_("cost"), ordering="cost")
    def cost_display(self, obj: Message) -> str:
        return money(obj.cost, obj.currency)

    # --- message page -----------------------------------------------------------------------------

    @admin.display(description=_("content"))
    def rendered_content(self, obj: Message) -> SafeString:
        entry = obj.outbox_entries.order_by("-created_at", "-pk").first() if obj.pk else None
        return render_content(
            channel=obj.channel,
            address=obj.address,
            subject=obj.subject,
            body_text=obj.body_text,
            body_html=obj.body_html,
            data=obj.data,
            payload=entry.payload if entry is not None else None,
            units=obj.units,
        )

    @admin.display(description=_("data"))
    def data_display(self, obj: Message) -> SafeString:
        return _pretty_json(obj.data)

    @admin.display(description=_("outbox entries"))
    def outbox_links(self, obj: Message) -> SafeString:
        entries = list(obj.outbox_entries.order_by("-created_at", "-pk")) if obj.pk else []
        if not entries:
            return format_html(
                "{}", _("None: the channel was not in outbox mode, or the message was not sent.")
            )
        site = self.admin_site.name
        return format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                "<li>{}</li>",
                (
                    (
                        _link(
                            _admin_url(OutboxEntry, "change", entry.pk, site_name=site),
                            f"#{entry.pk} {_when(entry.created_at)} {entry.address}",
                        ),
                    )
                    for entry in entries
                ),
            ),
        )

    # --- preview and test send -----------------------------------------------------------------

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        custom = [
            path(
                "preview/",
                # A test send calls the provider: never inside ATOMIC_REQUESTS' transaction,
                # which a later error would roll back after the message went out.
                transaction.non_atomic_requests(self.admin_site.admin_view(self.preview_view)),
                name="{}_{}_preview".format(*info),
            ),
        ]
        return custom + super().get_urls()

    def preview_view(self, request: HttpRequest) -> HttpResponse:
        """Render a template for a profile (stores nothing), or send it as a test."""
        if not self.has_test_send_permission(request):
            raise PermissionDenied
        channels, broken = configured_channels()
        preview = None
        if request.method == "POST":
            form = PreviewForm(request.POST, channels=channels, admin_site=self.admin_site)
            if form.is_valid():
                if "_send" in request.POST:
                    response = self._test_send(request, form)
                    if response is not None:
                        return response
                else:
                    preview = build_preview(form.backend, **form.service_kwargs())
                    if preview["error"]:
                        messages.error(request, preview["error"])
        else:
            form = PreviewForm(
                initial=self._initial(request, channels),
                channels=channels,
                admin_site=self.admin_site,
            )
        context = {
            **self.admin_site.each_context(request),
            "title": _("Preview and test send"),
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "form": form,
            "media": self.media + form.media,
            "preview": preview,
            "broken_channels": sorted(broken.items()),
            "template_keys": [(name, template_keys(backend)) for name, backend in channels.items()],
            "has_view_permission": self.has_view_permission(request),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/omnichannel/message/preview.html", context)

    def _initial(self, request: HttpRequest, channels: dict[str, BaseChannel]) -> dict[str, Any]:
        initial: dict[str, Any] = {"purpose": Purpose.TRANSACTIONAL, "template": "test"}
        profile = request.GET.get("profile", "")
        if profile.isascii() and profile.isdigit():
            initial["profile"] = int(profile)
        channel = request.GET.get("channel", "")
        if channel in channels:
            initial["channel"] = channel
        for name in ("purpose", "template"):
            if request.GET.get(name):
                initial[name] = request.GET[name]
        return initial

    def _test_send(self, request: HttpRequest, form: PreviewForm) -> HttpResponse | None:
        """Queue and deliver now; a redirect to the message, or None to show the form again."""
        kwargs = form.service_kwargs()
        now = timezone.now()
        try:
            message = queue_message(
                kwargs["profile"],
                channel=kwargs["channel"],
                purpose=kwargs["purpose"],
                template=kwargs["template"],
                context=kwargs["context"],
                now=now,
                tags=["test"],
            )
        except NotReachable as exc:
            messages.error(
                request, _("Not sent: this person cannot be reached: %(reason)s") % {"reason": exc}
            )
            return None
        except Exception as exc:
            logger.warning("test send on %s failed to queue", kwargs["channel"], exc_info=True)
            messages.error(
                request,
                _("Not sent: the message could not be rendered: %(error)s")
                % {"error": f"{type(exc).__name__}: {exc}"},
            )
            return None
        try:
            message = deliver_message(message, now=now)
        except Exception as exc:
            logger.exception("test send of message %s crashed", message.pk)
            messages.error(
                request,
                _("The message was queued but sending crashed: %(error)s")
                % {"error": f"{type(exc).__name__}: {exc}"},
            )
        else:
            self._report_send(request, message)
        return HttpResponseRedirect(
            _admin_url(Message, "change", message.pk, site_name=self.admin_site.name)
        )

    def _report_send(self, request: HttpRequest, message: Message) -> None:
        status = message.status
        if status in (MessageStatus.SENT, MessageStatus.DELIVERED):
            entry = message.outbox_entries.order_by("-pk").first()
            if entry is not None:
                url = _admin_url(OutboxEntry, "change", entry.pk, site_name=self.admin_site.name)
                messages.success(
                    request,
                    format_html(
                        '{} <a href="{}">{}</a>',
                        _("Test message sent to %(address)s (outbox mode).")
                        % {"address": message.address},
                        url,
                        _("See it in the outbox."),
                    ),
                )
            else:
                messages.success(
                    request,
                    _("Test message sent to %(address)s; provider id %(id)s.")
                    % {"address": message.address, "id": message.provider_message_id},
                )
        elif status == MessageStatus.QUEUED:
            throttle = ChannelThrottle.objects.filter(
                channel=message.channel, paused_until__gt=timezone.now()
            ).first()
            if throttle is not None:
                reason = _("the channel is paused until %(until)s") % {
                    "until": _when(throttle.paused_until)
                }
            else:
                reason = _("temporary failure, next attempt at %(at)s: %(error)s") % {
                    "at": _when(message.next_attempt_at),
                    "error": message.error or EMPTY,
                }
            messages.warning(request, _("Queued, not sent yet: %(reason)s") % {"reason": reason})
        else:
            messages.error(
                request,
                _("Not sent (%(status)s): %(error)s")
                % {"status": message.get_status_display(), "error": message.error or EMPTY},
            )


# --- preview ------------------------------------------------------------------------------------


class PreviewForm(forms.Form):
    """Who, on which channel, for what purpose, which template, with what extra context."""

    profile = forms.ModelChoiceField(
        label=_("profile"),
        queryset=CustomerProfile.objects.all(),
        help_text=_("Search by email, phone or name."),
        error_messages={"invalid_choice": _("No customer profile with this id.")},
    )
    channel = forms.ChoiceField(label=_("channel"))
    purpose = forms.ChoiceField(
        label=_("purpose"),
        choices=Purpose.choices,
        initial=Purpose.TRANSACTIONAL,
        help_text=_("Marketing needs the person's consent; transactional does not by default."),
    )
    template = forms.CharField(
        label=_("template key"),
        max_length=200,
        help_text=_(
            "The <key> of omnichannel/<channel folder>/<key>_<part> templates, e.g. test, "
            "welcome, abandoned_basket."
        ),
        widget=forms.TextInput(attrs={"autocomplete": "off", "class": "vTextField"}),
    )
    context = forms.CharField(
        label=_("extra context (JSON)"),
        required=False,
        help_text=_('A JSON object added to the template context, e.g. {"coupon": "SPRING10"}.'),
        widget=forms.Textarea(attrs={"rows": 4, "cols": 60, "class": "vLargeTextField"}),
    )

    def __init__(
        self, *args: Any, channels: dict[str, BaseChannel], admin_site: admin.AdminSite, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.channels = channels
        self.fields["channel"].choices = [
            (name, backend.label or name) for name, backend in channels.items()
        ]
        profile = self.fields["profile"]
        # The search box of the profile admin (email, phone, name), as on a ForeignKey field.
        profile.widget = ProfileAutocomplete(Message._meta.get_field("profile"), admin_site)
        profile.widget.is_required = profile.required
        profile.widget.choices = profile.choices

    @property
    def backend(self) -> BaseChannel:
        return self.channels[self.cleaned_data["channel"]]

    def clean_template(self) -> str:
        key = self.cleaned_data["template"].strip()
        if not TEMPLATE_KEY_RE.match(key):
            raise ValidationError(
                _("A template key is letters, digits, '_' and '-' only (no folder, no suffix).")
            )
        return key

    def clean_context(self) -> dict[str, Any]:
        raw = self.cleaned_data.get("context", "").strip()
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise ValidationError(
                _("Not valid JSON: %(error)s."), params={"error": str(exc)}, code="json"
            ) from exc
        if not isinstance(value, dict):
            raise ValidationError(
                _('Enter a JSON object (e.g. {"coupon": "SPRING10"}), not a %(type)s.'),
                params={"type": type(value).__name__},
                code="json_object",
            )
        return value

    def service_kwargs(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "profile": data["profile"],
            "channel": data["channel"],
            "purpose": data["purpose"],
            "template": data["template"],
            "context": data["context"],
        }


def build_preview(
    backend: BaseChannel,
    *,
    profile: CustomerProfile,
    channel: str,
    purpose: str,
    template: str,
    context: dict[str, Any],
    inline: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Render ``template`` (or ``inline`` parts) for ``profile`` as queue_message would, storing
    nothing.

    The message is never saved, and rendering runs in a transaction that is rolled back, so a
    template tag or channel that writes (a link token row, a recommendation cache) leaves no
    trace. Returns the content, the reachability and the cost, or ``error``.
    """
    try:
        reach = backend.reachability(profile, purpose)
    except Exception as exc:  # noqa: BLE001  (shown on the page)
        reach = Reach(None, f"{type(exc).__name__}: {exc}")
    language = profile.language or settings.LANGUAGE_CODE
    message = Message(
        profile=profile,
        channel=channel,
        purpose=purpose,
        address=reach.address or "",
        template=template,
        language=language,
        tags=["test"],
        currency=backend.currency,
    )
    result: dict[str, Any] = {"reach": reach, "error": "", "message": message, "content": None}
    try:
        with transaction.atomic():
            try:
                with translation.override(language):
                    backend.render(
                        message,
                        message_context(message, profile, backend, context),
                        template=template,
                        inline=inline,
                    )
                message.units = backend.units(message)
                message.cost = backend.cost_of(message).quantize(Decimal("0.00001"))
            finally:
                transaction.set_rollback(True)
    except Exception as exc:  # noqa: BLE001  (a template error is shown to staff, never a 500)
        result["error"] = _("The template could not be rendered: %(error)s") % {
            "error": f"{type(exc).__name__}: {exc}"
        }
        return result
    result["cost"] = money(message.cost, message.currency)
    result["content"] = render_content(
        channel=channel,
        address=message.address,
        subject=message.subject,
        body_text=message.body_text,
        body_html=message.body_html,
        data=message.data,
        units=message.units,
    )
    result["data"] = _pretty_json(message.data)
    return result


# --- outbox -------------------------------------------------------------------------------------


@admin.register(OutboxEntry)
class OutboxEntryAdmin(admin.ModelAdmin):
    """The demo shop's inbox: what every channel in outbox mode would have sent."""

    list_display = ("created_at", "channel", "address", "subject_display", "message_link")
    list_display_links = ("created_at", "subject_display")
    list_filter = (ConfiguredChannelFilter,)
    search_fields = ("address",)
    search_help_text = _("Address: email, phone, chat id or device (start of it).")
    list_select_related = ("message",)
    ordering = ("-created_at", "-id")
    date_hierarchy = "created_at"
    show_facets = admin.ShowFacets.NEVER
    readonly_fields = (
        "created_at",
        "channel",
        "address",
        "message_link",
        "rendered",
        "payload_display",
    )
    fieldsets = (
        (None, {"fields": ("created_at", ("channel", "address"), "message_link")}),
        (_("As the recipient sees it"), {"fields": ("rendered",)}),
        (_("What the provider would have received"), {"fields": ("payload_display",)}),
    )

    class Media:
        css = {"all": [CSS]}

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(address__istartswith=term), False

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        custom = [
            path(
                "clear/",
                self.admin_site.admin_view(self.clear_view),
                name="{}_{}_clear".format(*info),
            ),
        ]
        return custom + super().get_urls()

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None):
        extra_context = {**(extra_context or {}), "can_clear": self.has_delete_permission(request)}
        return super().changelist_view(request, extra_context)

    def clear_view(self, request: HttpRequest) -> HttpResponse:
        """Delete every outbox entry (after a confirmation page; POST only deletes)."""
        if not self.has_delete_permission(request):
            raise PermissionDenied
        changelist = _admin_url(OutboxEntry, "changelist", site_name=self.admin_site.name)
        if request.method == "POST":
            count, _details = OutboxEntry.objects.all().delete()
            self.message_user(
                request,
                ngettext(
                    "Cleared the outbox: %(count)d entry deleted.",
                    "Cleared the outbox: %(count)d entries deleted.",
                    count,
                )
                % {"count": count},
                messages.SUCCESS,
            )
            return HttpResponseRedirect(changelist)
        context = {
            **self.admin_site.each_context(request),
            "title": _("Clear the outbox?"),
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "count": OutboxEntry.objects.count(),
            "changelist_url": changelist,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/omnichannel/outboxentry/clear.html", context)

    @admin.display(description=_("subject / text"), ordering="subject")
    def subject_display(self, obj: OutboxEntry) -> str:
        text = obj.subject or " ".join(obj.body_text.split())
        return (text[:80] + "\u2026") if len(text) > 81 else (text or EMPTY)

    @admin.display(description=_("message"))
    def message_link(self, obj: OutboxEntry) -> SafeString:
        if obj.message_id is None:
            return format_html("{}", EMPTY)
        url = _admin_url(Message, "change", obj.message_id, site_name=self.admin_site.name)
        return _link(url, format_html("#{}", obj.message_id))

    @admin.display(description=_("message"))
    def rendered(self, obj: OutboxEntry) -> SafeString:
        message = obj.message
        return render_content(
            channel=obj.channel,
            address=obj.address,
            subject=obj.subject,
            body_text=obj.body_text,
            body_html=obj.body_html,
            data=message.data if message is not None else None,
            payload=obj.payload,
            units=message.units if message is not None else None,
        )

    @admin.display(description=_("payload"))
    def payload_display(self, obj: OutboxEntry) -> SafeString:
        return _pretty_json(obj.payload)


# --- suppressions -------------------------------------------------------------------------------


class SuppressionForm(forms.ModelForm):
    """Staff add an address by hand (reason "manual"); it is normalised like identities are."""

    channel = forms.ChoiceField(label=_("channel"))

    class Meta:
        model = Suppression
        fields = ("channel", "address", "transactional_too", "detail")
        help_texts = {
            "address": _("Email address or phone number (any format: stored normalised)."),
            "detail": _("Why: e.g. the person asked by phone not to be contacted."),
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        names = list(app_settings.CHANNELS) if isinstance(app_settings.CHANNELS, dict) else []
        self.fields["channel"].choices = [(name, name) for name in names]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        channel, address = data.get("channel"), data.get("address")
        if channel and address:
            kind = channel_kind(channel)
            try:
                if kind == "email":
                    data["address"] = normalise_email(address)
                elif kind == "sms":
                    data["address"] = normalise_phone(address)
                else:
                    data["address"] = address.strip()
            except InvalidIdentity as exc:
                self.add_error("address", str(exc))
        return data


@admin.register(Suppression)
class SuppressionAdmin(admin.ModelAdmin):
    """Addresses we must not send to: from bounces and complaints, or added by staff.

    Deleting a suppression lifts it. Existing rows are not edited (delete and add instead), so
    the reason and its message stay what the provider reported.
    """

    form = SuppressionForm
    list_display = ("created_at", "channel", "address", "reason", "transactional_too", "detail")
    list_filter = (ConfiguredChannelFilter, "reason", "transactional_too")
    search_fields = ("address",)
    search_help_text = _("Address (start of it).")
    ordering = ("-created_at", "-id")
    date_hierarchy = "created_at"

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(address__istartswith=term), False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        return (
            "channel",
            "address",
            "reason",
            "transactional_too",
            "message_link",
            "detail",
            "created_at",
        )

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("channel", "address", "transactional_too", "detail")
        return self.get_readonly_fields(request, obj)

    def save_model(self, request, obj, form, change):
        if not change:
            obj.reason = SuppressionReason.MANUAL
            obj.created_at = timezone.now()
        super().save_model(request, obj, form, change)

    @admin.display(description=_("message"))
    def message_link(self, obj: Suppression) -> SafeString:
        if obj.message_id is None:
            return format_html("{}", EMPTY)
        url = _admin_url(Message, "change", obj.message_id, site_name=self.admin_site.name)
        return _link(url, format_html("#{}", obj.message_id))


# --- throttles ----------------------------------------------------------------------------------


@admin.register(ChannelThrottle)
class ChannelThrottleAdmin(admin.ModelAdmin):
    """Channels a provider told to slow down (HTTP 429); "resume now" lifts the pause."""

    list_display = ("channel", "paused_until", "is_paused", "consecutive", "reason")
    readonly_fields = ("channel", "paused_until", "consecutive", "reason")
    ordering = ("channel",)
    actions = ["resume_now"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_resume_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.change_{self.opts.model_name}")

    @admin.display(description=_("paused now"), boolean=True)
    def is_paused(self, obj: ChannelThrottle) -> bool:
        return obj.paused_until > timezone.now()

    @admin.action(description=_("Resume the selected channels now"), permissions=["resume"])
    def resume_now(self, request: HttpRequest, queryset: QuerySet) -> None:
        now = timezone.now()
        resumed = 0
        for throttle in queryset:
            with transaction.atomic():
                # Messages put back by the 429 wait for the end of the pause: make them due.
                Message.objects.filter(
                    channel=throttle.channel,
                    status=MessageStatus.QUEUED,
                    next_attempt_at__gt=now,
                    next_attempt_at__lte=throttle.paused_until,
                    error__startswith="rate limited",
                ).update(next_attempt_at=now)
                resumed += ChannelThrottle.objects.filter(pk=throttle.pk).update(
                    paused_until=now, consecutive=0
                )
        self.message_user(
            request,
            ngettext("Resumed %(count)d channel.", "Resumed %(count)d channels.", resumed)
            % {"count": resumed},
            messages.SUCCESS,
        )
