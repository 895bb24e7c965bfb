"""Email through Django's mail API, so every anymail ESP (and SMTP) works.

Configured as::

    OMNICHANNEL = {"CHANNELS": {"email": {
        "BACKEND": "omnichannel.channels.email.EmailChannel",
        "COST": "0.0008",
        "OPTIONS": {
            "FROM_EMAIL": "Shop <shop@example.com>",        # default: DEFAULT_FROM_EMAIL
            "REPLY_TO": "help@example.com",                  # optional
            "EMAIL_BACKEND": "anymail.backends.postmark.EmailBackend",  # default: EMAIL_BACKEND
            "TRACK_OPENS": True,                             # anymail track_opens
            "TRACK_CLICKS": True,                            # anymail track_clicks
            "UNSUBSCRIBE_MAILTO": "unsubscribe@example.com", # optional, in List-Unsubscribe
            "MAX_TAGS": None,                                # None: 1 for single-tag ESPs
            "BATCH_SIZE": 100,                               # messages per connection
            "OUTBOX": False,                                 # demo: write to OutboxEntry
        },
    }}}

Templates: ``omnichannel/email/<key>_subject.txt`` (required), ``<key>_body.html`` and
``<key>_body.txt`` (one of them required). Without a text template the plain-text part is
derived from the HTML: every email has one, as spam filters and some readers expect.
"""

from __future__ import annotations

import email.utils
import logging
import re
import smtplib
from collections.abc import Sequence
from datetime import datetime
from email.headerregistry import Address
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any, ClassVar

import css_inline
from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.core.mail.backends.base import BaseEmailBackend
from django.db.models import Case, CharField, OuterRef, Q, Subquery, When
from django.db.models.functions import Lower, Trim
from django.utils import timezone
from django.utils.module_loading import import_string

from ..conf import app_settings
from ..exceptions import (
    ChannelError,
    ConfigurationError,
    InvalidIdentity,
    PermanentChannelError,
    RateLimited,
    TemporaryChannelError,
)
from ..profiles.models import Channel, Identity, IdentityKind, Purpose
from ..profiles.normalise import normalise_email
from .base import BaseChannel, SendResult, latest_identity_values

if TYPE_CHECKING:
    from django.db.models import Expression

    from ..profiles.models import CustomerProfile
    from .models import Message

logger = logging.getLogger("omnichannel.channels")

#: anymail ESPs that take a single tag per message (more raise AnymailUnsupportedFeature).
SINGLE_TAG_ESPS = frozenset({"Postmark", "Mailjet", "Mailtrap", "Postal", "SparkPost"})

#: Options this channel understands (OUTBOX is taken by BaseChannel).
OPTIONS = frozenset(
    {
        "FROM_EMAIL",
        "REPLY_TO",
        "EMAIL_BACKEND",
        "TRACK_OPENS",
        "TRACK_CLICKS",
        "UNSUBSCRIBE_MAILTO",
        "MAX_TAGS",
        "BATCH_SIZE",
    }
)

#: Metadata key carrying our Message.uuid; the tracking receiver reads it back.
METADATA_KEY = "omnichannel_message"


