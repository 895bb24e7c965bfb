"""Receivers for Oscar's and Django's signals: each records at most one event row.

Nothing here may break the shop: Oscar sends ``order_placed`` with a plain ``send()``, so an
exception would abort checkout. Every receiver logs and swallows its errors, and writes in a
savepoint (see ``recording.record_event``). Nothing here talks to the Celery broker: the event
row is the queue, folded into profiles by ``omnichannel.profiles.fold_events``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from django.contrib.auth.signals import user_logged_in
from django.db.models import QuerySet
from django.db.models.signals import post_delete, post_init, post_save
from django.dispatch import receiver
from oscar.core.loading import get_class, get_model

from ..conf import app_settings
from . import context
from .models import EventSource, EventType
from .recording import (
    order_event,
    record_event,
    registration_event,
    save_event,
    savepoint_if_in_transaction,
)

logger = logging.getLogger("omnichannel.profiles")

BasketLine = get_model("basket", "Line")
Basket = get_model("basket", "Basket")
Order = get_model("order", "Order")
WishList = get_model("wishlists", "WishList")
WishListLine = get_model("wishlists", "Line")
basket_addition = get_class("basket.signals", "basket_addition")
order_placed = get_class("order.signals", "order_placed")
product_viewed = get_class("catalogue.signals", "product_viewed")
user_registered = get_class("customer.signals", "user_registered")

#: The view whose adds are recorded by ``basket_addition`` rather than by the line's post_save.
BASKET_ADD_VIEW_NAME = "basket:add"


def never_raises(func: Callable[..., None]) -> Callable[..., None]:
    """Log and swallow any exception: our bookkeeping must never break the shop."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            # Inside a transaction, the whole receiver (its reads too) runs in a savepoint: on
            # PostgreSQL any failed statement would otherwise abort the caller's transaction.
            with savepoint_if_in_transaction():
                func(*args, **kwargs)
        except Exception:  # deliberate (see the module docstring)
            logger.exception("omnichannel receiver %s failed; the shop carries on", func.__name__)

    return wrapper


def _visitor_key(request: Any = None) -> str:
    """The visitor key of ``request``, else of the request being served, else ""."""
    key = getattr(request, "omnichannel_visitor_key", "") if request is not None else ""
    ctx = context.get_current()
    return key or (ctx.visitor_key if ctx else "")


def _in_basket_add_view() -> bool:
    ctx = context.get_current()
    match = getattr(ctx.request, "resolver_match", None) if ctx else None
    return match is not None and match.view_name == BASKET_ADD_VIEW_NAME


def _shopper_of_basket(basket_id: int | None) -> tuple[Any, str]:
    """The request's user and visitor key, if the request is working on its own basket.

    A line can also change because staff deleted a product (the lines cascade) or code ran on
    someone else's basket: then the request's person is not the basket's.
    """
    ctx = context.get_current()
    request_basket = getattr(ctx.request, "_basket_cache", None) if ctx else None
    if ctx is None or basket_id is None or getattr(request_basket, "pk", None) != basket_id:
        return None, ""
    return getattr(ctx.request, "user", None), ctx.visitor_key


def _is_cascade(origin: Any, line_model: type) -> bool:
    """Whether a line goes because something else is deleted (its product, basket or owner).

    That is not a shopper removing an item, and the rows it would name are being deleted in the
    same transaction: an event pointing at them would fail its foreign keys at commit.
    """
    if origin is None:
        return False
    origin_model = origin.model if isinstance(origin, QuerySet) else type(origin)
    return not issubclass(origin_model, line_model)


def _positive_int(value: Any, default: int = 1) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return default
    return number if number > 0 else default


@receiver(basket_addition, dispatch_uid="omnichannel.basket_addition")
@never_raises
def receive_basket_addition(sender: Any, product: Any, user: Any, request: Any, **kwargs: Any):
    basket = getattr(request, "basket", None)
    record_event(
        EventType.BASKET_LINE_ADDED,
        user=user,
        visitor_key=_visitor_key(request),
        basket_id=getattr(basket, "pk", None),
        product_id=product.pk,
        payload={"quantity": _positive_int(request.POST.get("quantity"))},
    )


@receiver(post_init, sender=BasketLine, dispatch_uid="omnichannel.basket_line_init")
def remember_loaded_quantity(sender: Any, instance: Any, **kwargs: Any) -> None:
    # Lets post_save tell a real quantity change from any other save of the line, no query.
    # Read from __dict__: a deferred field (Line.objects.only(...)) must not be loaded here, as
    # loading it would run post_init again.
    instance._omnichannel_quantity = instance.__dict__.get("quantity")
    instance._omnichannel_basket_id = instance.__dict__.get("basket_id")


