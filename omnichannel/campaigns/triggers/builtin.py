"""The built-in triggers: abandoned basket and wishlist, post-purchase, welcome, win-back,
browse abandonment and custom events.

Each works on a whole batch (of folded events, of enrollments) with a fixed number of queries,
never one per event or person. Subject keys (stored on ``Enrollment.subject_key``; never change
their shape, existing rows rely on it):

=======================  ==================================================================
``basket:<id>``          abandoned basket: one enrollment per basket
``wishlist:<id>``        abandoned wishlist: one per wishlist
``order:<id>``           post-purchase, online order (``order:event-<id>`` for offline ones)
``welcome``              welcome: once per person
``winback:<YYYY-MM-DD>`` win-back: the day of the scan that found the person
``browse:<product id>``  browse abandonment: one per product
``event`` / ``event:<n>`` custom event: once per person, or once per ``reenroll_after`` period
=======================  ==================================================================
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from django.core.exceptions import ValidationError
from django.db.models import Count, Exists, Max, OuterRef, Q
from django.utils.translation import gettext_lazy as _
from oscar.core.loading import get_model

from ...profiles.models import BASKET_ACTIVITY_TYPES, Event, EventType
from ..models import Enrollment, ExitReason
from .base import EnrollmentSpec, Option, Trigger
from .registry import registry

if TYPE_CHECKING:
    from ...segments.models import Segment
    from ..models import Campaign

logger = logging.getLogger("omnichannel.campaigns")

Basket = get_model("basket", "Basket")
BasketLine = get_model("basket", "Line")
WishListLine = get_model("wishlists", "Line")
Product = get_model("catalogue", "Product")

#: Profile ids read per query by scans (keyset pagination over the profile table).
SCAN_CHUNK_SIZE = 2000

Items = tuple[list[int], dict[str, int]]


def _items(rows: Iterable[tuple[int | None, int]]) -> Items:
    """(product ids in first-seen order, {str(product id): total quantity}) of line rows."""
    items: list[int] = []
    quantities: dict[str, int] = {}
    for product_id, quantity in rows:
        if product_id is None:
            continue  # a wishlist line whose product was deleted, an unknown offline product
        key = str(product_id)
        if key not in quantities:
            items.append(product_id)
            quantities[key] = 0
        quantities[key] += int(quantity or 0)
    return items, quantities


def _context_id(enrollment: Enrollment, name: str, prefix: str) -> int | None:
    """An id the trigger stored in the enrollment's context, else read back from its subject."""
    value = (enrollment.context or {}).get(name)
    if value is None and enrollment.subject_key.startswith(prefix):
        value = enrollment.subject_key[len(prefix) :]
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class EventTrigger(Trigger):
    """Base of the built-in event triggers: drops events that are history, not news.

    The fold also folds history (``omnichannel_rebuild_profiles --backfill`` records an event
    for every past registration and order, a shop's app uploads a week of offline events): an
    event whose first step would have been due more than ``stale_after`` ago enrolls nobody,
    or a backfill would welcome every customer the shop ever had.
    """

    stale_after: ClassVar[timedelta] = timedelta(days=7)

    def delay(self, campaign: Campaign) -> timedelta:
        """How long after the event the first step is due."""
        return timedelta(0)

    def fresh(self, campaign: Campaign, events: Iterable[Event], *, now: datetime) -> list[Event]:
        """The events with a profile whose first step is not long overdue."""
        oldest = now - self.stale_after - self.delay(campaign)
        return [e for e in events if e.profile_id is not None and e.occurred_at >= oldest]


def _latest_per_subject(
    events: Iterable[Event], subject: Callable[[Event], Any]
) -> dict[tuple[int, Any], datetime]:
    """(profile, subject(event)) -> the latest time it happened; events without one skipped."""
    latest: dict[tuple[int, Any], datetime] = {}
    for event in events:
        value = subject(event)
        if value is None:
            continue
        key = (event.profile_id, value)
        if key not in latest or event.occurred_at > latest[key]:
            latest[key] = event.occurred_at
    return latest


# --- abandoned basket ----------------------------------------------------------------------------