class EmailChannel(BaseChannel):
    """Email: templates rendered to subject, HTML (CSS inlined) and text, sent via Django."""

    consent_channel: ClassVar[str] = Channel.EMAIL
    template_folder: ClassVar[str] = "email"
    # body.html is required unless body.txt is given: checked in render().
    template_parts: ClassVar[dict[str, bool]] = {
        "subject.txt": True,
        "body.html": False,
        "body.txt": False,
    }
    batch_size: ClassVar[int] = 100
    label: ClassVar[str] = "Email"
    reports_opens: ClassVar[bool] = True

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        unknown = set(self.options) - OPTIONS
        if unknown:
            raise ConfigurationError(
                f"OMNICHANNEL['CHANNELS'][{name!r}]['OPTIONS'] has unknown keys "
                f"{sorted(unknown)}; EmailChannel knows {sorted(OPTIONS | {'OUTBOX'})}"
            )
        try:
            self.batch_size = max(int(self.options.get("BATCH_SIZE", 100)), 1)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"OMNICHANNEL['CHANNELS'][{name!r}]['OPTIONS']['BATCH_SIZE'] must be an integer"
            ) from exc

    # --- who can be reached -------------------------------------------------------------------

    def get_address(self, profile: CustomerProfile) -> str | None:
        """The account's email when the person has one, else their latest email identity."""
        user = profile.user if profile.user_id else None
        account_email = getattr(user, "email", "") if user is not None else ""
        if account_email:
            try:
                return normalise_email(account_email)
            except InvalidIdentity:
                # A legacy account with a broken address: an identity may still be good.
                logger.info("profile %s: account email %r is not valid", profile.pk, account_email)
        value = (
            Identity.objects.filter(profile=profile, kind=IdentityKind.EMAIL)
            .order_by("-created_at", "-pk")
            .values_list("value", flat=True)
            .first()
        )
        if not value:
            return None
        try:
            return normalise_email(value)
        except InvalidIdentity:
            return None

    def get_addresses(self, profiles: Sequence[CustomerProfile]) -> dict[int, str | None]:
        """``get_address`` for many profiles: the account emails in one query, the latest email
        identities of those without a good one in another."""
        if type(self).get_address is not EmailChannel.get_address:
            return super().get_addresses(profiles)
        from django.contrib.auth import get_user_model

        from ..profiles.models import CustomerProfile as Profile

        profiles = list(profiles)
        account_emails: dict[int, str] = {}
        to_fetch: set[int] = set()
        for profile in profiles:
            if not profile.user_id:
                continue
            if Profile.user.is_cached(profile):  # type: ignore[attr-defined]
                user = profile.user
                account_emails[profile.pk] = getattr(user, "email", "") if user else ""
            else:
                to_fetch.add(profile.user_id)
        if to_fetch:
            user_model = get_user_model()
            if any(f.name == "email" for f in user_model._meta.concrete_fields):
                emails = dict(
                    user_model._default_manager.filter(pk__in=to_fetch).values_list("pk", "email")
                )
            else:
                emails = {}
            for profile in profiles:
                if profile.user_id in to_fetch:
                    account_emails[profile.pk] = emails.get(profile.user_id) or ""
        addresses: dict[int, str | None] = {}
        for profile in profiles:
            account_email = account_emails.get(profile.pk, "")
            if account_email:
                try:
                    addresses[profile.pk] = normalise_email(account_email)
                    continue
                except InvalidIdentity:
                    logger.info(
                        "profile %s: account email %r is not valid", profile.pk, account_email
                    )
            addresses[profile.pk] = None
        without = [pk for pk, address in addresses.items() if address is None]
        for pk, value in latest_identity_values(without, IdentityKind.EMAIL).items():
            try:
                addresses[pk] = normalise_email(value)
            except InvalidIdentity:
                addresses[pk] = None
        return addresses

    def address_expression(self) -> Expression | None:
        """The address in SQL where it is certain to be what ``get_address`` gives: the account
        email when an email identity holds it lower-cased and trimmed (identities are stored
        normalised, so it is a valid address), else the latest email identity when it is stored
        normalised; NULL otherwise (a legacy account email with no identity, an odd value),
        which leaves those people to ``reachability``."""
        if type(self).get_address is not EmailChannel.get_address:
            return None
        from django.contrib.auth import get_user_model

        latest_pk = Subquery(
            Identity.objects.filter(profile=OuterRef(OuterRef("pk")), kind=IdentityKind.EMAIL)
            .order_by("-created_at", "-pk")
            .values("pk")[:1]
        )
        latest_if_normalised = Subquery(
            Identity.objects.filter(
                pk=latest_pk, value=Lower(Trim("value")), value__contains="@"
            ).values("value")[:1]
        )
        user_model = get_user_model()
        if not any(f.name == "email" for f in user_model._meta.concrete_fields):
            return latest_if_normalised
        account_identity = Subquery(
            Identity.objects.filter(
                kind=IdentityKind.EMAIL, value=Lower(Trim(OuterRef("user__email")))
            ).values("value")[:1]
        )
        return Case(
            When(
                Q(user__isnull=False) & Q(user__email__isnull=False) & ~Q(user__email=""),
                then=account_identity,
            ),
            default=latest_if_normalised,
            output_field=CharField(),
        )

    # --- content -----------------------------------------------------------------------------

    def render(
        self,
        message: Message,
        context: dict[str, Any],
        *,
        template: str = "",
        inline: dict[str, str] | None = None,
    ) -> None:
        """Render subject, HTML and text; links are left to the ESP's click tracking unless
        ``EMAIL_CLICK_REDIRECT`` is on."""
        context = dict(context)
        context["track_clicks"] = bool(app_settings.EMAIL_CLICK_REDIRECT)
        _give_basket_a_strategy(context.get("basket"))
        super().render(message, context, template=template, inline=inline)
        if not message.body_html and not message.body_text:
            raise ConfigurationError(
                f"{self.name}: template {template!r} has neither body.html nor body.txt "
                f"(inline parts {sorted(inline or {})})"
            )

    def apply_rendered(self, message: Message, parts: dict[str, str]) -> None:
        """Inline the CSS, add the open pixel and derive the text part when there is none."""
        html = parts.pop("body.html", "")
        text = parts.pop("body.txt", "")
        super().apply_rendered(message, parts)
        if html.strip():
            if not text.strip():
                text = html_to_text(html)
            if app_settings.EMAIL_OPEN_PIXEL:
                html = _add_open_pixel(html, message)
            message.body_html = inline_css(html)
        else:
            message.body_html = ""
        message.body_text = text.strip()

    # --- building the email ------------------------------------------------------------------

    def backend_path(self) -> str:
        """Dotted path of the Django email backend (an anymail ESP, SMTP, locmem...)."""
        return str(self.options.get("EMAIL_BACKEND") or settings.EMAIL_BACKEND)

    def from_email(self) -> str:
        return str(self.options.get("FROM_EMAIL") or settings.DEFAULT_FROM_EMAIL)

    def get_connection(self) -> BaseEmailBackend:
        """A new connection of the configured backend (not opened)."""
        try:
            return get_connection(self.backend_path())
        except ImportError as exc:
            raise ConfigurationError(
                f"{self.name}: cannot import EMAIL_BACKEND {self.backend_path()!r}: {exc}"
            ) from exc

    def _esp_name(self) -> str | None:
        try:
            backend = import_string(self.backend_path())
        except ImportError:
            return None
        name = getattr(backend, "esp_name", None)
        # On anymail's abstract base esp_name is a property object, not a name.
        return name if isinstance(name, str) else None

    def message_id_header(self, message: Message) -> str:
        """A Message-ID that stays the same on every retry of this message."""
        domain = email.utils.parseaddr(self.from_email())[1].rpartition("@")[2]
        return f"<{message.uuid.hex}.omnichannel@{domain or 'localhost'}>"

    def headers(self, message: Message) -> dict[str, str]:
        """Message-ID, and for marketing the RFC 8058 one-click unsubscribe headers.

        Transactional messages (receipts, password resets) get no List-Unsubscribe: there is
        nothing to unsubscribe from, and mailbox providers ask for it on bulk mail only.
        """
        from ..tracking import links

        headers = {"Message-ID": self.message_id_header(message)}
        if message.purpose == Purpose.MARKETING:
            targets = [f"<{links.unsubscribe_url(message)}>"]
            mailto = self.options.get("UNSUBSCRIBE_MAILTO")
            if mailto:
                targets.append(f"<mailto:{mailto}?subject=unsubscribe-{message.uuid.hex}>")
            headers["List-Unsubscribe"] = ", ".join(targets)
            headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        return headers

    def tags(self, message: Message) -> list[str]:
        """The message's own tags, then its purpose and channel; cut to what the ESP takes."""
        tags: list[str] = []
        for tag in [*message.tags, message.purpose, self.name]:
            tag = str(tag).strip()
            if tag and tag not in tags:
                tags.append(tag)
        limit = self.options.get("MAX_TAGS")
        if limit is None and self._esp_name() in SINGLE_TAG_ESPS:
            limit = 1
        return tags[: int(limit)] if limit is not None else tags

    def build_email(
        self, message: Message, *, connection: BaseEmailBackend | None = None
    ) -> EmailMultiAlternatives:
        """The complete email for ``message``: what is sent, and what the outbox shows."""
        name = ""
        if message.profile is not None:
            # Names come from checkouts and API payloads: no line breaks may reach a header.
            name = " ".join(f"{message.profile.first_name} {message.profile.last_name}".split())
        reply_to = self.options.get("REPLY_TO")
        mail = EmailMultiAlternatives(
            subject=message.subject,
            body=message.body_text,
            from_email=self.from_email(),
            # Address quotes the name as needed; Django encodes it and IDNA-encodes the domain
            # when it sends (formataddr raised on a domain such as münchen.de).
            to=[str(Address(display_name=name, addr_spec=message.address))],
            reply_to=[reply_to] if reply_to else None,
            headers=self.headers(message),
            connection=connection,
        )
        if message.body_html:
            mail.attach_alternative(message.body_html, "text/html")
        # anymail's attributes; other backends ignore them.
        mail.metadata = {METADATA_KEY: message.uuid.hex}
        mail.tags = self.tags(message)
        mail.track_opens = bool(self.options.get("TRACK_OPENS", True))
        # Our redirect already records clicks when EMAIL_CLICK_REDIRECT is on: the ESP's
        # wrapper around it would count each click twice.
        mail.track_clicks = bool(
            self.options.get("TRACK_CLICKS", not app_settings.EMAIL_CLICK_REDIRECT)
        )
        return mail

    # --- sending -----------------------------------------------------------------------------

    def send(self, message: Message) -> str:
        """Send one email on its own connection; returns the ESP's message id."""
        connection = self.get_connection()
        try:
            connection.open()
        except Exception as exc:  # mapped; what we do not know is re-raised
            raise _mapped(exc) from exc
        try:
            return self.send_with(connection, message)
        finally:
            _close_quietly(connection)

    def send_batch(self, messages: Sequence[Message]) -> list[SendResult]:
        """Send up to BATCH_SIZE emails over ONE connection; one result per message.

        A refused recipient fails only its own message. After a 429 the rest get the same
        RateLimited (the channel pauses). After any other error the connection is reopened,
        since an SMTP server that dropped us would fail every following message.
        """
        if self.outbox:
            return super().send_batch(messages)
        results: list[SendResult] = []
        connection = self.get_connection()
        try:
            connection.open()
        except Exception as exc:  # noqa: BLE001  (mapped; unknown errors re-raised)
            error = _mapped(exc)
            return [error] * len(messages)
        try:
            for index, message in enumerate(messages):
                try:
                    results.append(self.send_with(connection, message))
                except RateLimited as exc:
                    results.extend([exc] * (len(messages) - index))
                    break
                except Exception as exc:  # one message's failure stays its own (logged)
                    if not isinstance(exc, ChannelError):
                        logger.exception("email %s: unexpected error", message.pk)
                        exc = PermanentChannelError(f"{type(exc).__name__}: {exc}")
                    results.append(exc)
                    _close_quietly(connection)
                    try:
                        connection.open()
                    except Exception as reopen:  # noqa: BLE001  (mapped below)
                        rest = len(messages) - index - 1
                        results.extend([_mapped(reopen)] * rest)
                        break
        finally:
            _close_quietly(connection)
        return results

    def send_with(self, connection: BaseEmailBackend, message: Message) -> str:
        """Send ``message`` on an open ``connection``; map the backend's errors."""
        try:
            mail = self.build_email(message, connection=connection)
        except Exception as exc:  # bad data in this message must fail it alone (logged)
            logger.exception("email %s could not be built", message.pk)
            raise PermanentChannelError(
                f"the email could not be built: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            sent = connection.send_messages([mail])
        except Exception as exc:  # mapped; what we do not know is re-raised
            raise _mapped(exc) from exc
        if not sent:
            raise PermanentChannelError(
                "the email backend sent nothing (cancelled by an anymail pre_send receiver?)"
            )
        return self.provider_message_id(mail, message)

    def provider_message_id(self, mail: EmailMultiAlternatives, message: Message) -> str:
        """The ESP's id (anymail_status.message_id), else our Message-ID header."""
        status = getattr(mail, "anymail_status", None)
        if status is None:
            return mail.extra_headers["Message-ID"]
        recipient = status.recipients.get(message.address)
        if recipient is not None and recipient.status in ("rejected", "invalid"):
            # Only reached with ANYMAIL IGNORE_RECIPIENT_STATUS; otherwise anymail raised.
            raise PermanentChannelError(
                f"{_esp(mail)} {recipient.status} the recipient {message.address}"
            )
        if recipient is not None and recipient.message_id:
            return str(recipient.message_id)
        return str(status.message_id or mail.extra_headers["Message-ID"])

    # --- outbox ------------------------------------------------------------------------------

    def outbox_payload(self, message: Message) -> dict[str, Any]:
        """The email exactly as it would be sent: envelope, headers and anymail attributes."""
        mail = self.build_email(message)
        return {
            "backend": self.backend_path(),
            "from": mail.from_email,
            "to": list(mail.to),
            "reply_to": list(mail.reply_to),
            "subject": mail.subject,
            "headers": dict(mail.extra_headers),
            "metadata": mail.metadata,
            "tags": mail.tags,
            "track_opens": mail.track_opens,
            "track_clicks": mail.track_clicks,
            "parts": ["text/plain", *(ct for _, ct in mail.alternatives)],
        }


# --- errors ---------------------------------------------------------------------------------


def _close_quietly(connection: BaseEmailBackend) -> None:
    try:
        connection.close()
    except Exception:  # closing a broken connection must not hide the result
        logger.debug("closing the email connection failed", exc_info=True)


def _esp(mail: Any) -> str:
    connection = getattr(mail, "connection", None)
    name = getattr(connection, "esp_name", None)
    return name if isinstance(name, str) else "the ESP"


def _mapped(exc: BaseException) -> ChannelError:
    """Our error for a backend's exception; re-raises what we do not understand."""
    error = map_email_error(exc)
    if error is None:
        raise exc
    return error


def map_email_error(exc: BaseException) -> ChannelError | None:
    """Translate an anymail, SMTP or network exception; None when it is none of those."""
    if isinstance(exc, ChannelError):
        return exc
    try:
        from anymail import exceptions as anymail_exc
    except ImportError:  # pragma: no cover  (anymail is a dependency)
        anymail_exc = None
    if anymail_exc is not None:
        if isinstance(exc, anymail_exc.AnymailRecipientsRefused):
            return PermanentChannelError(
                f"recipient refused: {_esp_reason(exc)}", provider_response=_body(exc)
            )
        if isinstance(exc, anymail_exc.AnymailAPIError):
            return _map_api_error(exc)
        if isinstance(
            exc,
            anymail_exc.AnymailInvalidAddress
            | anymail_exc.AnymailUnsupportedFeature
            | anymail_exc.AnymailSerializationError
            | anymail_exc.AnymailConfigurationError,
        ):
            return PermanentChannelError(f"{type(exc).__name__}: {_first_line(exc)}")
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        detail = "; ".join(
            f"{address}: {code} {_decode(text)}" for address, (code, text) in exc.recipients.items()
        )
        if codes and all(400 <= code < 500 for code in codes):
            return TemporaryChannelError(f"SMTP recipient deferred: {detail}")
        return PermanentChannelError(f"SMTP recipient refused: {detail}")
    if isinstance(exc, smtplib.SMTPResponseException):
        text = f"SMTP {exc.smtp_code} {_decode(exc.smtp_error)}"
        if 500 <= exc.smtp_code < 600:
            return PermanentChannelError(text)
        return TemporaryChannelError(text)
    if isinstance(exc, smtplib.SMTPException | OSError):
        # Disconnected, connection refused, timeouts, TLS failures: the server may be back.
        return TemporaryChannelError(f"{type(exc).__name__}: {_first_line(exc)}")
    try:
        import requests
    except ImportError:  # pragma: no cover
        return None
    if isinstance(exc, requests.RequestException):
        return TemporaryChannelError(f"{type(exc).__name__}: {_first_line(exc)}")
    return None


def _map_api_error(exc: Any) -> ChannelError:
    status = getattr(exc, "status_code", None)
    esp = getattr(exc, "esp_name", None) or "ESP"
    if status is None:
        # No HTTP answer: a timeout or a connection error (requests' exception is the cause),
        # or an SDK error without a status (boto). Worth retrying, within the attempts cap.
        cause = exc.__cause__ or exc
        return TemporaryChannelError(f"{esp}: {type(cause).__name__}: {_first_line(cause)}")
    reason = f"{esp} {status}: {_esp_reason(exc)}"
    if status == 429:
        return RateLimited(
            reason, retry_after=_retry_after(exc.response), provider_response=_body(exc)
        )
    if status >= 500 or status == 408:
        return TemporaryChannelError(reason, provider_response=_body(exc))
    return PermanentChannelError(reason, provider_response=_body(exc))


def _body(exc: Any) -> Any:
    response = getattr(exc, "response", None)
    if response is None:
        return None
    try:
        return response.json()
    except ValueError:
        return getattr(response, "text", None)


def _esp_reason(exc: Any) -> str:
    """The ESP's own words from its error response (Postmark "Message", SendGrid "errors"...)."""
    body = _body(exc)
    if isinstance(body, dict):
        for key in ("Message", "message", "error", "detail", "ErrorMessage", "name"):
            value = body.get(key)
            if isinstance(value, str) and value.strip():
                return " ".join(value.split())[:500]
        errors = body.get("errors") or body.get("Errors")
        if isinstance(errors, list) and errors:
            texts = [e.get("message", str(e)) if isinstance(e, dict) else str(e) for e in errors]
            return "; ".join(texts)[:500]
    if isinstance(body, str) and body.strip():
        return " ".join(body.split())[:500]
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(a) for a in getattr(exc, "args", ()) if a) or str(exc)
    return text.strip().splitlines()[0][:500] if text.strip() else type(exc).__name__


