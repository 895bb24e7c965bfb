"""Views behind the links in messages: click redirect, open pixel, one-click unsubscribe,
preference centre and basket restore.

Every link carries a signed token (tokens.py); a tampered or expired one gets the link_error
page with status 400 and changes nothing, never a 500. These pages are reached from inboxes,
phones and mail scanners: a GET never changes consent (scanners follow links), and a failure to
record a click or an open never stops the redirect or the image. See docs/tracking.md.
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from django import forms
from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core import signing
from django.core.signing import Signer
from django.db import transaction
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
)
from django.http.response import HttpResponseRedirectBase
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.cache import add_never_cache_headers
from django.utils.translation import gettext_lazy as _
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_http_methods
from oscar.core.loading import get_model

from ..channels.models import Message, MessageStatus
from ..channels.registry import get_channel
from ..channels.status import record_status
from ..conf import app_settings
from ..exceptions import ConfigurationError, TamperedToken
from ..profiles.consents import current_consents, record_consent
from ..profiles.models import (
    Channel,
    ConsentSource,
    CustomerProfile,
    ProfileMerge,
    Purpose,
)
from . import links, tokens

logger = logging.getLogger("omnichannel.tracking")

#: A transparent 1x1 GIF (43 bytes).
PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")

#: Schemes a signed click may lead to: the web, and an app's own deep links (push). Script and
#: data URLs never, even signed: a leaked SECRET_KEY must not turn into script on our domain.
_FORBIDDEN_SCHEMES = {"javascript", "data", "vbscript", "file", "blob"}

TEMPLATES = "omnichannel/tracking/"


# --- helpers ----------------------------------------------------------------------------------


def _shop_context(request: HttpRequest) -> dict[str, Any]:
    return {
        "shop_name": getattr(settings, "OSCAR_SHOP_NAME", "") or _("Our shop"),
        # These pages are served by the shop itself: its home is the root of this host.
        "shop_url": "/",
    }


def _page(
    request: HttpRequest, template: str, context: dict[str, Any] | None = None, *, status: int = 200
) -> HttpResponse:
    """Render one of our standalone pages: private, not indexed, no token in Referer."""
    response = render(
        request, TEMPLATES + template, {**_shop_context(request), **(context or {})}, status=status
    )
    _private(response)
    return response


def _private(response: HttpResponse) -> HttpResponse:
    # The URL holds a personal token: keep it out of caches, search engines and the Referer
    # header of other sites. "same-origin", not "no-referrer": under no-referrer browsers send
    # "Origin: null" with our own form's POST, which Django's CSRF check refuses.
    add_never_cache_headers(response)
    response["Referrer-Policy"] = "same-origin"
    response["X-Robots-Tag"] = "noindex, nofollow"
    return response


def _link_error(request: HttpRequest, exc: TamperedToken) -> HttpResponse:
    expired = isinstance(exc.__cause__, signing.SignatureExpired)
    match = request.resolver_match
    logger.info("refused a %s link: %s", match.url_name if match else "tracking", exc)
    return _page(request, "link_error.html", {"expired": expired}, status=400)


def _read(kind: tokens.TokenKind, token: str, *keys: str) -> dict[str, Any]:
    """The token's payload; TamperedToken also when a key is missing or not what we wrote."""
    payload = tokens.read_token(kind, token)
    for key in keys:
        if key not in payload:
            raise TamperedToken(f"this link is not valid (no {key!r})")
    return payload


def _uuid(value: Any) -> uuid.UUID | None:
    """A uuid from its hex form; None for None; TamperedToken for anything else."""
    if value is None:
        return None
    try:
        return uuid.UUID(hex=str(value))
    except ValueError as exc:
        raise TamperedToken("this link is not valid (bad id)") from exc


def find_profile(profile_uuid: uuid.UUID | None) -> CustomerProfile | None:
    """The profile a link was made for, following merges: links in old messages name profiles
    that have since become part of another one."""
    if profile_uuid is None:
        return None
    profile = CustomerProfile.objects.filter(uuid=profile_uuid).first()
    if profile is None:
        # Merged away: the survivor row is kept (a later merge moves these records along).
        merge = (
            ProfileMerge.objects.filter(merged_uuid=profile_uuid)
            .select_related("survivor")
            .order_by("-created_at", "-pk")
            .first()
        )
        profile = merge.survivor if merge is not None else None
    return profile