@registry.register
class AbandonedBasketTrigger(EventTrigger):
    """Someone changed a basket and did not check out: remind them after ``delay_minutes``.

    Every basket change (add, quantity change, removal) restarts the timer. The enrollment
    ends as converted when the basket is submitted, and as gone when it is emptied, merged
    into another basket (a login) or deleted.
    """

    key = "abandoned_basket"
    label = _("Abandoned basket")
    description = _(
        "A basket changed and was not checked out: the first step goes delay_minutes after "
        "the latest change; each change restarts the timer."
    )
    options = {
        "delay_minutes": Option(60, help="Minutes after the latest basket change."),
    }
    event_types = tuple(str(t) for t in BASKET_ACTIVITY_TYPES)
    reminds_items = True
    #: Baskets that can still be checked out (Oscar's "Saved" holds items for later).
    LIVE_STATUSES = (Basket.OPEN, Basket.SAVED)

    def delay(self, campaign: Campaign) -> timedelta:
        return self.minutes(campaign, "delay_minutes")

    def enrollments_for_events(
        self, campaign: Campaign, events: Sequence[Event], *, now: datetime
    ) -> list[EnrollmentSpec]:
        latest = _latest_per_subject(
            self.fresh(campaign, events, now=now), lambda event: event.basket_id
        )
        if not latest:
            return []
        # One query: a change that emptied or submitted the basket starts no reminder.
        live = set(
            Basket._default_manager.filter(
                pk__in={basket_id for _p, basket_id in latest},
                status__in=self.LIVE_STATUSES,
            )
            .filter(Exists(BasketLine._default_manager.filter(basket_id=OuterRef("pk"))))
            .values_list("pk", flat=True)
        )
        delay = self.delay(campaign)
        return [
            EnrollmentSpec(
                profile_id=profile_id,
                subject_key=f"basket:{basket_id}",
                due_at=at + delay,
                activity_at=at,
                restart=True,
                context={"basket_id": basket_id},
            )
            for (profile_id, basket_id), at in latest.items()
            if basket_id in live
        ]

    def _baskets(self, enrollments: Sequence[Enrollment]) -> dict[int, int | None]:
        return {e.pk: _context_id(e, "basket_id", "basket:") for e in enrollments}

    def _lines(self, basket_ids: Iterable[int]) -> dict[int, Items]:
        """Basket id -> its items and quantities, in Oscar's line order (one query)."""
        rows: dict[int, list[tuple[int, int]]] = {}
        for basket_id, product_id, quantity in (
            BasketLine._default_manager.filter(basket_id__in=set(basket_ids))
            .order_by("basket_id", "date_created", "pk")
            .values_list("basket_id", "product_id", "quantity")
        ):
            rows.setdefault(basket_id, []).append((product_id, quantity))
        return {basket_id: _items(lines) for basket_id, lines in rows.items()}

    def current_items(self, enrollments: Sequence[Enrollment]) -> dict[int, list[int] | ExitReason]:
        """Products in the basket; converted once it was submitted, gone once it is not live.

        Two queries for the whole batch: the baskets' statuses, the open baskets' lines.
        """
        baskets = self._baskets(enrollments)
        status = dict(
            Basket._default_manager.filter(
                pk__in={b for b in baskets.values() if b is not None}
            ).values_list("pk", "status")
        )
        lines = self._lines(b for b, s in status.items() if s in self.LIVE_STATUSES)
        result: dict[int, list[int] | ExitReason] = {}
        for pk, basket_id in baskets.items():
            basket_status = status.get(basket_id)
            if basket_status == Basket.SUBMITTED:
                result[pk] = ExitReason.CONVERTED
            elif basket_status in self.LIVE_STATUSES and lines.get(basket_id, ([], {}))[0]:
                result[pk] = lines[basket_id][0]
            else:  # deleted, merged into another basket, frozen, or emptied
                result[pk] = ExitReason.SUBJECT_GONE
        return result

    def template_context(self, enrollments: Sequence[Enrollment]) -> dict[int, dict[str, Any]]:
        """``basket_id``, ``items`` (product ids in line order), ``quantities`` (one query)."""
        baskets = self._baskets(enrollments)
        lines = self._lines(b for b in baskets.values() if b is not None)
        context: dict[int, dict[str, Any]] = {}
        for pk, basket_id in baskets.items():
            items, quantities = lines.get(basket_id, ([], {})) if basket_id else ([], {})
            context[pk] = {"basket_id": basket_id, "items": items, "quantities": quantities}
        return context