@receiver(post_save, sender=BasketLine, dispatch_uid="omnichannel.basket_line_saved")
@never_raises
def receive_basket_line_saved(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    if kwargs.get("raw"):
        return
    # A line moved to another basket (Oscar merges the visitor's basket into the customer's
    # at login) is an addition to that basket: its reminder must follow the items.
    loaded_basket_id = instance._omnichannel_basket_id
    moved = not created and loaded_basket_id is not None and loaded_basket_id != instance.basket_id
    previous = None if created or moved else instance._omnichannel_quantity
    instance._omnichannel_quantity = instance.quantity
    instance._omnichannel_basket_id = instance.basket_id
    if previous == instance.quantity or _in_basket_add_view():
        return  # nothing changed, or basket_addition records it with the request's context
    basket = instance.basket
    user, visitor_key = _shopper_of_basket(instance.basket_id)
    record_event(
        EventType.BASKET_LINE_ADDED if created or moved else EventType.BASKET_LINE_CHANGED,
        user=basket.owner if basket.owner_id else user,
        visitor_key=visitor_key,
        basket_id=instance.basket_id,
        product_id=instance.product_id,
        payload={"quantity": instance.quantity, "previous_quantity": previous or 0},
    )


@receiver(post_delete, sender=BasketLine, dispatch_uid="omnichannel.basket_line_deleted")
@never_raises
def receive_basket_line_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    if _is_cascade(kwargs.get("origin"), BasketLine):
        return
    basket = Basket._default_manager.filter(pk=instance.basket_id).only("owner_id").first()
    user, visitor_key = _shopper_of_basket(instance.basket_id)
    record_event(
        EventType.BASKET_LINE_REMOVED,
        user=basket.owner if basket and basket.owner_id else user,
        visitor_key=visitor_key,
        basket_id=basket.pk if basket else None,
        product_id=instance.product_id,
        payload={"quantity": instance.quantity},
    )


@receiver(post_init, sender=Basket, dispatch_uid="omnichannel.basket_init")
def remember_loaded_status(sender: Any, instance: Any, **kwargs: Any) -> None:
    instance._omnichannel_status = instance.status


@receiver(post_save, sender=Basket, dispatch_uid="omnichannel.basket_saved")
@never_raises
def receive_basket_saved(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    previous = instance._omnichannel_status
    instance._omnichannel_status = instance.status
    if kwargs.get("raw") or instance.status != Basket.SUBMITTED or previous == Basket.SUBMITTED:
        return
    if Order._default_manager.filter(basket_id=instance.pk).exists():
        return  # its order_placed event already says the basket was submitted
    record_event(
        EventType.BASKET_SUBMITTED,
        user=instance.owner if instance.owner_id else None,
        visitor_key=_shopper_of_basket(instance.pk)[1],
        basket_id=instance.pk,
    )


@receiver(order_placed, dispatch_uid="omnichannel.order_placed")
@never_raises
def receive_order_placed(sender: Any, order: Any, user: Any, **kwargs: Any) -> None:
    if kwargs.get("raw"):
        return
    save_event(order_event(order, visitor_key=_visitor_key()))


@receiver(post_save, sender=WishListLine, dispatch_uid="omnichannel.wishlist_line_saved")
@never_raises
def receive_wishlist_line_saved(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    if kwargs.get("raw") or not created:
        return
    record_event(
        EventType.WISHLIST_LINE_ADDED,
        user_id=instance.wishlist.owner_id,
        product_id=instance.product_id,
        payload={"wishlist_id": instance.wishlist_id, "title": instance.title},
    )


@receiver(post_delete, sender=WishListLine, dispatch_uid="omnichannel.wishlist_line_deleted")
@never_raises
def receive_wishlist_line_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    if _is_cascade(kwargs.get("origin"), WishListLine):
        return
    # The wishlist's owner, not whoever is logged in (staff deleting a product cascades here).
    owner_id = (
        WishList._default_manager.filter(pk=instance.wishlist_id)
        .values_list("owner_id", flat=True)
        .first()
    )
    record_event(
        EventType.WISHLIST_LINE_REMOVED,
        user_id=owner_id,
        product_id=instance.product_id,
        payload={"wishlist_id": instance.wishlist_id, "title": instance.title},
    )


@receiver(user_registered, dispatch_uid="omnichannel.user_registered")
@never_raises
def receive_user_registered(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    save_event(registration_event(user, visitor_key=_visitor_key(request)))


@receiver(user_logged_in, dispatch_uid="omnichannel.user_logged_in")
@never_raises
def receive_user_logged_in(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    # Django's signal, not Oscar's: it fires for every login (checkout, account page), but a
    # login to the admin site is staff at work, not a customer's visit.
    match = getattr(request, "resolver_match", None)
    if match is not None and match.app_name == "admin":
        return
    email = getattr(user, "email", "")
    record_event(
        EventType.USER_LOGGED_IN,
        source=EventSource.WEB,
        user=user,
        visitor_key=_visitor_key(request),
        identities={"email": email} if email else {},
    )


@receiver(product_viewed, dispatch_uid="omnichannel.product_viewed")
@never_raises
def receive_product_viewed(sender: Any, product: Any, user: Any, request: Any, **kwargs: Any):
    if not app_settings.RECORD_PRODUCT_VIEWS:
        return
    if getattr(request, "omnichannel_visitor_is_new", False) and not user.is_authenticated:
        # A first request without our cookie: a crawler or a client that keeps no cookies
        # would otherwise make one profile per page view. A real visitor's next view counts.
        return
    record_event(
        EventType.PRODUCT_VIEWED,
        user=user,
        visitor_key=_visitor_key(request),
        product_id=product.pk,
    )