def consent_channel_of(channel_name: str) -> str | None:
    """The consent channel (profiles.models.Channel) of a configured channel.

    A channel that is no longer configured (or whose backend cannot be imported) falls back to
    its own name when that is a consent channel ("email", "sms", ...); None otherwise.
    """
    try:
        return get_channel(channel_name).consent_channel
    except ConfigurationError as exc:
        logger.warning(
            "channel %r is not usable (%s); guessing its consent channel", channel_name, exc
        )
        return channel_name if channel_name in Channel.values else None


def configured_consent_channels() -> list[str]:
    """Consent channels of every configured channel, deduplicated, in settings order."""
    result: list[str] = []
    configured = app_settings.CHANNELS if isinstance(app_settings.CHANNELS, dict) else {}
    for name in configured:
        consent_channel = consent_channel_of(name)
        if consent_channel and consent_channel not in result:
            result.append(consent_channel)
    return result


def _record(message_uuid: uuid.UUID | None, status: str, *, source: str) -> None:
    """Record a status on the message named by a link, if it still exists.

    A tracking write that fails must not stop the shopper on their way (a click still
    redirects, the pixel is still an image): failures are logged, never raised.
    """
    if message_uuid is None:
        return
    try:
        # uuid is unique: no ORDER BY, which .first() would add.
        found = Message.objects.filter(uuid=message_uuid).order_by().values_list("pk", flat=True)
        pk = next(iter(found[:1]), None)
        if pk is None:
            return  # the message was deleted: nothing to record on
        now = timezone.now()
        record_status(pk, status, at=now, now=now, source=source)
    except Message.DoesNotExist:
        return  # deleted between the two queries
    except Exception:  # tracking must never break the link (logged, not raised)
        logger.exception("could not record %s on message %s", status, message_uuid)


class _Redirect(HttpResponseRedirectBase):
    """A 302 to a signed URL, which may be an app's deep link (myshop://...)."""

    status_code = 302

    def __init__(self, url: str) -> None:
        # Django allows http, https and ftp; the URL was vetted by _safe_target and signed.
        self.allowed_schemes = [urlsplit(url).scheme or "https"]
        super().__init__(url)


def _safe_target(url: Any) -> str | None:
    """The URL to redirect to, or None when it is not a web page or an app link."""
    if not isinstance(url, str) or not url:
        return None
    parts = urlsplit(url)
    if not parts.scheme:
        # A path on this shop; "//host" would be another site without a scheme.
        return url if url.startswith("/") and not url.startswith("//") else None
    if parts.scheme.lower() in _FORBIDDEN_SCHEMES:
        return None
    return url


# --- click and open ---------------------------------------------------------------------------


@require_http_methods(["GET", "HEAD"])
def click(request: HttpRequest, token: str) -> HttpResponse:
    """Record a click on the message and redirect to the signed URL."""
    try:
        payload = _read(tokens.CLICK, token, "u")
        message_uuid = _uuid(payload.get("m"))
        target = _safe_target(payload["u"])
        if target is None:
            raise TamperedToken("this link leads nowhere we can send you")
    except TamperedToken as exc:
        return _link_error(request, exc)
    if request.method == "GET":  # HEAD is a link checker asking, not a person clicking
        _record(message_uuid, MessageStatus.CLICKED, source="click-link")
    response = _Redirect(target)
    _private(response)
    return response


@require_http_methods(["GET", "HEAD"])
def short_click(request: HttpRequest, token: str) -> HttpResponse:
    """A short link (SMS): the token names a message and one of the targets stored on it."""
    try:
        value = tokens.read_compact_token(tokens.SHORT_CLICK, token)
        message_id, index = divmod(value, links.SHORT_LINKS_PER_MESSAGE)
        found = Message.objects.filter(pk=message_id).values_list("uuid", "data").first()
        if found is None:
            raise TamperedToken("this link belongs to a message that no longer exists")
        message_uuid, data = found
        targets = data.get("links") if isinstance(data, dict) else None
        if not isinstance(targets, list) or index >= len(targets):
            raise TamperedToken("this link leads nowhere we can send you")
        target = _safe_target(targets[index])
        if target is None:
            raise TamperedToken("this link leads nowhere we can send you")
    except TamperedToken as exc:
        return _link_error(request, exc)
    if request.method == "GET":
        _record(message_uuid, MessageStatus.CLICKED, source="click-link")
    response = _Redirect(target)
    _private(response)
    return response


