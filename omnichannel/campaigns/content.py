"""What campaign messages say: item dicts, recommendations and the rendering of engine messages.

The engine creates campaign messages without content (``Message.needs_render``) so it can
insert them in bulk; the delivery task renders them just before they go, with everything
current at that moment: the items still in the basket (bought ones dropped), prices, stock and
recommendations. ``render_pending_messages`` does it for one channel's batch with a fixed number
of queries (enrollments, steps, trigger data, products, images, stock, recommendations), then
renders each message on its own, so one broken template fails only its message.

Templates see the common message context (``channels.sending.message_context``) and:

* ``campaign``, ``step``, ``enrollment``, ``variant`` (the step's A/B variant, or None);
* the trigger's data (``trigger.template_context``), e.g. ``basket_id``, ``wishlist_id``,
  ``order_id``;
* ``items``: item dicts (``items_for``) of the products the message is about, still current;
  ``item``: the first one (or None); ``items_total`` and ``items_currency``;
* ``recommendations``: item dicts of products to suggest (``recommendations.py``), available
  to buy, at most ``RECOMMENDATIONS_LIMIT``;
* ``order``: the Oscar order (post-purchase) or None;
* ``restore_url`` (also as ``basket_url``): a signed link reopening the basket on any device;
  ``wishlist_url``; ``action_url``: the main link (basket, wish list, first item, shop).

A message of a step variant (``Message.variant``) is rendered from the step's template and
inline parts with the variant's on top (``inline_parts``): the variant's ``subject`` replaces
the subject (email) or title (push) part, and the variant's parts for the channel replace the
step's parts of the same name.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import Prefetch
from django.template import TemplateSyntaxError, engines
from django.urls import reverse
from django.utils import translation
from django.utils.translation import gettext as _
from oscar.core.loading import get_class, get_model

from .. import recommendations
from ..channels.models import Message, MessageStatus
from ..channels.status import record_status
from ..conf import app_settings
from ..exceptions import ConfigurationError
from ..tracking import links
from .models import BEST_CHANNEL, Enrollment, EnrollmentState, ExitReason, Step, Variant
from .triggers import registry

if TYPE_CHECKING:
    from datetime import datetime

    from ..channels.base import BaseChannel

logger = logging.getLogger("omnichannel.campaigns")

#: Message fields rendering sets (saved in one bulk UPDATE per batch).
RENDERED_FIELDS = (
    "subject",
    "body_text",
    "body_html",
    "data",
    "units",
    "cost",
    "currency",
    "language",
    "template",
    "needs_render",
)


# --- items ------------------------------------------------------------------------------------


def default_strategy() -> Any:
    """Oscar's pricing and availability strategy for messages: no request, no user."""
    Selector = get_class("partner.strategy", "Selector")
    return Selector().strategy()


def items_for(
    product_ids: Iterable[int],
    quantities: Mapping[Any, int] | None = None,
    *,
    strategy: Any = None,
) -> list[dict[str, Any]]:
    """Item dicts of these products, in the given order (unknown ids are left out).

    Each dict: ``product``, ``product_id``, ``title``, ``url`` (absolute), ``image_url``
    (absolute; "" without an image), ``price`` (Decimal incl. tax when known, else excl.;
    None without a price), ``currency``, ``quantity`` (from ``quantities``, keyed by id or
    str(id); 1 by default), ``line_price`` (price x quantity) and ``available`` (the strategy
    lets one buy it now). A fixed number of queries for any number of products.
    """
    ids = list(dict.fromkeys(int(pid) for pid in product_ids))
    if not ids:
        return []
    products = _load_products(ids)
    strategy = strategy if strategy is not None else default_strategy()
    quantities = quantities or {}
    items = []
    for pid in ids:
        product = products.get(pid)
        if product is None:
            continue
        quantity = quantities.get(str(pid), quantities.get(pid, 1))  # type: ignore[call-overload]
        items.append(_item(product, strategy, _positive_int(quantity)))
    return items


def _load_products(ids: Sequence[int]) -> dict[int, Any]:
    Product = get_model("catalogue", "Product")
    public_children = Product.objects.filter(is_public=True).prefetch_related("stockrecords")
    return (
        Product.objects.filter(pk__in=ids)
        .select_related("product_class", "parent", "parent__product_class")
        .prefetch_related(
            "images",
            "parent__images",
            "stockrecords",
            Prefetch("children", queryset=public_children, to_attr="_prefetched_public_children"),
        )
        .in_bulk()
    )


