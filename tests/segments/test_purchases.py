"""Purchased products derived from order events: the fold keeps them, merges recompute them."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.utils import timezone
from oscar.test import factories

from omnichannel.profiles.identity import fold_pending_events
from omnichannel.profiles.merge import merge_profiles
from omnichannel.profiles.models import CustomerProfile, Event, EventSource, EventType
from omnichannel.profiles.recording import record_event
from omnichannel.segments.models import PurchasedProduct
from omnichannel.segments.purchases import refresh_purchased_products

from .conftest import NOW, days_ago, one, profile

pytestmark = pytest.mark.django_db


def fold() -> None:
    fold_pending_events(now=timezone.now(), batch_size=500)


def rows() -> set[tuple[int, int, int]]:
    return set(PurchasedProduct.objects.values_list("profile_id", "product_id", "orders_count"))


def test_an_oscar_order_folds_into_purchased_products(django_user_model):
    user = django_user_model.objects.create_user("ann", "ann@example.com", "x")
    kettle = factories.create_product(title="Kettle", price=Decimal("20.00"), num_in_stock=5)
    basket = factories.create_basket(empty=True)
    basket.add_product(kettle, quantity=2)
    factories.create_order(user=user, basket=basket)
    fold()
    buyer = CustomerProfile.objects.get(user=user)
    assert rows() == {(buyer.pk, kettle.pk, 1)}
    assert one("bought", product=kettle.pk, days=1, now=timezone.now()) == {buyer.pk}


def test_offline_orders_count_and_odd_lines_are_skipped():
    toaster = factories.create_product(title="Toaster")
    kettle = factories.create_product(title="Kettle")
    for when, lines in [
        (days_ago(30), [{"product_id": toaster.pk}, {"product_id": kettle.pk}]),
        (days_ago(3), [{"product_id": toaster.pk}, {"product_id": toaster.pk}]),
        (
            days_ago(1),
            [
                {"product_id": str(kettle.pk)},  # a string: not a product id
                {"product_id": 987654},  # no such product
                {"product_id": 1.5},
                "junk",
                {"sku": "X"},
            ],
        ),
    ]:
        record_event(
            EventType.ORDER_PLACED,
            source=EventSource.OFFLINE,
            identities={"loyalty_card": "CARD1"},
            amount=Decimal("10"),
            payload={"lines": lines},
            occurred_at=when,
        )
    record_event(  # lines that are not a list at all
        EventType.ORDER_PLACED,
        source=EventSource.OFFLINE,
        identities={"loyalty_card": "CARD1"},
        payload={"lines": {"product_id": kettle.pk}},
    )
    fold()
    buyer = CustomerProfile.objects.get()
    assert rows() == {(buyer.pk, toaster.pk, 2), (buyer.pk, kettle.pk, 1)}
    toaster_row = PurchasedProduct.objects.get(product=toaster)
    assert toaster_row.last_bought_at == days_ago(3)
    assert one("bought", product=kettle.pk, days=10) == set()
    assert one("bought", product=kettle.pk, days=60) == {buyer.pk}
    assert one("bought", product=toaster.pk, days=10) == {buyer.pk}


def test_full_refresh_rebuilds_every_row():
    kettle = factories.create_product(title="Kettle")
    a, b = profile(), profile()
    for p in (a, b):
        Event.objects.create(
            profile=p,
            type=EventType.ORDER_PLACED,
            occurred_at=NOW,
            payload={"lines": [{"product_id": kettle.pk}]},
        )
    Event.objects.create(profile=a, type=EventType.PRODUCT_VIEWED, payload={"lines": []})
    assert refresh_purchased_products() == 2
    assert rows() == {(a.pk, kettle.pk, 1), (b.pk, kettle.pk, 1)}
    PurchasedProduct.objects.filter(profile=a).update(orders_count=7)
    assert refresh_purchased_products([a.pk]) == 1
    assert rows() == {(a.pk, kettle.pk, 1), (b.pk, kettle.pk, 1)}


def test_merge_recomputes_the_survivors_purchases():
    kettle = factories.create_product(title="Kettle")
    toaster = factories.create_product(title="Toaster")
    older, newer = profile(), profile()
    for p, product in ((older, kettle), (newer, toaster), (newer, kettle)):
        Event.objects.create(
            profile=p,
            type=EventType.ORDER_PLACED,
            occurred_at=NOW,
            payload={"lines": [{"product_id": product.pk}]},
        )
    refresh_purchased_products()
    survivor = merge_profiles(older, newer, reason="test")
    assert survivor.pk == older.pk
    assert rows() == {(older.pk, kettle.pk, 2), (older.pk, toaster.pk, 1)}