@require_http_methods(["GET", "HEAD"])
def open_pixel(request: HttpRequest, token: str) -> HttpResponse:
    """A transparent 1x1 GIF; records an open when the token is valid (never a broken image)."""
    try:
        message_uuid = _uuid(_read(tokens.OPEN, token, "m")["m"])
    except TamperedToken as exc:
        logger.info("open pixel with a bad token: %s", exc)
    else:
        if request.method == "GET":
            _record(message_uuid, MessageStatus.OPENED, source="open-pixel")
    response = HttpResponse(PIXEL_GIF, content_type="image/gif")
    add_never_cache_headers(response)
    response["Pragma"] = "no-cache"
    response["Expires"] = "0"
    return response


# --- one-click unsubscribe (RFC 8058) ---------------------------------------------------------


@dataclass
class _Unsubscription:
    profile: CustomerProfile | None
    message: Message | None
    #: Consent channels whose marketing is withdrawn.
    channels: list[str]


def _unsubscription(token: str) -> _Unsubscription:
    payload = _read(tokens.UNSUBSCRIBE, token)
    message_uuid = _uuid(payload.get("m"))
    message = (
        Message.objects.filter(uuid=message_uuid).select_related("profile").first()
        if message_uuid
        else None
    )
    profile = find_profile(_uuid(payload.get("p")))
    if profile is None and message is not None:
        profile = message.profile
    consent_channel = consent_channel_of(message.channel) if message is not None else None
    # When we cannot tell which channel the link came from (message deleted, channel gone),
    # stopping all marketing honours the request; sending after it would not.
    channels = [consent_channel] if consent_channel is not None else list(Channel.values)
    return _Unsubscription(profile=profile, message=message, channels=channels)


def unsubscribe_from_marketing(
    profile: CustomerProfile | None,
    message: Message | None,
    channels: Iterable[str],
    *,
    now: datetime,
    source: str = ConsentSource.UNSUBSCRIBE,
) -> list[str]:
    """Withdraw marketing consent on ``channels`` where it is not withdrawn already and mark
    the message unsubscribed (once); returns the channels that changed.

    Idempotent, also under two concurrent POSTs for one person (the mail provider's and the
    person's own click): the profile row is locked, so the second sees the first's rows.
    Transactional consent is never touched.
    """
    changed: list[str] = []
    with transaction.atomic():
        if profile is not None:
            CustomerProfile.objects.select_for_update().filter(pk=profile.pk).first()
            latest = current_consents(profile)
            for channel in channels:
                consent = latest.get((channel, Purpose.MARKETING))
                if consent is not None and not consent.granted:
                    continue
                record_consent(
                    profile,
                    channel=channel,
                    purpose=Purpose.MARKETING,
                    granted=False,
                    now=now,
                    source=source,
                )
                changed.append(channel)
        if (
            message is not None
            and Message.objects.filter(pk=message.pk, unsubscribed_at__isnull=True).exists()
        ):
            record_status(message.pk, MessageStatus.UNSUBSCRIBED, at=now, source="unsubscribe")
    return changed


def _preferences_path(profile: CustomerProfile) -> str:
    # Relative: the visitor is on the shop already (SITE_URL may name another host in dev).
    token = tokens.make_token(tokens.PREFERENCES, {"p": profile.uuid.hex})
    return reverse("omnichannel:preferences", args=[token])


@csrf_exempt  # RFC 8058: the provider's POST carries no cookie and no CSRF token
@require_http_methods(["GET", "HEAD", "POST"])
def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    """GET asks for confirmation and changes nothing; POST unsubscribes from marketing on the
    message's channel (RFC 8058 one-click: no cookie, no CSRF token needed)."""
    try:
        found = _unsubscription(token)
    except TamperedToken as exc:
        return _link_error(request, exc)
    channel_labels = [Channel(channel).label for channel in found.channels]
    context: dict[str, Any] = {
        "token": token,
        "channels": channel_labels,
        "all_channels": len(found.channels) > 1,
    }
    language = (found.profile.language if found.profile else "") or (
        found.message.language if found.message else ""
    )
    with translation.override(supported_language(language)):
        if request.method != "POST":
            return _page(request, "unsubscribe_confirm.html", context)
        changed = unsubscribe_from_marketing(
            found.profile, found.message, found.channels, now=timezone.now()
        )
        if changed and found.profile is not None:
            logger.info("profile %s unsubscribed from %s marketing", found.profile.pk, changed)
        if found.profile is not None:
            context["preferences_url"] = _preferences_path(found.profile)
        return _page(request, "unsubscribed.html", context)


