"""The demo shop's data loader: real Oscar orders, their events and profiles; idempotent."""

from __future__ import annotations

import io
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import phonenumbers
import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db.models import Q, Sum
from django.utils import timezone
from oscar.core.loading import get_model
from PIL import Image

from omnichannel.profiles.models import CustomerProfile, Event, EventType, Identity, IdentityKind
from sandbox.demo.plan import HISTORY_DAYS, build_plan

pytestmark = pytest.mark.django_db

User = get_user_model()
Basket = get_model("basket", "Basket")
Category = get_model("catalogue", "Category")
Country = get_model("address", "Country")
Order = get_model("order", "Order")
Product = get_model("catalogue", "Product")
ProductImage = get_model("catalogue", "ProductImage")
StockRecord = get_model("partner", "StockRecord")
WishListLine = get_model("wishlists", "Line")

SIZE = {"customers": 5, "products": 8}


def load(**options) -> str:
    out = io.StringIO()
    call_command("sandbox_load_demo", stdout=out, **{**SIZE, **options})
    return out.getvalue()


def snapshot() -> dict:
    return {
        "users": sorted(User.objects.values_list("username", "password", "date_joined")),
        "products": sorted(Product.objects.values_list("upc", "title", "slug")),
        "images": sorted(ProductImage.objects.values_list("product_id", "original")),
        "stock": sorted(
            StockRecord.objects.values_list("partner_sku", "price", "num_in_stock", "num_allocated")
        ),
        "categories": Category.objects.count(),
        "countries": sorted(Country.objects.values_list("pk", "is_shipping_country")),
        "orders": sorted(Order.objects.values_list("number", "date_placed", "total_incl_tax")),
        "baskets": Basket.objects.count(),
        "wishlist lines": WishListLine.objects.count(),
        "events": sorted(Event.objects.values_list("pk", "type", "occurred_at", "profile_id")),
        "profiles": sorted(CustomerProfile.objects.values_list("pk", "user_id", "orders_count")),
        "identities": Identity.objects.count(),
    }


@pytest.fixture
def media(settings, tmp_path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def test_load_twice_changes_nothing_the_second_time(media):
    first = load()
    assert "created:" in first
    before = snapshot()
    second = load()
    assert "created: nothing" in second
    assert snapshot() == before


def test_catalogue_has_generated_pictures_and_stock(media):
    load()
    products = Product.objects.all()
    assert products.count() == SIZE["products"]
    assert Category.objects.filter(depth=1).count() >= 3
    for product in products:
        assert product.upc and product.description and product.categories.exists()
        record = product.stockrecords.get()
        assert record.price > 0 and record.num_in_stock > 0
        image = product.images.get()
        path = Path(image.original.path)
        assert path.is_file() and path.is_relative_to(media)
        with Image.open(path) as picture:
            assert picture.format == "PNG" and picture.size == (600, 600)
    assert set(Country.objects.filter(is_shipping_country=True).values_list("pk", flat=True)) >= {
        "GB",
        "US",
        "DE",
        "FR",
        "NL",
    }


def test_a_missing_picture_file_is_drawn_again(media):
    load(customers=0, products=2)
    image = ProductImage.objects.first()
    Path(image.original.path).unlink()
    load(customers=0, products=2)
    image.refresh_from_db()
    assert Path(image.original.path).is_file()
    assert ProductImage.objects.count() == 2


def test_staff_user_can_log_in_to_the_dashboard(media, client):
    load(customers=0, products=1)
    staff = User.objects.get(username="staff")
    assert staff.is_staff and staff.is_superuser and staff.email == "staff@example.com"
    assert client.login(username="staff@example.com", password="omnichannel-demo")
    assert client.get("/dashboard/").status_code == 200


def test_orders_are_in_the_past_with_their_events_and_profiles(media):
    load()
    now = timezone.now()
    customers = User.objects.filter(is_staff=False)
    assert customers.count() == SIZE["customers"]
    orders = Order.objects.all()
    assert orders.count() > 0
    oldest = now - timedelta(days=HISTORY_DAYS + 1)
    for order in orders:
        assert oldest <= order.date_placed <= now
        event = Event.objects.get(type=EventType.ORDER_PLACED, order_id=order.pk)
        assert event.occurred_at == order.date_placed
        assert event.amount == order.total_incl_tax
        # Events of the order's basket moved back in time with it.
        basket_events = Event.objects.filter(basket_id=order.basket_id)
        assert all(e.occurred_at <= order.date_placed for e in basket_events)
    assert orders.filter(date_placed__lt=now - timedelta(days=30)).exists()

    assert not Event.objects.filter(processed_at__isnull=True).exists()
    for user in customers:
        registered = Event.objects.get(type=EventType.USER_REGISTERED, user=user)
        assert registered.occurred_at == user.date_joined
        profile = CustomerProfile.objects.get(user=user)
        theirs = Order.objects.filter(Q(user=user) | Q(guest_email__iexact=user.email))
        assert profile.orders_count == theirs.count()
        spent = theirs.aggregate(total=Sum("total_incl_tax"))["total"] or Decimal(0)
        assert profile.total_spent == spent
        assert profile.registered_at == user.date_joined
        assert profile.first_name == user.first_name
        emails = profile.identities.filter(kind=IdentityKind.EMAIL).values_list("value", flat=True)
        assert list(emails) == [user.email]
    for phone in Identity.objects.filter(kind=IdentityKind.PHONE).values_list("value", flat=True):
        assert phonenumbers.is_valid_number(phonenumbers.parse(phone))


def test_plan_is_deterministic_and_stable_across_sizes():
    small = build_plan(seed=7, customers=3, products=8)
    large = build_plan(seed=7, customers=10, products=8)
    assert small == large[:3]
    assert build_plan(seed=7, customers=10, products=8) == large
    assert len({c.email for c in large}) == 10
    phones = [c.phone for c in large if c.phone]
    assert len(set(phones)) == len(phones)
    for customer in large:
        numbers = [order.number for order in customer.orders]
        assert len(set(numbers)) == len(numbers)
        for phone in filter(None, [customer.phone]):
            assert phonenumbers.is_valid_number(phonenumbers.parse(phone, "GB"))


def test_bad_sizes_are_refused(media):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        load(products=0)
    with pytest.raises(CommandError):
        load(products=999)
