"""Recommendations: people who bought this also bought, then Oscar's picks, category and shop
best sellers; only public products with stock; never the given or excluded ones."""

from __future__ import annotations

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from oscar.apps.catalogue.categories import create_from_breadcrumbs
from oscar.core.loading import get_model
from oscar.test import factories

from omnichannel import recommendations
from omnichannel.profiles.models import CustomerProfile, Event, EventSource, EventType
from omnichannel.recommendations import bought_together, bought_together_many, for_profile
from omnichannel.segments.purchases import refresh_purchased_products

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=dt_timezone.utc)
ProductRecommendation = get_model("catalogue", "ProductRecommendation")


def product(title: str, *, stock: bool = True, **kwargs):
    if stock:
        return factories.create_product(
            title=title, price=Decimal("10.00"), num_in_stock=10, **kwargs
        )
    return factories.create_product(title=title, **kwargs)


def orders(*baskets, online: bool = True, days_ago: int = 1) -> None:
    """One person per basket of products: an order event each (online or at a till)."""
    for number, products in enumerate(baskets):
        person = CustomerProfile.objects.create(first_name=f"Buyer {number}")
        Event.objects.create(
            profile=person,
            type=EventType.ORDER_PLACED,
            source=EventSource.WEB if online else EventSource.OFFLINE,
            occurred_at=NOW - timedelta(days=days_ago),
            payload={"lines": [{"product_id": p.pk, "quantity": 1} for p in products]},
        )
    refresh_purchased_products()


def titles(ids) -> list[str]:
    Product = get_model("catalogue", "Product")
    by_id = Product.objects.in_bulk(ids)
    return [by_id[pid].title for pid in ids]


@pytest.fixture
def shop():
    names = ["kettle", "mug", "tea", "toaster", "spoon", "sugar"]
    return {name: product(name) for name in names}


def test_ranked_by_how_many_people_bought_both_online_and_offline(shop):
    kettle, mug, tea, toaster = shop["kettle"], shop["mug"], shop["tea"], shop["toaster"]
    orders([kettle, mug, tea], [kettle, mug], [kettle, toaster], [mug, tea])
    orders([kettle, tea], online=False)  # a till's order counts too
    # mug: 2 buyers with the kettle, tea: 2 (one offline), toaster: 1; ties by id.
    assert titles(bought_together([kettle.pk], limit=3)) == ["mug", "tea", "toaster"]
    # Two given products: a candidate's buyers are summed over them.
    assert titles(bought_together([kettle.pk, toaster.pk], limit=2)) == ["mug", "tea"]


def test_given_excluded_and_non_public_products_are_never_returned(shop):
    kettle, mug, tea, toaster = shop["kettle"], shop["mug"], shop["tea"], shop["toaster"]
    hidden = product("hidden", is_public=False)
    no_stock = product("no stock record", stock=False)
    orders(*[[kettle, mug, tea, toaster, hidden, no_stock]] * 3)
    ids = bought_together([kettle.pk, mug.pk], limit=10, exclude=[tea.pk])
    assert titles(ids)[:1] == ["toaster"]
    assert not {kettle.pk, mug.pk, tea.pk, hidden.pk, no_stock.pk} & set(ids)


def test_variants_count_for_their_parent(shop):
    kettle = shop["kettle"]
    shirt = factories.create_product(title="shirt", structure="parent")
    small = product("", parent=shirt)
    large = product("", parent=shirt)
    orders([kettle, small], [kettle, large], [kettle, shop["mug"]])
    assert titles(bought_together([kettle.pk], limit=2)) == ["shirt", "mug"]
    # A variant in the basket: neither it, its siblings nor its parent come back.
    assert shirt.pk not in bought_together([small.pk], limit=5)


def test_fallbacks_fill_the_list_in_order(shop):
    kettle, mug, tea, toaster, spoon, sugar = (shop[n] for n in shop)
    category = create_from_breadcrumbs("Cups")
    for item in (kettle, spoon, sugar):
        get_model("catalogue", "ProductCategory").objects.create(product=item, category=category)
    orders([kettle, mug])  # co-purchase: mug
    ProductRecommendation.objects.create(primary=kettle, recommendation=tea, ranking=1)
    ProductRecommendation.objects.create(primary=kettle, recommendation=toaster, ranking=5)
    orders([spoon], [spoon], [sugar])  # category best sellers: spoon (2 orders), sugar (1)
    orders([toaster], [toaster], [toaster], [toaster])  # the shop's best seller
    expected = ["mug", "toaster", "tea", "spoon", "sugar"]
    assert titles(bought_together([kettle.pk], limit=5)) == expected
    # Nothing given: the shop's best sellers.
    assert titles(bought_together([], limit=2)) == ["toaster", "spoon"]


def test_for_profile_starts_from_what_they_bought_and_skips_it(shop):
    kettle, mug, tea = shop["kettle"], shop["mug"], shop["tea"]
    orders([kettle, mug], [kettle, mug], [kettle, tea])
    buyer = CustomerProfile.objects.create(first_name="Ann")
    Event.objects.create(
        profile=buyer,
        type=EventType.ORDER_PLACED,
        occurred_at=NOW,
        payload={"lines": [{"product_id": kettle.pk}, {"product_id": tea.pk}]},
    )
    refresh_purchased_products([buyer.pk])
    assert titles(for_profile(buyer, limit=1)) == ["mug"]
    stranger = CustomerProfile.objects.create(first_name="New")
    assert titles(for_profile(stranger, limit=1)) == ["kettle"]  # best seller


def test_many_lists_cost_a_fixed_number_of_queries(shop):
    kettle, mug, tea, toaster, spoon, sugar = (shop[n] for n in shop)
    orders([kettle, mug, tea], [toaster, spoon], [sugar, kettle])

    def run(count: int) -> int:
        seeds = {n: [(kettle, toaster, sugar)[n % 3].pk] for n in range(count)}
        with CaptureQueriesContext(connection) as queries:
            result = bought_together_many(seeds, limit=4, exclude={0: {mug.pk}})
        assert len(result) == count and mug.pk not in result[0]
        return len(queries)

    assert run(5) == run(60)
    assert run(60) <= 12


def test_only_the_most_recent_buyers_of_a_product_are_read(shop, monkeypatch):
    kettle, mug, tea = shop["kettle"], shop["mug"], shop["tea"]
    orders([kettle, mug], [kettle, mug], days_ago=30)
    orders([kettle, tea], days_ago=1)
    assert titles(bought_together([kettle.pk], limit=1)) == ["mug"]
    monkeypatch.setattr(recommendations, "RECENT_BUYERS", 1)
    assert titles(bought_together([kettle.pk], limit=1)) == ["tea"]


def test_a_limit_of_zero_asks_nothing(django_assert_num_queries, shop):
    with django_assert_num_queries(0):
        assert bought_together([shop["kettle"].pk], limit=0) == []