# --- preference centre ------------------------------------------------------------------------


def supported_language(language: str) -> str:
    """``language`` as one of LANGUAGES (en-us -> en), or the shop's LANGUAGE_CODE."""
    for candidate in (language, settings.LANGUAGE_CODE):
        if not candidate:
            continue
        try:
            return translation.get_supported_language_variant(candidate)
        except LookupError:
            continue
    return settings.LANGUAGE_CODE


@dataclass(frozen=True)
class Toggle:
    """One switch of the preference centre: a consent channel and a purpose."""

    channel: str
    purpose: str
    locked: bool

    @property
    def field_name(self) -> str:
        return f"{self.channel}__{self.purpose}"


def preference_toggles() -> list[Toggle]:
    """Channels x purposes for every configured channel, transactional first."""
    locked = set(app_settings.PREFERENCES_LOCKED_TRANSACTIONAL or ())
    return [
        Toggle(channel, purpose, locked=purpose == Purpose.TRANSACTIONAL and channel in locked)
        for channel in configured_consent_channels()
        for purpose in (Purpose.MARKETING, Purpose.TRANSACTIONAL)
    ]


def effective_consents(profile: CustomerProfile, toggles: Iterable[Toggle]) -> dict[Toggle, bool]:
    """What each toggle shows: the latest record, else what sending assumes without one
    (transactional allowed unless TRANSACTIONAL_REQUIRES_CONSENT; marketing not)."""
    latest = current_consents(profile)
    transactional_default = not app_settings.TRANSACTIONAL_REQUIRES_CONSENT
    result = {}
    for toggle in toggles:
        consent = latest.get((toggle.channel, toggle.purpose))
        if consent is not None:
            result[toggle] = consent.granted
        else:
            result[toggle] = toggle.purpose == Purpose.TRANSACTIONAL and transactional_default
    return result