# --- abandoned wishlist --------------------------------------------------------------------------


@registry.register
class AbandonedWishlistTrigger(EventTrigger):
    """Someone put products on a wishlist and did not buy them: remind them after ``days``.

    Each product added restarts the timer; products bought since are dropped from the reminder
    (by the engine) and an emptied or deleted wishlist ends it.
    """

    key = "abandoned_wishlist"
    label = _("Abandoned wishlist")
    description = _(
        "Products were added to a wishlist: the first step goes the given number of days "
        "after the latest addition, about the products still on it and not bought."
    )
    options = {"days": Option(3, help="Days after the latest product added.")}
    event_types = (str(EventType.WISHLIST_LINE_ADDED),)
    reminds_items = True

    def delay(self, campaign: Campaign) -> timedelta:
        return timedelta(days=int(self.option(campaign, "days")))

    def enrollments_for_events(
        self, campaign: Campaign, events: Sequence[Event], *, now: datetime
    ) -> list[EnrollmentSpec]:
        events = self.fresh(campaign, events, now=now)
        found = self._wishlists_of(events)
        latest = _latest_per_subject(events, lambda event: found.get(event.pk))
        delay = self.delay(campaign)
        return [
            EnrollmentSpec(
                profile_id=profile_id,
                subject_key=f"wishlist:{wishlist_id}",
                due_at=at + delay,
                activity_at=at,
                restart=True,
                context={"wishlist_id": wishlist_id},
            )
            for (profile_id, wishlist_id), at in latest.items()
        ]

    def _wishlists_of(self, events: Sequence[Event]) -> dict[int, int]:
        """Event pk -> wishlist id: the recorder stores it in the payload; events recorded
        without it (older, or by other code) are matched by owner and product, one query."""
        found: dict[int, int] = {}
        missing: list[Event] = []
        for event in events:
            value = (event.payload or {}).get("wishlist_id")
            if isinstance(value, int) and not isinstance(value, bool):
                found[event.pk] = value
            elif event.user_id is not None and event.product_id is not None:
                missing.append(event)
        if missing:
            by_owner_product: dict[tuple[int, int], int] = {}
            for owner_id, product_id, wishlist_id in (
                WishListLine._default_manager.filter(
                    wishlist__owner_id__in={e.user_id for e in missing},
                    product_id__in={e.product_id for e in missing},
                )
                .order_by("wishlist_id")
                .values_list("wishlist__owner_id", "product_id", "wishlist_id")
            ):
                by_owner_product.setdefault((owner_id, product_id), wishlist_id)
            for event in missing:
                wishlist_id = by_owner_product.get((event.user_id, event.product_id))
                if wishlist_id is not None:
                    found[event.pk] = wishlist_id
        return found

    def _wishlists(self, enrollments: Sequence[Enrollment]) -> dict[int, int | None]:
        return {e.pk: _context_id(e, "wishlist_id", "wishlist:") for e in enrollments}

    def _lines(self, wishlist_ids: Iterable[int]) -> dict[int, Items]:
        rows: dict[int, list[tuple[int | None, int]]] = {}
        for wishlist_id, product_id, quantity in (
            WishListLine._default_manager.filter(wishlist_id__in=set(wishlist_ids))
            .order_by("wishlist_id", "pk")
            .values_list("wishlist_id", "product_id", "quantity")
        ):
            rows.setdefault(wishlist_id, []).append((product_id, quantity))
        return {wishlist_id: _items(lines) for wishlist_id, lines in rows.items()}

    def current_items(self, enrollments: Sequence[Enrollment]) -> dict[int, list[int] | ExitReason]:
        """Products on the wishlist (one query); gone once it is empty or deleted."""
        wishlists = self._wishlists(enrollments)
        lines = self._lines(w for w in wishlists.values() if w is not None)
        result: dict[int, list[int] | ExitReason] = {}
        for pk, wishlist_id in wishlists.items():
            items = lines.get(wishlist_id, ([], {}))[0] if wishlist_id is not None else []
            result[pk] = items or ExitReason.SUBJECT_GONE
        return result

    def template_context(self, enrollments: Sequence[Enrollment]) -> dict[int, dict[str, Any]]:
        """``wishlist_id``, ``items`` (product ids, in the order added), ``quantities``."""
        wishlists = self._wishlists(enrollments)
        lines = self._lines(w for w in wishlists.values() if w is not None)
        context: dict[int, dict[str, Any]] = {}
        for pk, wishlist_id in wishlists.items():
            items, quantities = lines.get(wishlist_id, ([], {})) if wishlist_id else ([], {})
            context[pk] = {"wishlist_id": wishlist_id, "items": items, "quantities": quantities}
        return context