def _item(product: Any, strategy: Any, quantity: int) -> dict[str, Any]:
    price: Decimal | None = None
    currency = ""
    available = False
    try:
        if product.is_parent:
            info = strategy.fetch_for_parent(product)
        else:
            info = strategy.fetch_for_product(product)
        available = bool(product.is_public and info.availability.is_available_to_buy)
        policy = info.price
        if policy.exists:
            price = policy.incl_tax if policy.is_tax_known else policy.excl_tax
            currency = policy.currency or ""
    except Exception:  # a host strategy's bug: shown without a price, not sold
        logger.exception("pricing strategy failed for product %s", product.pk)
        available = False
    return {
        "product": product,
        "product_id": product.pk,
        "title": product.get_title(),
        "url": links.absolute(product.get_absolute_url()),
        "image_url": _image_url(product),
        "price": price,
        "currency": currency,
        "quantity": quantity,
        "line_price": price * quantity if price is not None else None,
        "available": available,
    }


def _image_url(product: Any) -> str:
    # Prefetched and ordered by display_order (ProductImage.Meta.ordering): no query.
    images = list(product.images.all())
    if not images and product.parent_id is not None:
        images = list(product.parent.images.all())
    if not images:
        return ""
    try:
        return links.absolute(images[0].original.url)
    except ValueError:  # the row has no file
        return ""