class PreferencesForm(forms.Form):
    """One checkbox per toggle plus the language; built per request from the configuration."""

    language = forms.ChoiceField(label=_("Language"), choices=())
    #: The toggles the page showed, so a channel configured after it was rendered is not read
    #: as "switched off" just because its box was not on the page.
    shown = forms.CharField(widget=forms.HiddenInput, required=False)

    def __init__(self, *args: Any, toggles: list[Toggle], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.toggles = toggles
        self.fields["language"].choices = [
            (code, translation.get_language_info(code)["name_local"])
            if _has_language_info(code)
            else (code, name)
            for code, name in settings.LANGUAGES
        ]
        for toggle in toggles:
            self.fields[toggle.field_name] = forms.BooleanField(
                required=False, disabled=toggle.locked
            )

    def shown_toggles(self) -> list[Toggle]:
        names = set(filter(None, self.cleaned_data.get("shown", "").split(",")))
        return [t for t in self.toggles if t.field_name in names and not t.locked]


def _has_language_info(code: str) -> bool:
    try:
        translation.get_language_info(code)
    except KeyError:
        return False
    return True


@dataclass
class _Row:
    toggle: Toggle
    field: forms.BoundField
    label: str
    help_text: str


_PURPOSE_LABELS = {
    Purpose.MARKETING: (
        _("Offers and news"),
        _("Discounts, new products and reminders about your basket."),
    ),
    Purpose.TRANSACTIONAL: (
        _("Receipts and order updates"),
        _("Order confirmations, receipts, dispatch and delivery updates."),
    ),
}


def _preferences_sections(form: PreferencesForm) -> list[dict[str, Any]]:
    sections: dict[str, dict[str, Any]] = {}
    for toggle in form.toggles:
        section = sections.setdefault(
            toggle.channel,
            {"channel": toggle.channel, "label": Channel(toggle.channel).label, "rows": []},
        )
        label, help_text = _PURPOSE_LABELS[Purpose(toggle.purpose)]
        if toggle.locked:
            help_text = _("Always sent: we owe you a confirmation of every order.")
        section["rows"].append(_Row(toggle, form[toggle.field_name], label, help_text))
    return list(sections.values())


@csrf_protect
@require_http_methods(["GET", "HEAD", "POST"])
def preferences(request: HttpRequest, token: str) -> HttpResponse:
    """The preference centre: a toggle per channel and purpose, and the person's language.

    Reached by a signed, expiring link without login. POST records a consent row only for the
    toggles that changed (source "preferences") and redirects back (PRG) with ?saved=1.
    """
    try:
        profile = find_profile(_uuid(_read(tokens.PREFERENCES, token, "p")["p"]))
        if profile is None:
            raise TamperedToken("this link names nobody we know")
    except TamperedToken as exc:
        return _link_error(request, exc)
    toggles = preference_toggles()
    current = effective_consents(profile, toggles)
    initial: dict[str, Any] = {t.field_name: current[t] for t in toggles}
    initial["language"] = supported_language(profile.language)
    initial["shown"] = ",".join(t.field_name for t in toggles)

    if request.method == "POST":
        form = PreferencesForm(request.POST, initial=initial, toggles=toggles)
        if form.is_valid():
            save_preferences(profile, form, now=timezone.now())
            response = HttpResponseRedirect(request.path + "?saved=1")
            return _private(response)
    else:
        form = PreferencesForm(initial=initial, toggles=toggles)

    language = supported_language(profile.language)
    with translation.override(language):
        return _page(
            request,
            "preferences.html",
            {
                "form": form,
                "sections": _preferences_sections(form),
                "saved": request.method == "GET" and request.GET.get("saved") == "1",
                "language_code": language,
                "profile": profile,
            },
            status=400 if form.is_bound else 200,
        )


def save_preferences(
    profile: CustomerProfile, form: PreferencesForm, *, now: datetime
) -> list[Toggle]:
    """Record the toggles that changed and the language; returns the toggles that changed."""
    changed: list[Toggle] = []
    with transaction.atomic():
        # Two tabs saving at once: the second compares against the first's rows.
        CustomerProfile.objects.select_for_update().filter(pk=profile.pk).first()
        current = effective_consents(profile, form.toggles)
        for toggle in form.shown_toggles():
            wanted = bool(form.cleaned_data.get(toggle.field_name))
            if wanted == current[toggle]:
                continue
            record_consent(
                profile,
                channel=toggle.channel,
                purpose=toggle.purpose,
                granted=wanted,
                now=now,
                source=ConsentSource.PREFERENCES,
            )
            changed.append(toggle)
        language = form.cleaned_data["language"]
        if language != profile.language:
            profile.language = language
            profile.save(update_fields=["language"])
    return changed


# --- basket restore ---------------------------------------------------------------------------


@require_http_methods(["GET", "HEAD"])
def basket_restore(request: HttpRequest, token: str) -> HttpResponse:
    """Bring the shopper back to the basket the link was made for, on any device.

    An anonymous basket is attached to this browser through Oscar's basket cookie. A basket with
    an owner opens only for that user: anyone else is sent to the login page first (a link never
    logs anybody in).
    """
    try:
        payload = _read(tokens.BASKET, token, "b")
        basket_id = payload["b"]
        if not isinstance(basket_id, int) or isinstance(basket_id, bool):
            raise TamperedToken("this link is not valid (bad basket)")
        message_uuid = _uuid(payload.get("m"))
    except TamperedToken as exc:
        return _link_error(request, exc)

    Basket = get_model("basket", "Basket")
    basket = Basket.objects.filter(pk=basket_id).only("pk", "owner_id", "status").first()
    if basket is None or basket.status != Basket.OPEN:
        return _page(request, "basket_gone.html")

    if request.method == "GET":
        _record(message_uuid, MessageStatus.CLICKED, source="basket-link")
    summary = reverse("basket:summary")
    if basket.owner_id is None:
        response = HttpResponseRedirect(summary)
        # What Oscar's BasketMiddleware reads: the basket id signed with Signer(). A logged-in
        # visitor gets it merged into their own basket on the next request, as at login.
        response.set_cookie(
            settings.OSCAR_BASKET_COOKIE_OPEN,
            Signer().sign(basket.pk),
            max_age=settings.OSCAR_BASKET_COOKIE_LIFETIME,
            secure=settings.OSCAR_BASKET_COOKIE_SECURE,
            httponly=True,
            samesite="Lax",
        )
        return _private(response)
    if request.user.is_authenticated and request.user.pk == basket.owner_id:
        return _private(HttpResponseRedirect(summary))
    # Someone else, or nobody, is logged in here: log in as the owner and come back.
    return _private(redirect_to_login(request.get_full_path()))