# --- post-purchase -------------------------------------------------------------------------------


@registry.register
class PostPurchaseTrigger(EventTrigger):
    """An order was placed, online or in a store: follow up ``delay_hours`` later.

    The order's lines are kept in the enrollment's context (the event has them, online and
    offline alike), so the templates cost no query. Another order after enrolling converts.
    """

    key = "post_purchase"
    label = _("After a purchase")
    description = _(
        "An order was placed online or offline: the first step goes delay_hours later "
        "(a review request, care tips, a cross-sell)."
    )
    options = {"delay_hours": Option(24, help="Hours after the order.")}
    event_types = (str(EventType.ORDER_PLACED),)
    order_converts = True

    def delay(self, campaign: Campaign) -> timedelta:
        return timedelta(hours=int(self.option(campaign, "delay_hours")))

    def enrollments_for_events(
        self, campaign: Campaign, events: Sequence[Event], *, now: datetime
    ) -> list[EnrollmentSpec]:
        delay = self.delay(campaign)
        specs = []
        for event in self.fresh(campaign, events, now=now):
            payload = event.payload or {}
            lines = payload.get("lines") if isinstance(payload.get("lines"), list) else []
            items, quantities = _items(
                (line.get("product_id"), line.get("quantity", 1))
                for line in lines
                if isinstance(line, dict)
            )
            # An offline order has no Oscar order: its event is the order.
            subject = f"order:{event.order_id}" if event.order_id else f"order:event-{event.pk}"
            specs.append(
                EnrollmentSpec(
                    profile_id=event.profile_id,
                    subject_key=subject,
                    due_at=event.occurred_at + delay,
                    activity_at=event.occurred_at,
                    context={
                        "order_id": event.order_id,
                        "event_id": event.pk,
                        "number": str(payload.get("number", "")),
                        "source": event.source,
                        "items": items,
                        "quantities": quantities,
                    },
                )
            )
        return specs

    def template_context(self, enrollments: Sequence[Enrollment]) -> dict[int, dict[str, Any]]:
        """``order_id`` (None for an offline order), ``number``, ``items``, ``quantities``."""
        context: dict[int, dict[str, Any]] = {}
        for enrollment in enrollments:
            data = enrollment.context or {}
            context[enrollment.pk] = {
                "order_id": data.get("order_id"),
                "number": data.get("number", ""),
                "items": list(data.get("items", [])),
                "quantities": dict(data.get("quantities", {})),
            }
        return context


# --- welcome -------------------------------------------------------------------------------------


@registry.register
class WelcomeTrigger(EventTrigger):
    """Someone registered: welcome them ``delay_minutes`` later, once per person."""

    key = "welcome"
    label = _("Welcome")
    description = _("A customer registered: the first step goes delay_minutes later, once.")
    options = {"delay_minutes": Option(0, help="Minutes after registering.")}
    event_types = (str(EventType.USER_REGISTERED),)

    def delay(self, campaign: Campaign) -> timedelta:
        return self.minutes(campaign, "delay_minutes")

    def enrollments_for_events(
        self, campaign: Campaign, events: Sequence[Event], *, now: datetime
    ) -> list[EnrollmentSpec]:
        delay = self.delay(campaign)
        return [
            EnrollmentSpec(
                profile_id=event.profile_id,
                subject_key="welcome",
                due_at=event.occurred_at + delay,
                activity_at=event.occurred_at,
            )
            for event in self.fresh(campaign, events, now=now)
        ]


