"""Profiles built from a real Oscar shop, driven through its views with the test client."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.utils import timezone

from omnichannel.profiles.identity import fold_pending_events
from omnichannel.profiles.models import (
    CustomerProfile,
    Event,
    EventType,
    Identity,
    IdentityKind,
    ProfileMerge,
)
from omnichannel.profiles.recording import registration_event, save_event
from tests import shop

pytestmark = pytest.mark.django_db


def fold() -> int:
    return fold_pending_events(now=timezone.now(), batch_size=100)


def test_anonymous_visitor_who_registers_and_buys_ends_as_one_profile(client):
    fridge = shop.create_product("499.00", title="Fridge")
    kettle = shop.create_product("25.00", title="Kettle")

    client.get("/")  # arrives on the home page, and gets the visitor cookie
    shop.view_product(client, fridge)
    shop.add_to_basket(client, fridge)
    shop.add_to_basket(client, kettle, quantity=2)
    fold()  # the anonymous visitor already has a profile of their own
    assert CustomerProfile.objects.count() == 1

    shop.register(client, "Ada@Example.com")
    order = shop.checkout(client, phone="07911 123456")
    fold()

    profile = CustomerProfile.objects.get()
    assert profile.user.email.lower() == "ada@example.com"
    kinds = dict(profile.identities.values_list("kind", "value"))
    assert kinds[IdentityKind.EMAIL] == "ada@example.com"
    assert kinds[IdentityKind.PHONE] == "+447911123456"
    assert IdentityKind.VISITOR in kinds
    assert kinds[IdentityKind.USER] == str(profile.user_id)
    types = list(profile.events.order_by("pk").values_list("type", flat=True))
    assert types[:3] == [
        EventType.PRODUCT_VIEWED,
        EventType.BASKET_LINE_ADDED,
        EventType.BASKET_LINE_ADDED,
    ]
    assert EventType.USER_REGISTERED in types
    assert types[-1] == EventType.ORDER_PLACED
    assert not Event.objects.filter(profile__isnull=True).exists()

    assert profile.orders_count == 1
    assert profile.total_spent == order.total_incl_tax
    assert profile.average_order_value == order.total_incl_tax
    assert profile.last_order_at == order.date_placed
    assert profile.seen_on_web and not profile.seen_offline
    assert (profile.first_name, profile.last_name) == ("Ada", "Lovelace")


def test_guest_checkout_with_a_customers_email_merges_into_that_customer(client, django_user_model):
    customer = django_user_model.objects.create_user(
        username="grace", email="grace@example.com", password="x"
    )
    save_event(registration_event(customer))  # registered earlier, in another session
    fold()
    customer_profile = CustomerProfile.objects.get(user=customer)

    product = shop.create_product("10.00")
    shop.add_to_basket(client, product)
    fold()  # the anonymous visitor's profile now exists on its own
    assert CustomerProfile.objects.count() == 2
    shop.checkout(client, guest_email="GRACE@example.com ")
    fold()

    assert CustomerProfile.objects.count() == 1
    profile = CustomerProfile.objects.get()
    assert profile.pk == customer_profile.pk
    assert profile.orders_count == 1
    assert profile.identities.filter(kind=IdentityKind.VISITOR).exists()
    merge = ProfileMerge.objects.get()
    assert merge.survivor == profile
    assert merge.event.type == EventType.ORDER_PLACED
    assert merge.moved["omnichannel.event"] == 1
    assert merge.moved["omnichannel.identity"] == 1


def test_events_of_one_batch_resolve_to_one_profile_without_a_stored_merge(client):
    product = shop.create_product("10.00")
    shop.add_to_basket(client, product)
    shop.checkout(client, guest_email="new@example.com", phone="+44 7911 123456")
    fold()
    profile = CustomerProfile.objects.get()
    assert set(profile.identities.values_list("kind", flat=True)) == {
        IdentityKind.VISITOR,
        IdentityKind.EMAIL,
        IdentityKind.PHONE,
    }
    assert not ProfileMerge.objects.exists()


def test_basket_quantity_change_and_removal_are_recorded(client):
    product = shop.create_product("5.00")
    shop.add_to_basket(client, product)
    basket_page = client.get("/basket/")
    formset = basket_page.context["formset"]
    data = {
        "form-TOTAL_FORMS": "1",
        "form-INITIAL_FORMS": "1",
        "form-MIN_NUM_FORMS": "0",
        "form-MAX_NUM_FORMS": "1000",
        "form-0-id": str(formset.forms[0].instance.pk),
        "form-0-quantity": "3",
    }
    assert client.post("/basket/", data).status_code == 302
    data["form-0-DELETE"] = "on"
    assert client.post("/basket/", data).status_code == 302

    types = list(Event.objects.order_by("pk").values_list("type", "payload"))
    assert [t for t, _ in types] == [
        EventType.BASKET_LINE_ADDED,
        EventType.BASKET_LINE_CHANGED,
        EventType.BASKET_LINE_REMOVED,
    ]
    assert types[1][1] == {"quantity": 3, "previous_quantity": 1}
    fold()
    profile = CustomerProfile.objects.get()
    assert profile.last_basket_activity_at is not None
    assert profile.orders_count == 0
    assert profile.total_spent == Decimal(0)


def test_identity_values_are_normalised_and_unique():
    assert Identity._meta.constraints[0].fields == ("kind", "value")
