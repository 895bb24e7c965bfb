"""What each receiver records, through Oscar's real views."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone
from oscar.core.loading import get_class, get_model

from omnichannel.profiles.identity import fold_pending_events
from omnichannel.profiles.models import CustomerProfile, Event, EventType
from tests import shop

pytestmark = pytest.mark.django_db

WishList = get_model("wishlists", "WishList")
Basket = get_model("basket", "Basket")


def test_visitor_cookie_is_issued_once_and_kept(client, settings):
    first = client.get("/")
    cookie = first.cookies[settings.OMNICHANNEL.get("VISITOR_COOKIE_NAME", "omnichannel_vid")]
    assert len(cookie.value) == 32 and cookie["httponly"]
    second = client.get("/")
    assert "omnichannel_vid" not in second.cookies  # not re-sent on every response
    client.cookies["omnichannel_vid"] = "<script>tampered</script>"
    third = client.get("/")
    assert third.cookies["omnichannel_vid"].value != "<script>tampered</script>"


def test_product_view_is_recorded_with_the_visitor_key(client):
    product = shop.create_product()
    client.get("/")  # the visitor cookie
    shop.view_product(client, product)
    event = Event.objects.get()
    assert event.type == EventType.PRODUCT_VIEWED
    assert event.product == product
    assert event.visitor_key == client.cookies["omnichannel_vid"].value
    assert event.profile is None and event.processed_at is None  # the fold attaches it later


def test_product_views_can_be_switched_off(client, settings):
    settings.OMNICHANNEL = {"RECORD_PRODUCT_VIEWS": False}
    client.get("/")
    shop.view_product(client, shop.create_product())
    assert not Event.objects.exists()


def test_each_basket_add_is_one_event_even_for_an_existing_line(client):
    product = shop.create_product()
    shop.add_to_basket(client, product)
    shop.add_to_basket(client, product, quantity=2)
    events = list(Event.objects.order_by("pk").values_list("type", "payload"))
    assert events == [
        (EventType.BASKET_LINE_ADDED, {"quantity": 1}),
        (EventType.BASKET_LINE_ADDED, {"quantity": 2}),
    ]


def test_login_and_wishlist_add_and_remove(client, django_user_model):
    user = django_user_model.objects.create_user("wes", "wes@example.com", "pw-123456")
    product = shop.create_product()
    assert client.login(username="wes@example.com", password="pw-123456")
    response = client.post(reverse("customer:wishlists-add-product", args=[product.pk]))
    assert response.status_code == 302
    wishlist = WishList.objects.get(owner=user)
    line = wishlist.lines.get()
    response = client.post(
        reverse(
            "customer:wishlists-remove-product", kwargs={"key": wishlist.key, "line_pk": line.pk}
        )
    )
    assert response.status_code == 302
    assert list(Event.objects.order_by("pk").values_list("type", flat=True)) == [
        EventType.USER_LOGGED_IN,
        EventType.WISHLIST_LINE_ADDED,
        EventType.WISHLIST_LINE_REMOVED,
    ]
    fold_pending_events(now=timezone.now(), batch_size=100)
    profile = CustomerProfile.objects.get()
    assert profile.user == user
    assert profile.events.count() == 3


def test_checkout_records_the_order_but_no_separate_basket_submission(client):
    shop.add_to_basket(client, shop.create_product("3.00"))
    order = shop.checkout(client, guest_email="guest@example.com")
    event = Event.objects.get(type=EventType.ORDER_PLACED)
    assert event.order == order
    assert event.basket_id == order.basket_id
    assert event.amount == order.total_incl_tax
    assert event.identities == {"email": "guest@example.com"}
    assert event.payload["lines"][0]["quantity"] == 1
    assert not Event.objects.filter(type=EventType.BASKET_SUBMITTED).exists()


def test_a_basket_submitted_without_an_order_gets_its_own_event(django_user_model):
    user = django_user_model.objects.create_user("sub", "sub@example.com", "x")
    basket = Basket.objects.create(owner=user)
    basket.submit()
    basket.save()
    event = Event.objects.get(type=EventType.BASKET_SUBMITTED)
    assert (event.basket_id, event.user_id) == (basket.pk, user.pk)


def test_a_login_to_the_admin_site_is_not_a_customer_visit(client, django_user_model):
    django_user_model.objects.create_superuser("boss", "boss@example.com", "pw-123456")
    response = client.post(
        reverse("admin:login"), {"username": "boss", "password": "pw-123456", "next": "/admin/"}
    )
    assert response.status_code == 302
    assert not Event.objects.exists()


def test_deleting_a_product_or_a_basket_is_not_a_shopper_removing_items(
    admin_client, admin_user, django_user_model
):
    product = shop.create_product()
    customer = django_user_model.objects.create_user("own", "own@example.com", "x")
    strategy = get_class("partner.strategy", "Selector")().strategy()
    baskets = []
    for owner in (customer, None):  # a customer's basket, and an anonymous shopper's
        basket = Basket.objects.create(owner=owner)
        basket.strategy = strategy
        basket.add_product(product)
        baskets.append(basket)
    Event.objects.all().delete()

    # Staff delete the product: the lines cascade, in the staff member's request.
    url = reverse("admin:catalogue_product_delete", args=[product.pk])
    assert admin_client.post(url, {"post": "yes"}).status_code == 302
    assert not Event.objects.exists()

    other = shop.create_product()
    baskets[0].add_product(other)
    Event.objects.all().delete()
    baskets[0].delete()  # its lines cascade; the deletion must still commit
    assert not Event.objects.exists()
    assert not Basket.objects.filter(pk=baskets[0].pk).exists()


def test_a_first_view_without_our_cookie_is_not_recorded(client):
    product = shop.create_product()
    shop.view_product(client, product)  # a crawler would stop here, making no profile
    assert not Event.objects.exists()
    shop.view_product(client, product)  # a browser comes back with the cookie
    assert Event.objects.get().type == EventType.PRODUCT_VIEWED


@pytest.mark.django_db
def test_basket_lines_loaded_with_deferred_fields_load_and_save(client):
    # Our post_init receiver must not read deferred fields (that reloads, runs post_init again).
    shop.add_to_basket(client, shop.create_product())
    Line = get_model("basket", "Line")
    for fields in (("quantity",), ("basket_id",), ("id",)):
        line = Line.objects.only(*fields).get()
        line.quantity = 3
        line.save()
    assert Line.objects.get().quantity == 3