# --- win-back ------------------------------------------------------------------------------------


def find_segment(reference: str | int) -> Segment | None:
    """The segment a win-back option names: an id (int or digits) or a slug (one query)."""
    from ...segments.models import Segment

    if isinstance(reference, int):
        return Segment.objects.filter(pk=reference).first()
    match = Q(slug=reference)
    if reference.isdigit():
        match |= Q(pk=int(reference))
    found = list(Segment.objects.filter(match)[:2])
    # A slug made only of digits wins over the id it spells.
    return next((s for s in found if s.slug == reference), found[0] if found else None)


@registry.register
class WinBackTrigger(Trigger):
    """People in a segment (e.g. "drifting customers") get a win-back cascade.

    A scan (hourly) enrolls every member of ``segment`` who was not enrolled in this campaign
    within ``cooldown_days``: one query per 2,000 members with NOT EXISTS on the enrollments,
    so a million profiles stream through without holding their ids in memory.
    """

    key = "win_back"
    label = _("Win-back (segment members)")
    description = _(
        "Members of a segment (by id or slug) are enrolled by a periodic scan, each at most "
        "once per cooldown_days."
    )
    options = {
        "segment": Option(None, type=object, required=True, help="Segment id or slug."),
        "cooldown_days": Option(90, help="Days before a person can be won back again."),
    }
    scans = True
    scan_interval = 3600

    def validate_options(self, options: dict[str, Any]) -> dict[str, Any]:
        cleaned = super().validate_options(options)
        reference = cleaned["segment"]
        if isinstance(reference, bool) or not isinstance(reference, (int, str)):
            raise ValidationError(f"segment: must be a segment id or slug, not {reference!r}")
        if isinstance(reference, str) and not reference.strip():
            raise ValidationError("segment: must be a segment id or slug, not an empty text")
        if find_segment(reference) is None:
            raise ValidationError(f"segment: no segment with id or slug {reference!r}")
        return cleaned

    def scan(self, campaign: Campaign, *, now: datetime) -> Iterator[EnrollmentSpec]:
        """Specs for the segment's members not enrolled within the cooldown (a generator)."""
        reference = self.option(campaign, "segment")
        segment = find_segment(reference) if isinstance(reference, (int, str)) else None
        if segment is None:
            logger.error(
                "campaign %s (win_back): segment %r does not exist; nobody enrolled",
                campaign.pk,
                reference,
            )
            return iter(())
        cooldown = timedelta(days=int(self.option(campaign, "cooldown_days")))
        recently = Enrollment.objects.filter(
            campaign=campaign, profile_id=OuterRef("pk"), enrolled_at__gt=now - cooldown
        )
        members = segment.queryset(now=now).filter(~Exists(recently))
        subject = f"winback:{now:%Y-%m-%d}"
        return (
            EnrollmentSpec(
                profile_id=profile_id,
                subject_key=subject,
                due_at=now,
                activity_at=now,
                context={"segment_id": segment.pk},
            )
            for profile_id in _ids_in_chunks(members)
        )


def _ids_in_chunks(queryset: Any) -> Iterator[int]:
    """The queryset's primary keys in order, ``SCAN_CHUNK_SIZE`` per query (keyset pages).

    No server-side cursor: the caller writes between pages, and a page's query sees the rows
    written before it (NOT EXISTS then skips the people just enrolled).
    """
    last = None
    while True:
        page = queryset.order_by("pk")
        if last is not None:
            page = page.filter(pk__gt=last)
        ids = list(page.values_list("pk", flat=True)[:SCAN_CHUNK_SIZE])
        yield from ids
        if len(ids) < SCAN_CHUNK_SIZE:
            return
        last = ids[-1]


# --- browse abandonment --------------------------------------------------------------------------