def _positive_int(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return 1
    return number if number > 0 else 1


# --- step and variant content ------------------------------------------------------------------

#: The parts a variant's ``subject`` replaces (whichever the channel has).
SUBJECT_PARTS = ("subject.txt", "title.txt")


def channel_parts(content: Any, backend: BaseChannel) -> dict[str, str]:
    """The parts of ``content`` (``{"<channel>": {"<part>": "<source>"}}``) for this channel:
    by channel name, else by consent channel (``"push"`` covers every push channel)."""
    if not isinstance(content, dict):
        return {}
    parts = content.get(backend.name) or content.get(backend.consent_channel) or {}
    return dict(parts) if isinstance(parts, dict) else {}


def inline_parts(
    backend: BaseChannel, step: Step, variant: Variant | None = None
) -> dict[str, str] | None:
    """The inline template parts a message of ``step`` (and ``variant``) renders on this
    channel: the step's, then the variant's parts and subject over them; None when none."""
    parts = channel_parts(step.content, backend)
    if variant is not None:
        parts.update(channel_parts(variant.content, backend))
        if variant.subject:
            for part in SUBJECT_PARTS:
                if part in backend.template_parts:
                    parts[part] = variant.subject
    return parts or None


def validate_variant(variant: Variant) -> None:
    """Raise ValidationError (by field) unless the variant can be rendered and sent: its step
    is set, its channel is configured (or empty, or "best"), its content is
    ``{"<channel>": {"<part>": "<template source>"}}`` for configured channels, and its
    subject and parts are valid templates."""
    from ..channels.registry import get_channels

    errors: dict[str, list[str]] = {}
    try:
        channels = get_channels()
    except ConfigurationError as exc:  # shown on the form, not a server error
        raise ValidationError(
            _("The channels are misconfigured (OMNICHANNEL['CHANNELS']): %(error)s")
            % {"error": exc}
        ) from exc
    consent_channels = {backend.consent_channel for backend in channels.values()}
    if variant.channel and variant.channel != BEST_CHANNEL and variant.channel not in channels:
        errors.setdefault("channel", []).append(
            _("Unknown channel %(name)r; configured: %(known)s, or best, or empty.")
            % {"name": variant.channel, "known": ", ".join(sorted(channels))}
        )
    content = variant.content
    if content in (None, ""):
        content = {}
    if not isinstance(content, dict) or not all(
        isinstance(parts, dict) and all(isinstance(v, str) for v in parts.values())
        for parts in content.values()
    ):
        errors.setdefault("content", []).append(
            _('Inline content must be {"<channel>": {"<part>": "<text>"}}.')
        )
    else:
        for name, parts in content.items():
            if name not in channels and name not in consent_channels:
                errors.setdefault("content", []).append(
                    _("Unknown channel %(name)r in the content; configured: %(known)s.")
                    % {"name": name, "known": ", ".join(sorted(channels))}
                )
                continue
            for part, source in parts.items():
                problem = _template_problem(source)
                if problem:
                    errors.setdefault("content", []).append(f"{name} / {part}: {problem}")
    problem = _template_problem(variant.subject or "")
    if problem:
        errors.setdefault("subject", []).append(problem)
    if errors:
        raise ValidationError(errors)


def _template_problem(source: str) -> str:
    """Why ``source`` is not a valid template ('' when it is)."""
    try:
        engines["django"].from_string(source)
    except TemplateSyntaxError as exc:
        return _("Template error: %(error)s") % {"error": exc}
    return ""


# --- rendering engine messages ------------------------------------------------------------------


class _Skip(Exception):
    """A message that must not go: ``status`` (failed or suppressed) and the reason."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def render_pending_messages(
    backend: BaseChannel, messages: Sequence[Message], *, now: datetime
) -> list[Message]:
    """Render the messages of ``messages`` that need it; return the ones that may be sent.

    Messages that need no rendering are returned as they are. A message that cannot be rendered
    (a template error, its step deleted) is recorded failed with the reason; one whose items
    were all bought or whose enrollment ended is recorded suppressed. Neither is returned, and
    neither stops the others.
    """
    pending = [m for m in messages if m.needs_render]
    if not pending:
        return list(messages)
    try:
        contexts = build_contexts(pending)
    except Exception as exc:  # a trigger's or host's bug fails the batch's messages
        logger.exception("could not build the content of %d messages", len(pending))
        reason = f"could not build the message content: {type(exc).__name__}: {exc}"
        contexts = {m.pk: _Skip(MessageStatus.FAILED, reason) for m in pending}

    rendered: list[Message] = []
    for message in pending:
        context = contexts.get(message.pk)
        try:
            if isinstance(context, _Skip):
                raise context
            if context is None:
                raise _Skip(MessageStatus.FAILED, "no content was built for this message")
            _render_one(backend, message, context)
        except _Skip as skip:
            _give_up(message, skip.status, skip.reason, now=now)
            continue
        except Exception as exc:  # noqa: BLE001  (one template's error fails only its message)
            template = context["step"].template
            reason = (
                f"could not render template {template!r} for channel {backend.name!r}: "
                f"{type(exc).__name__}: {exc}"
            )
            logger.warning("message %s: %s", message.pk, reason)
            _give_up(message, MessageStatus.FAILED, reason, now=now)
            continue
        rendered.append(message)
    if rendered:
        Message.objects.bulk_update(rendered, list(RENDERED_FIELDS))
    kept = {m.pk for m in rendered}
    return [m for m in messages if not m.needs_render or m.pk in kept]


def _render_one(backend: BaseChannel, message: Message, extra: dict[str, Any]) -> None:
    """Render like ``queue_message``: in the person's language, then units and cost."""
    from ..channels.sending import message_context

    step: Step = extra["step"]
    profile = message.profile
    language = message.language or profile.language or settings.LANGUAGE_CODE
    inline = inline_parts(backend, step, extra.get("variant"))
    with translation.override(language):
        backend.render(
            message,
            message_context(message, profile, backend, extra),
            template=step.template,
            inline=inline,
        )
    message.language = language
    message.template = message.template or step.template
    message.currency = backend.currency
    message.units = backend.units(message)
    message.cost = backend.cost_of(message).quantize(Decimal("0.00001"))
    message.needs_render = False


def _give_up(message: Message, status: str, reason: str, *, now: datetime) -> None:
    Message.objects.filter(pk=message.pk).update(claimed_by="", lease_expires_at=None)
    record_status(message, status, at=now, source="omnichannel", error=reason)


def build_contexts(messages: Sequence[Message]) -> dict[int, dict[str, Any] | _Skip]:
    """Message pk -> its template context (beyond the common one), or why it cannot go.

    Loads the batch's steps, enrollments, trigger data, current items, products, orders and
    wish lists, and computes recommendations, with a fixed number of queries.
    """
    steps = Step.objects.select_related("campaign").in_bulk(
        {m.step_id for m in messages if m.step_id}
    )
    enrollments = Enrollment.objects.select_related("campaign").in_bulk(
        {m.enrollment_id for m in messages if m.enrollment_id}
    )
    variants = Variant.objects.in_bulk({m.variant_id for m in messages if m.variant_id})
    profiles = {m.profile_id: m.profile for m in messages if m.profile_id}
    for enrollment in enrollments.values():
        # Already loaded with the messages: no query per enrollment in templates or triggers.
        if enrollment.profile_id in profiles:
            enrollment.profile = profiles[enrollment.profile_id]

    skips: dict[int, _Skip] = {}
    live: dict[int, Enrollment] = {}
    for message in messages:
        skip = _why_not(message, steps, enrollments)
        if skip is not None:
            skips[message.pk] = skip
        else:
            live[message.enrollment_id] = enrollments[message.enrollment_id]  # type: ignore[index]

    raw, broken = _trigger_data(list(live.values()))
    remaining = _remaining([e for pk, e in live.items() if pk not in broken], broken)
    items_of: dict[int, list[int]] = {}
    for pk in live:
        found = remaining.get(pk)
        if pk in broken:
            continue
        if found is None:  # not an item reminder: the trigger's items, if any
            items_of[pk] = [int(pid) for pid in raw.get(pk, {}).get("items", None) or []]
        elif isinstance(found, list):
            items_of[pk] = [int(pid) for pid in found]
        else:
            label = ExitReason(found).label if found in ExitReason.values else found
            broken[pk] = _Skip(
                MessageStatus.SUPPRESSED, f"nothing left to remind about: {label} ({found})"
            )
    for pk in broken:
        live.pop(pk, None)

    picks = _recommend(live, items_of)
    product_ids = {pid for ids in items_of.values() for pid in ids}
    product_ids |= {pid for ids in picks.values() for pid in ids}
    catalogue = {item["product_id"]: item for item in items_for(product_ids)}
    orders = _orders({raw.get(pk, {}).get("order_id") for pk in live})
    wishlist_keys = _wishlist_keys({raw.get(pk, {}).get("wishlist_id") for pk in live})
    limit = int(app_settings.RECOMMENDATIONS_LIMIT)

    contexts: dict[int, dict[str, Any] | _Skip] = {}
    for message in messages:
        if message.pk in skips:
            contexts[message.pk] = skips[message.pk]
            continue
        pk = message.enrollment_id
        if pk in broken:
            contexts[message.pk] = broken[pk]
            continue
        enrollment = live[pk]  # type: ignore[index]
        data = dict(raw.get(pk, {}))  # type: ignore[arg-type]
        quantities = data.pop("quantities", None) or {}
        data.pop("items", None)
        items = [
            _with_quantity(catalogue[pid], quantities)
            for pid in items_of.get(pk, [])  # type: ignore[arg-type]
            if pid in catalogue
        ]
        suggested = [
            catalogue[pid]
            for pid in picks.get(pk, [])  # type: ignore[arg-type]
            if pid in catalogue and catalogue[pid]["available"]
        ][:limit]
        context: dict[str, Any] = {
            **data,
            "campaign": enrollment.campaign,
            "step": steps[message.step_id],  # type: ignore[index]
            # A variant deleted since (SET_NULL races the send) falls back to the step's content.
            "variant": variants.get(message.variant_id),  # type: ignore[arg-type]
            "enrollment": enrollment,
            "items": items,
            "item": items[0] if items else None,
            **_total(items),
            "recommendations": suggested,
            "order": orders.get(_int_or_none(data.get("order_id"))),
            "restore_url": "",
            "wishlist_url": "",
        }
        if data.get("basket_id"):
            context["restore_url"] = links.basket_restore_url(
                int(data["basket_id"]), message.profile, message=message
            )
            context["basket_url"] = context["restore_url"]
        key = wishlist_keys.get(_int_or_none(data.get("wishlist_id")))
        if key:
            context["wishlist_url"] = links.absolute(
                reverse("customer:wishlists-detail", kwargs={"key": key})
            )
        context["action_url"] = (
            context["restore_url"]
            or context["wishlist_url"]
            or (items[0]["url"] if items else "")
            or links.site_url() + "/"
        )
        contexts[message.pk] = context
    return contexts


def _why_not(
    message: Message, steps: Mapping[int, Step], enrollments: Mapping[int, Enrollment]
) -> _Skip | None:
    if message.profile is None:
        return _Skip(MessageStatus.SUPPRESSED, "the person's profile was erased")
    if message.step_id not in steps:
        return _Skip(MessageStatus.FAILED, "its campaign step was deleted: nothing to render")
    if message.enrollment_id not in enrollments:
        return _Skip(MessageStatus.FAILED, "its enrollment was deleted: nothing to render")
    enrollment = enrollments[message.enrollment_id]  # type: ignore[index]
    if enrollment.state == EnrollmentState.EXITED:
        reason = enrollment.get_exit_reason_display() or "exited"
        return _Skip(
            MessageStatus.SUPPRESSED, f"the enrollment ended before the message went: {reason}"
        )
    return None


def _trigger_data(
    enrollments: list[Enrollment],
) -> tuple[dict[int, dict[str, Any]], dict[int, _Skip]]:
    """Each trigger's ``template_context`` for its enrollments; a trigger that raises fails
    only its own enrollments' messages."""
    by_trigger: dict[str, list[Enrollment]] = defaultdict(list)
    for enrollment in enrollments:
        key = enrollment.campaign.trigger
        if key and key in registry:
            by_trigger[key].append(enrollment)
    raw: dict[int, dict[str, Any]] = {}
    broken: dict[int, _Skip] = {}
    for key, group in by_trigger.items():
        try:
            found = registry[key].template_context(group) or {}
        except Exception as exc:  # a trigger's bug: its messages fail, logged
            logger.exception("trigger %s failed to give template data", key)
            reason = f"trigger {key!r} failed to give template data: {type(exc).__name__}: {exc}"
            broken.update({e.pk: _Skip(MessageStatus.FAILED, reason) for e in group})
            continue
        raw.update({pk: dict(value or {}) for pk, value in found.items()})
    return raw, broken


def _remaining(enrollments: list[Enrollment], broken: dict[int, _Skip]) -> dict[int, Any]:
    """The items each item reminder still reminds about (``goals.remaining_items``: bought
    ones dropped); a failure fails the item reminders' messages."""
    if not enrollments:
        return {}
    try:
        return dict(_remaining_items(enrollments))
    except Exception as exc:  # a trigger's current_items broke: those fail
        logger.exception(
            "could not work out the remaining items of %d enrollments", len(enrollments)
        )
        reason = f"could not work out the items still to remind about: {type(exc).__name__}: {exc}"
        for enrollment in enrollments:
            trigger = _trigger_of(enrollment)
            if trigger is not None and trigger.reminds_items:
                broken[enrollment.pk] = _Skip(MessageStatus.FAILED, reason)
        return {}


def _trigger_of(enrollment: Enrollment) -> Any:
    key = enrollment.campaign.trigger
    return registry[key] if key and key in registry else None


def _remaining_items(enrollments: list[Enrollment]) -> dict[int, Any]:
    try:
        from .goals import remaining_items
    except ImportError:  # the engine's goals module not there: the triggers' own view
        remaining: dict[int, Any] = {}
        by_trigger: dict[str, list[Enrollment]] = defaultdict(list)
        for enrollment in enrollments:
            trigger = _trigger_of(enrollment)
            if trigger is not None and trigger.reminds_items:
                by_trigger[trigger.key].append(enrollment)
        for key, group in by_trigger.items():
            found = registry[key].current_items(group)
            for enrollment in group:
                remaining[enrollment.pk] = found.get(enrollment.pk, ExitReason.SUBJECT_GONE)
        return remaining
    return remaining_items(enrollments)


def _recommend(
    live: Mapping[int, Enrollment], items_of: Mapping[int, list[int]]
) -> dict[int, list[int]]:
    """Enrollment pk -> recommended product ids (a few more than shown: some may be
    unavailable when the strategy looks). Seeds: the message's items, else what the person
    bought most recently; never what they bought already."""
    limit = int(app_settings.RECOMMENDATIONS_LIMIT)
    if limit <= 0 or not live:
        return {}
    bought = recommendations.purchases_of({e.profile_id for e in live.values()})
    seeds: dict[int, list[int]] = {}
    exclude: dict[int, set[int]] = {}
    for pk, enrollment in live.items():
        theirs = bought.get(enrollment.profile_id, [])
        seeds[pk] = items_of.get(pk) or theirs[: recommendations.PROFILE_SEEDS]
        exclude[pk] = set(theirs)
    try:
        return recommendations.bought_together_many(seeds, limit=limit * 2, exclude=exclude)
    except Exception:  # recommendations are a bonus: send without them
        logger.exception("recommendations failed for %d messages", len(live))
        return {}


def _with_quantity(item: dict[str, Any], quantities: Mapping[Any, Any]) -> dict[str, Any]:
    pid = item["product_id"]
    quantity = _positive_int(quantities.get(str(pid), quantities.get(pid, 1)))
    price = item["price"]
    return {
        **item,
        "quantity": quantity,
        "line_price": price * quantity if price is not None else None,
    }


def _total(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``items_total`` (sum of line prices; None when one has no price or currencies differ)
    and ``items_currency``."""
    currencies = {item["currency"] for item in items}
    prices = [item["line_price"] for item in items]
    if not items or None in prices or len(currencies) != 1:
        return {"items_total": None, "items_currency": ""}
    return {"items_total": sum(prices, Decimal(0)), "items_currency": currencies.pop()}


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _orders(ids: Iterable[Any]) -> dict[Any, Any]:
    wanted = {i for i in map(_int_or_none, ids) if i}
    if not wanted:
        return {}
    Order = get_model("order", "Order")
    return Order.objects.in_bulk(wanted)


def _wishlist_keys(ids: Iterable[Any]) -> dict[Any, str]:
    wanted = {i for i in map(_int_or_none, ids) if i}
    if not wanted:
        return {}
    WishList = get_model("wishlists", "WishList")
    return dict(WishList.objects.filter(pk__in=wanted).values_list("pk", "key"))
