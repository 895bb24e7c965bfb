"""The channel interface: one way to reach a person (anymail's backend pattern).

A channel is configured in ``OMNICHANNEL["CHANNELS"]`` under a name; the name is stored on
every Message. Subclasses implement :meth:`BaseChannel.get_address` and :meth:`BaseChannel.send`
and may override :meth:`BaseChannel.send_batch` when the provider takes many messages per call,
:meth:`BaseChannel.units` when it bills per segment or device, and
:meth:`BaseChannel.outbox_payload` to show what the provider would have received.

For batches, :meth:`BaseChannel.get_addresses` (addresses of many profiles in a few queries)
feeds :meth:`BaseChannel.reachability_many`, and :meth:`BaseChannel.address_expression` (the
address as SQL) lets :meth:`BaseChannel.reachable_queryset` select reachable people set-based.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar

from django.db.models import Exists, OuterRef, Q, QuerySet, Subquery
from django.template import Context, TemplateDoesNotExist, engines
from django.template.loader import get_template

from ..conf import app_settings
from ..exceptions import ChannelError, ConfigurationError, PermanentChannelError, RateLimited
from ..profiles.models import Consent, Identity, Purpose

if TYPE_CHECKING:
    from django.db.models import Expression

    from ..profiles.models import CustomerProfile
    from .models import Message, Suppression

logger = logging.getLogger("omnichannel.channels")


@dataclass(frozen=True)
class Reach:
    """Whether a person can be reached, at which address, and if not, why not."""

    address: str | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.address is not None and not self.reason


#: What send_batch returns per message, in order: the provider's message id, or the error.
SendResult = str | ChannelError

#: The annotation ``reachable_queryset`` puts the SQL address in.
REACH_ADDRESS = "reach_address"


def latest_identity_values(profile_ids: Sequence[int], kind: str) -> dict[int, str]:
    """Each profile's most recently added identity of ``kind`` (by created_at, then pk), in one
    query: what ``profile.identities.filter(kind=...).order_by("-created_at", "-pk").first()``
    gives per profile."""
    latest: dict[int, str] = {}
    if not profile_ids:
        return latest
    rows = (
        Identity.objects.filter(profile_id__in=set(profile_ids), kind=kind)
        .order_by("profile_id", "-created_at", "-pk")
        .values_list("profile_id", "value")
    )
    for profile_id, value in rows:
        latest.setdefault(profile_id, value)
    return latest


def latest_identity_expression(kind: str) -> Subquery:
    """SQL twin of :func:`latest_identity_values`, for a queryset over CustomerProfile."""
    return Subquery(
        Identity.objects.filter(profile=OuterRef("pk"), kind=kind)
        .order_by("-created_at", "-pk")
        .values("value")[:1]
    )


def _inherited(channel: BaseChannel, name: str) -> bool:
    """True when ``channel``'s class does not override BaseChannel's method ``name``."""
    return getattr(type(channel), name) is getattr(BaseChannel, name)


def _render(template: Any, context: dict[str, Any], *, autoescape: bool) -> str:
    """Render a Django-engine template with autoescaping on or off for this part."""
    inner = getattr(template, "template", None)  # django.template.backends.django.Template
    if inner is None:  # another engine (Jinja2): its own escaping rules apply
        return template.render(context)
    return inner.render(Context(context, autoescape=autoescape))


class BaseChannel:
    """One way to reach a person. Subclasses implement ``get_address`` and ``send``."""

    #: profiles.models.Channel value whose consents govern this channel (email, sms, ...).
    consent_channel: ClassVar[str]
    #: Folder under ``templates/omnichannel/`` holding this channel's templates.
    template_folder: ClassVar[str]
    #: Template parts: part name -> required. ``<folder>/<key>_<part>`` is rendered into
    #: Message.subject (part "subject"/"title"), body_text ("body"), body_html ("body.html")
    #: or Message.data[<part>] (anything else, e.g. "url", "image").
    template_parts: ClassVar[dict[str, bool]] = {"body.txt": True}
    #: Most messages a provider takes in one call (send_batch gets at most this many).
    batch_size: ClassVar[int] = 1
    #: Shown in the admin and the outbox.
    label: ClassVar[str] = ""
    #: HTML-escape context values in ``.txt`` parts too. Off by default: a plain-text body or
    #: subject must show "O'Brien & Co", not "O&#x27;Brien &amp; Co". A channel whose text is
    #: markup (Telegram's HTML parse mode) turns it on. ``.html`` parts are always escaped.
    escape_text_parts: ClassVar[bool] = False
    #: ``{% tracked_url %}`` makes short links (``/omnichannel/s/<30 chars>/``): for channels
    #: that bill by length, like SMS.
    short_links: ClassVar[bool] = False
    #: The provider (or our pixel) reports when a message is opened. Attribution lets a
    #: delivery win an order only on channels that cannot report opens (push, SMS, Telegram).
    reports_opens: ClassVar[bool] = False
    #: The provider reports deliveries (a ``delivered`` status change). When it does not
    #: (push, web push, Telegram), attribution counts the ``sent`` report (the provider
    #: accepted the message) as the delivery.
    reports_deliveries: ClassVar[bool] = True

    def __init__(self, name: str, *, cost: Decimal, currency: str, options: dict[str, Any]) -> None:
        self.name = name
        self.cost = cost
        self.currency = currency
        self.options = dict(options)
        #: Outbox mode (the demo shop): write what would be sent to OutboxEntry instead.
        self.outbox = bool(self.options.pop("OUTBOX", False))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # --- who can be reached -------------------------------------------------------------------

    def get_address(self, profile: CustomerProfile) -> str | None:
        """The address (email, phone, chat id, devices) to send to, or None."""
        raise NotImplementedError(f"{type(self).__name__} must implement get_address")

    def reachability(self, profile: CustomerProfile, purpose: str) -> Reach:
        """Address, consent and suppression checks in one place; ``Reach.reason`` says why not."""
        address = self.get_address(profile)
        if not address:
            return Reach(None, self._no_address_reason())
        consent = (
            Consent.objects.filter(profile=profile, channel=self.consent_channel, purpose=purpose)
            .order_by("-created_at", "-pk")
            .values_list("granted", flat=True)
            .first()
        )
        reason = self._consent_reason(consent, purpose)
        if reason:
            return Reach(address, reason)
        suppressed = self.suppression_for(address, purpose)
        if suppressed:
            return Reach(address, suppressed)
        return Reach(address)

    def can_reach(self, profile: CustomerProfile, purpose: str) -> bool:
        """Has an address or device, consent for this purpose, and is not suppressed."""
        return self.reachability(profile, purpose).ok

    def _no_address_reason(self) -> str:
        return f"no {self.name} address, device or chat for this person"

    def _consent_reason(self, consent: bool | None, purpose: str) -> str:
        """Why the latest consent record (None: none) does not allow ``purpose``; '' if it does."""
        if consent is False or (self._needs_grant(purpose) and consent is None):
            state = "withdrawn" if consent is False else "not given"
            return f"{purpose} consent for {self.consent_channel} {state}"
        return ""

    @staticmethod
    def _needs_grant(purpose: str) -> bool:
        return purpose == Purpose.MARKETING or bool(app_settings.TRANSACTIONAL_REQUIRES_CONSENT)

    def suppression_channels(self) -> list[str]:
        """Channel names whose suppressions hold for this one: every channel of the same
        consent channel (a bounce on one email channel, say "newsletter", holds for all)."""
        from .registry import get_channels

        try:
            channels = get_channels()
        except ConfigurationError:  # another channel's bad settings: check ours at least
            channels = {}
        names = [n for n, c in channels.items() if c.consent_channel == self.consent_channel]
        return sorted({self.name, *names})

    def suppression_for(self, address: str, purpose: str) -> str:
        """Why ``address`` is suppressed for ``purpose`` on this channel; '' when it is not."""
        from .models import Suppression

        suppression = Suppression.objects.filter(
            channel__in=self.suppression_channels(), address=address
        ).first()
        return self._suppression_reason(suppression, purpose)

    @staticmethod
    def _suppression_reason(suppression: Suppression | None, purpose: str) -> str:
        if suppression is None:
            return ""
        if purpose == Purpose.TRANSACTIONAL and not suppression.transactional_too:
            return ""
        return f"address suppressed: {suppression.get_reason_display()}"

    # --- many people at once -------------------------------------------------------------------

    def get_addresses(self, profiles: Sequence[CustomerProfile]) -> dict[int, str | None]:
        """``get_address`` of each profile, by pk.

        This default calls ``get_address`` once per profile, so it costs a query or more per
        person: slow for batches. The built-in channels override it with a few queries for any
        number of profiles; a channel of your own should too if campaigns use it.
        """
        return {profile.pk: self.get_address(profile) for profile in profiles}

    def reachability_many(
        self, profiles: Sequence[CustomerProfile], purpose: str
    ) -> dict[int, Reach]:
        """``reachability(profile, purpose)`` of each profile, by pk, with the same addresses and
        reasons, in a constant number of queries (given a ``get_addresses`` that is).

        Addresses through ``get_addresses``; then the latest consent of every profile with an
        address in one query, and the suppressions of all those addresses in one more. A
        subclass that overrides ``reachability`` or ``suppression_for`` gets its own method
        called per profile, so both always agree.
        """
        profiles = list(profiles)
        if not (_inherited(self, "reachability") and _inherited(self, "suppression_for")):
            return {profile.pk: self.reachability(profile, purpose) for profile in profiles}
        addresses = self.get_addresses(profiles)
        result: dict[int, Reach] = {}
        with_address = {pk: address for pk, address in addresses.items() if address}
        for pk, address in addresses.items():
            if not address:
                result[pk] = Reach(None, self._no_address_reason())
        consents: dict[int, bool] = {}
        if with_address:
            rows = (
                Consent.objects.filter(
                    profile_id__in=list(with_address),
                    channel=self.consent_channel,
                    purpose=purpose,
                )
                .order_by("profile_id", "-created_at", "-pk")
                .values_list("profile_id", "granted")
            )
            for pk, granted in rows:
                consents.setdefault(pk, granted)
        allowed: dict[int, str] = {}
        for pk, address in with_address.items():
            reason = self._consent_reason(consents.get(pk), purpose)
            if reason:
                result[pk] = Reach(address, reason)
            else:
                allowed[pk] = address
        first: dict[str, Suppression] = {}
        if allowed:
            from .models import Suppression

            # Lowest pk first per address: what suppression_for's .first() picks.
            for suppression in Suppression.objects.filter(
                channel__in=self.suppression_channels(), address__in=set(allowed.values())
            ).order_by("pk"):
                first.setdefault(suppression.address, suppression)
        for pk, address in allowed.items():
            result[pk] = Reach(address, self._suppression_reason(first.get(address), purpose))
        return result

    # --- reachability in SQL (set-based sends) -----------------------------------------------

    def address_expression(self) -> Expression | None:
        """The address ``get_address`` gives, as a SQL expression over CustomerProfile rows.

        It may be NULL where SQL cannot be sure of the exact address (the caller then leaves
        that person to the per-person path), but must never differ from ``get_address`` where
        it is not NULL. None (the default) means the channel has no SQL address: push, whose
        address is a summary of devices, and channels of your own unless they add one.
        """
        return None

    def reachable_queryset(
        self, profiles: QuerySet[CustomerProfile], purpose: str
    ) -> QuerySet[CustomerProfile] | None:
        """The people of ``profiles`` reachable for ``purpose`` by SQL rules, each annotated
        with its address as ``reach_address`` (:data:`REACH_ADDRESS`); None when the channel
        has no ``address_expression``.

        The rules are ``reachability``'s: an address, the latest consent for
        (consent_channel, purpose) granted (or none needed: transactional without
        TRANSACTIONAL_REQUIRES_CONSENT), and no suppression of the address on a channel of the
        same consent channel that blocks the purpose.
        """
        from .models import Suppression

        queryset = self.reach_candidates(profiles, purpose)
        if queryset is None:
            return None
        # "> ''": neither NULL nor empty in one test (the database computes the address again
        # for each mention of it).
        queryset = queryset.filter(**{f"{REACH_ADDRESS}__gt": ""})
        suppressions = Suppression.objects.filter(
            channel__in=self.suppression_channels(), address=OuterRef(REACH_ADDRESS)
        )
        if purpose == Purpose.TRANSACTIONAL:
            # Only the first suppression counts (suppression_for's .first()).
            first_blocks = Subquery(suppressions.order_by("pk").values("transactional_too")[:1])
            return queryset.annotate(reach_blocked=first_blocks).filter(
                Q(reach_blocked__isnull=True) | Q(reach_blocked=False)
            )
        return queryset.filter(~Exists(suppressions))

    def reach_candidates(
        self, profiles: QuerySet[CustomerProfile], purpose: str
    ) -> QuerySet[CustomerProfile] | None:
        """``reachable_queryset`` before the checks on the address itself: the people whose
        consent allows ``purpose``, annotated with ``reach_address``, which may still be NULL,
        empty or suppressed. For callers that store the addresses first and then apply
        :meth:`address_allowed_sql` to the stored column (each mention of the annotation in a
        query computes the address again)."""
        expression = self.address_expression()
        if expression is None or not _inherited(self, "reachability"):
            return None
        if not _inherited(self, "suppression_for"):
            return None
        latest_consent = Subquery(
            Consent.objects.filter(
                profile=OuterRef("pk"), channel=self.consent_channel, purpose=purpose
            )
            .order_by("-created_at", "-pk")
            .values("granted")[:1]
        )
        queryset = profiles.annotate(**{REACH_ADDRESS: expression, "reach_consent": latest_consent})
        if self._needs_grant(purpose):
            return queryset.filter(reach_consent=True)
        return queryset.filter(Q(reach_consent__isnull=True) | Q(reach_consent=True))

    def address_allowed_sql(self, column: str, purpose: str) -> tuple[str, list[Any]]:
        """A SQL condition (and its parameters): the address in ``column`` (trusted SQL, e.g.
        ``"r.reach_address"``) is present and not suppressed for ``purpose``; the rest of
        :meth:`reachable_queryset`'s rules, for rows of :meth:`reach_candidates`."""
        from django.db import connection
        from django.db.models.expressions import RawSQL

        from .models import Suppression

        suppressions = Suppression.objects.filter(
            # The column name is the caller's SQL, not input.
            channel__in=self.suppression_channels(),
            address=RawSQL(column, []),  # noqa: S611
        )
        if purpose == Purpose.TRANSACTIONAL:
            first = suppressions.order_by("pk").values("transactional_too")[:1]
            sql, params = first.query.get_compiler(connection=connection).as_sql()
            blocked = f"COALESCE(({sql}), FALSE)"
        else:
            sql, params = (
                suppressions.values("pk").query.get_compiler(connection=connection).as_sql()
            )
            blocked = f"EXISTS ({sql})"
        return f"({column} > '' AND NOT {blocked})", list(params)

    # --- content -----------------------------------------------------------------------------

    def render(
        self,
        message: Message,
        context: dict[str, Any],
        *,
        template: str = "",
        inline: dict[str, str] | None = None,
    ) -> None:
        """Fill the message's content from templates (``template`` key) or ``inline`` strings.

        ``inline`` maps template parts to template source (content edited in the admin); a part
        missing there falls back to the file template, if a key is given.
        """
        inline = inline or {}
        rendered: dict[str, str] = {}
        for part, required in self.template_parts.items():
            autoescape = part.endswith(".html") or self.escape_text_parts
            source = inline.get(part)
            if source is not None:
                compiled = engines["django"].from_string(source)
                rendered[part] = _render(compiled, context, autoescape=autoescape)
                continue
            if template:
                name = f"omnichannel/{self.template_folder}/{template}_{part}"
                try:
                    compiled = get_template(name)
                except TemplateDoesNotExist:
                    if required:
                        raise
                else:
                    rendered[part] = _render(compiled, context, autoescape=autoescape)
                    continue
            if required:
                raise ConfigurationError(
                    f"{self.name}: no content for the required part {part!r} "
                    f"(template {template!r}, inline parts {sorted(inline)})"
                )
        self.apply_rendered(message, {k: v for k, v in rendered.items()})

    def apply_rendered(self, message: Message, parts: dict[str, str]) -> None:
        """Store rendered parts on the message (see ``template_parts``)."""
        for part, value in parts.items():
            if part in ("subject.txt", "title.txt"):
                message.subject = " ".join(value.split())[:255]
            elif part == "body.txt":
                message.body_text = value.strip()
            elif part == "body.html":
                message.body_html = value
            else:
                message.data[part.rsplit(".", 1)[0]] = value.strip()

    def units(self, message: Message) -> int:
        """Billable units of a rendered message (SMS segments, push devices); 1 by default."""
        return 1

    def cost_of(self, message: Message) -> Decimal:
        return self.cost * self.units(message)

    # --- sending -----------------------------------------------------------------------------

    def send(self, message: Message) -> str:
        """Send one message; return the provider's id.

        Raise TemporaryChannelError (retry later), RateLimited (slow the channel down) or
        PermanentChannelError (give up on this message, with the provider's reason).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement send")

    def send_via_batch(self, message: Message) -> str:
        """``send`` for channels whose provider path is ``send_batch`` (push, SMS): one
        message through it, its error raised."""
        result = self.send_batch([message])[0]
        if isinstance(result, ChannelError):
            raise result
        return result

    def send_batch(self, messages: Sequence[Message]) -> list[SendResult]:
        """Send up to ``batch_size`` messages; one result per message, in order.

        The default sends one by one. After a 429 the rest are not attempted: they get the same
        RateLimited error and are requeued with the channel's pause.
        """
        results: list[SendResult] = []
        for index, message in enumerate(messages):
            try:
                results.append(self.deliver_one(message))
            except RateLimited as exc:
                results.extend([exc] * (len(messages) - index))
                break
            except ChannelError as exc:
                results.append(exc)
            except Exception as exc:  # one message's bug must not fail the rest (logged)
                logger.exception("%s: message %s crashed the channel", self.name, message.pk)
                results.append(PermanentChannelError(f"{type(exc).__name__}: {exc}"))
        return results

    def deliver_one(self, message: Message) -> str:
        """Send, or write to the outbox in outbox mode."""
        if self.outbox:
            return self.send_to_outbox(message)
        return self.send(message)

    # --- outbox (demo shop, local development) ------------------------------------------------

    def outbox_payload(self, message: Message) -> dict[str, Any]:
        """What the provider's API would have received, for the outbox."""
        return {}

    def send_to_outbox(self, message: Message) -> str:
        from .models import OutboxEntry

        entry = OutboxEntry.objects.create(
            message=message,
            channel=self.name,
            address=message.address,
            subject=message.subject,
            body_text=message.body_text,
            body_html=message.body_html,
            payload=self.outbox_payload(message),
        )
        return f"outbox-{entry.pk}"