@registry.register
class BrowseAbandonmentTrigger(EventTrigger):
    """Someone viewed a product ``views`` times within ``window_days`` and never put it in a
    basket: remind them of it ``delay_minutes`` after the latest view.

    A variant added to a basket counts for its parent product (views are of the parent's
    page). The enrollment ends as gone once they add the product to a basket.
    """

    key = "browse_abandonment"
    label = _("Browse abandonment")
    description = _(
        "A product was viewed at least `views` times within window_days and not added to a "
        "basket: the first step goes delay_minutes after the latest view."
    )
    options = {
        "views": Option(3, minimum=1, help="Views of one product that count as interest."),
        "window_days": Option(7, minimum=1, help="Days the views are counted over."),
        "delay_minutes": Option(120, help="Minutes after the latest view."),
    }
    event_types = (str(EventType.PRODUCT_VIEWED),)
    reminds_items = True

    def delay(self, campaign: Campaign) -> timedelta:
        return self.minutes(campaign, "delay_minutes")

    def enrollments_for_events(
        self, campaign: Campaign, events: Sequence[Event], *, now: datetime
    ) -> list[EnrollmentSpec]:
        pairs = _latest_per_subject(
            self.fresh(campaign, events, now=now), lambda event: event.product_id
        )
        if not pairs:
            return []
        since = now - timedelta(days=int(self.option(campaign, "window_days")))
        profiles = {profile_id for profile_id, _p in pairs}
        products = {product_id for _p, product_id in pairs}
        # One grouped query: views per (person, product) in the window. It spans every pair of
        # the batch's people and products; the ones not in the batch are ignored below.
        views = {
            (row["profile_id"], row["product_id"]): (row["views"], row["latest"])
            for row in Event.objects.filter(
                type=EventType.PRODUCT_VIEWED,
                profile_id__in=profiles,
                product_id__in=products,
                occurred_at__gte=since,
                occurred_at__lte=now,
            )
            .values("profile_id", "product_id")
            .annotate(views=Count("pk"), latest=Max("occurred_at"))
            .order_by()
        }
        added = _added_to_basket(profiles, products, since=since)
        needed = int(self.option(campaign, "views"))
        delay = self.delay(campaign)
        specs = []
        for pair in pairs:
            count, latest = views.get(pair, (0, None))
            if count < needed or latest is None or pair in added:
                continue
            profile_id, product_id = pair
            specs.append(
                EnrollmentSpec(
                    profile_id=profile_id,
                    subject_key=f"browse:{product_id}",
                    due_at=latest + delay,
                    activity_at=latest,
                    restart=True,
                    context={"product_id": product_id, "views": count, "since": since.isoformat()},
                )
            )
        return specs

    def current_items(self, enrollments: Sequence[Enrollment]) -> dict[int, list[int] | ExitReason]:
        """[the product]; gone once it is in a basket or deleted (two queries)."""
        if not enrollments:
            return {}
        products = {e.pk: _context_id(e, "product_id", "browse:") for e in enrollments}
        since = {e.pk: self._since(e) for e in enrollments}
        known = {p for p in products.values() if p is not None}
        existing = set(Product._default_manager.filter(pk__in=known).values_list("pk", flat=True))
        added = _added_to_basket(
            {e.profile_id for e in enrollments},
            known,
            since=min(since.values()),
        )
        result: dict[int, list[int] | ExitReason] = {}
        for enrollment in enrollments:
            product_id = products[enrollment.pk]
            added_at = added.get((enrollment.profile_id, product_id))
            if product_id not in existing or (
                added_at is not None and added_at >= since[enrollment.pk]
            ):
                result[enrollment.pk] = ExitReason.SUBJECT_GONE
            else:
                result[enrollment.pk] = [product_id]  # type: ignore[list-item]  (in existing)
        return result

    def template_context(self, enrollments: Sequence[Enrollment]) -> dict[int, dict[str, Any]]:
        """``product_id``, ``items`` ([the product]), ``views`` (no query)."""
        context: dict[int, dict[str, Any]] = {}
        for enrollment in enrollments:
            product_id = _context_id(enrollment, "product_id", "browse:")
            context[enrollment.pk] = {
                "product_id": product_id,
                "items": [product_id] if product_id is not None else [],
                "views": (enrollment.context or {}).get("views"),
            }
        return context

    def _since(self, enrollment: Enrollment) -> datetime:
        """Start of the window the enrollment's views were counted in."""
        value = (enrollment.context or {}).get("since")
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value)
            except ValueError:
                pass
        return enrollment.enrolled_at - timedelta(days=int(self.options["window_days"].default))