def _decode(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _retry_after(response: Any) -> float | None:
    """Retry-After in seconds: a number of seconds, or an HTTP date."""
    value = getattr(response, "headers", {}).get("Retry-After") if response is not None else None
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when: datetime = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max((when - timezone.now()).total_seconds(), 0.0)


# --- content helpers ------------------------------------------------------------------------


def _give_basket_a_strategy(basket: Any) -> None:
    """Oscar prices basket lines through a strategy that only requests normally assign."""
    if basket is None or getattr(basket, "has_strategy", True):
        return
    from oscar.core.loading import get_class

    Selector = get_class("partner.strategy", "Selector")
    basket.strategy = Selector().strategy(user=getattr(basket, "owner", None))


def _add_open_pixel(html: str, message: Message) -> str:
    from ..tracking import links

    pixel = (
        f'<img src="{links.open_pixel_url(message)}" width="1" height="1" alt="" '
        'style="display:block;width:1px;height:1px;border:0;">'
    )
    index = html.lower().rfind("</body>")
    if index == -1:
        return html + pixel
    return html[:index] + pixel + html[index:]


_inliner = css_inline.CSSInliner(
    # Media queries (phones, dark mode) cannot be inlined: keep them in <head>.
    keep_at_rules=True,
    # Never fetch a <link>ed stylesheet while sending: templates carry their own CSS.
    load_remote_stylesheets=False,
)


def inline_css(html: str) -> str:
    """Move the <style> rules onto the elements (many mail clients drop <style>)."""
    try:
        return _inliner.inline(html)
    except css_inline.InlineError as exc:
        raise ConfigurationError(f"cannot inline the email's CSS: {exc}") from exc


# --- HTML to text ---------------------------------------------------------------------------

_BLOCKS = frozenset(
    {
        "p",
        "div",
        "table",
        "tr",
        "ul",
        "ol",
        "section",
        "article",
        "header",
        "footer",
        "blockquote",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "hr",
        "li",
    }
)
_SKIPPED = frozenset({"head", "style", "script", "title", "template"})
_VOID = frozenset({"br", "img", "hr", "meta", "link", "input", "col", "area", "base", "wbr"})


class _TextExtractor(HTMLParser):
    """A readable plain-text version of an HTML email: paragraphs, lists, links with URLs."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip_tag: str | None = None
        self.skip_depth = 0
        self.links: list[tuple[str, int]] = []

    def _hidden(self, tag: str, attrs: dict[str, str | None]) -> bool:
        if tag in _SKIPPED:
            return True
        style = (attrs.get("style") or "").replace(" ", "").lower()
        classes = (attrs.get("class") or "").split()
        return "display:none" in style or "preheader" in classes or "text-skip" in classes

    def handle_starttag(self, tag: str, attrs_list: list[tuple[str, str | None]]) -> None:
        attrs = dict(attrs_list)
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth += 1
            return
        if tag not in _VOID and self._hidden(tag, attrs):
            self.skip_tag, self.skip_depth = tag, 1
            return
        if tag == "br":
            self.out.append("\n")
        elif tag in ("h1", "h2", "h3"):
            self.out.append("\n\n")
        elif tag == "li":
            self.out.append("\n- ")
        elif tag in _BLOCKS:
            self.out.append("\n\n" if tag in ("p", "table", "ul", "ol", "hr") else "\n")
        elif tag in ("td", "th"):
            self.out.append(" ")
        elif tag == "a":
            self.links.append((attrs.get("href") or "", len(self.out)))

    def handle_endtag(self, tag: str) -> None:
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                if self.skip_depth == 0:
                    self.skip_tag = None
            return
        if tag == "a" and self.links:
            href, start = self.links.pop()
            label = " ".join("".join(self.out[start:]).split())
            if href and not href.startswith(("#", "mailto:", "tel:")) and href != label:
                self.out.append(f" ({href})" if label else href)
        elif tag in _BLOCKS and tag != "li":  # the next item starts its own line
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if self.skip_tag is None:
            self.out.append(re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    """Plain text for the text/plain part, derived from the HTML part."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    # Table cells and inline tags leave runs of spaces: one is enough in plain text.
    lines = [re.sub(r" {2,}", " ", line).strip() for line in "".join(parser.out).splitlines()]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()