def _added_to_basket(
    profiles: set[int], products: set[int], *, since: datetime
) -> dict[tuple[int, int], datetime]:
    """(profile, product) -> latest basket add since ``since``, a variant counting for its
    parent (one query)."""
    added: dict[tuple[int, int], datetime] = {}
    if not profiles or not products:
        return added
    for profile_id, product_id, parent_id, at in Event.objects.filter(
        Q(product_id__in=products) | Q(product__parent_id__in=products),
        type=EventType.BASKET_LINE_ADDED,
        profile_id__in=profiles,
        occurred_at__gte=since,
    ).values_list("profile_id", "product_id", "product__parent_id", "occurred_at"):
        for product in (product_id, parent_id):
            key = (profile_id, product)
            if product is not None and (key not in added or at > added[key]):
                added[key] = at
    return added


# --- custom event --------------------------------------------------------------------------------


@registry.register
class CustomEventTrigger(EventTrigger):
    """Any event type, built-in or the shop's own (``event_type``), enrolls its person.

    Once per person when the campaign's ``reenroll_after`` is empty (subject ``event``).
    Otherwise time is cut into periods of ``reenroll_after`` counted from the Unix epoch and
    the subject is ``event:<period number>`` = floor(occurred_at / reenroll_after); together
    with the enrolling rule (nobody again within ``reenroll_after`` of their last enrollment)
    that is at most one enrollment per ``reenroll_after``. A ``reenroll_after`` of zero enrolls
    on every event (subject ``event:id<event pk>``).
    """

    key = "custom_event"
    label = _("Custom event")
    description = _(
        "An event of the given type (e.g. loyalty_tier_reached, sent through the API) "
        "enrolls its person; again after the campaign's re-enroll period, if set."
    )
    options = {
        "event_type": Option("", type=str, required=True, help="The event type, e.g. app_opened."),
        "delay_minutes": Option(0, help="Minutes after the event."),
    }
    #: Every event type: ``enroll_from_events`` passes every folded event.
    event_types = ("*",)

    def validate_options(self, options: dict[str, Any]) -> dict[str, Any]:
        cleaned = super().validate_options(options)
        if len(cleaned["event_type"]) > Event._meta.get_field("type").max_length:
            raise ValidationError("event_type: at most 64 characters")
        return cleaned

    def delay(self, campaign: Campaign) -> timedelta:
        return self.minutes(campaign, "delay_minutes")

    def subject(self, campaign: Campaign, event: Event) -> str:
        period = campaign.reenroll_after
        if period is None:
            return "event"
        if period <= timedelta(0):
            return f"event:id{event.pk}"
        return f"event:{int(event.occurred_at.timestamp() // period.total_seconds())}"

    def enrollments_for_events(
        self, campaign: Campaign, events: Sequence[Event], *, now: datetime
    ) -> list[EnrollmentSpec]:
        wanted = self.option(campaign, "event_type")
        delay = self.delay(campaign)
        once_per_profile = campaign.reenroll_after is None or campaign.reenroll_after > timedelta(0)
        first: dict[Any, Event] = {}
        for event in sorted(
            self.fresh(campaign, (e for e in events if e.type == wanted), now=now),
            key=lambda e: (e.occurred_at, e.pk),
        ):
            # Within one batch a person enrolls once (their earliest event), unless every
            # event enrolls.
            key = event.profile_id if once_per_profile else event.pk
            first.setdefault(key, event)
        return [
            EnrollmentSpec(
                profile_id=event.profile_id,
                subject_key=self.subject(campaign, event),
                due_at=event.occurred_at + delay,
                activity_at=event.occurred_at,
                context={"event_id": event.pk, "event_type": event.type, "payload": event.payload},
            )
            for event in first.values()
        ]

    def template_context(self, enrollments: Sequence[Enrollment]) -> dict[int, dict[str, Any]]:
        """``event`` (the event's payload) and ``event_id`` (no query)."""
        return {
            e.pk: {
                "event": dict((e.context or {}).get("payload") or {}),
                "event_id": (e.context or {}).get("event_id"),
            }
            for e in enrollments
        }
