"""POST offline-orders/: a purchase at a till becomes an order like an online one."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from oscar.apps.catalogue.categories import create_from_breadcrumbs
from oscar.test import factories

from omnichannel.api.models import ApiEventReceipt, ReceiptKind
from omnichannel.profiles.identity import fold_pending_events
from omnichannel.profiles.models import (
    CustomerProfile,
    Event,
    EventSource,
    EventType,
    Identity,
    IdentityKind,
    PurchasedCategory,
)
from omnichannel.profiles.recording import order_event
from tests import shop

pytestmark = pytest.mark.django_db

URL = reverse("omnichannel-api:offline-orders")


def fold() -> int:
    return fold_pending_events(now=timezone.now(), batch_size=500)


@pytest.fixture
def fridge():
    product = factories.create_product(
        title="Fridge",
        price=Decimal("499.00"),
        partner_sku="FRIDGE-300",
        upc="5012345678900",
        num_in_stock=100,
    )
    product.categories.add(create_from_breadcrumbs("Kitchen > Fridges"))
    return product


@pytest.fixture
def kettle():
    return factories.create_product(
        title="Kettle", price=Decimal("25.00"), partner_sku="KET-1", num_in_stock=100
    )


def order(**fields) -> dict:
    return {
        "number": "S12-000123",
        "store": {"id": "S12", "name": "Store 12, High Street"},
        "occurred_at": (timezone.now() - timedelta(hours=1)).isoformat(),
        "currency": "GBP",
        "total": "549.00",
        "customer": {"phone": "07911 123456"},
        "lines": [
            {"sku": "FRIDGE-300", "quantity": 1, "unit_price": "499.00"},
            {"sku": "KET-1", "quantity": 2, "unit_price": "25.00"},
        ],
        **fields,
    }


def test_an_offline_order_by_the_phone_of_an_online_customer_joins_their_profile(
    till_client, fridge, kettle
):
    # An online customer, through Oscar's real checkout, who gave their phone.
    browser = Client()
    shop.add_to_basket(browser, kettle)
    shop.register(browser, "ada@example.com")
    online = shop.checkout(browser, phone="+44 7911 123456")
    fold()
    customer = CustomerProfile.objects.get()
    assert customer.seen_on_web and not customer.seen_offline

    response = till_client.post(URL, order(), format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["duplicate"] is False and body["unknown_lines"] == []
    event = Event.objects.get(pk=body["event_id"])
    assert (event.type, event.source) == (EventType.ORDER_PLACED, EventSource.OFFLINE)
    assert event.identities == {"phone": "+447911123456"}
    assert (event.amount, event.currency) == (Decimal("549.00"), "GBP")

    fold()
    profile = CustomerProfile.objects.get()  # still one person
    assert profile.pk == customer.pk and profile.user.email == "ada@example.com"
    assert profile.seen_on_web and profile.seen_offline
    assert profile.orders_count == 2
    assert profile.total_spent == online.total_incl_tax + Decimal("549.00")
    categories = PurchasedCategory.objects.filter(profile=profile)
    assert {row.category.name for row in categories} >= {"Fridges"}
    assert "offline" in profile.sources and "web" in profile.sources


def test_an_offline_order_ends_the_customers_basket_reminder_for_the_bought_items(
    till_client, fridge, kettle
):
    from omnichannel.campaigns.engine import tick
    from omnichannel.campaigns.models import (
        Campaign,
        CampaignStatus,
        Enrollment,
        EnrollmentState,
        ExitReason,
        Step,
    )

    reminder = Campaign.objects.create(
        name="Abandoned basket",
        trigger="abandoned_basket",
        trigger_options={"delay_minutes": 60},
        status=CampaignStatus.ACTIVE,
    )
    Step.objects.create(campaign=reminder, position=1, channel="email", template="abandoned_basket")
    # An online customer who gave their phone at an earlier checkout ...
    browser = Client()
    shop.add_to_basket(browser, kettle)
    shop.register(browser, "ada@example.com")
    shop.checkout(browser, phone="+44 7911 123456")
    # ... puts a fridge and a kettle in the basket and leaves.
    shop.add_to_basket(browser, fridge)
    shop.add_to_basket(browser, kettle)
    fold()
    enrollment = Enrollment.objects.get(campaign=reminder)
    assert enrollment.state == EnrollmentState.ACTIVE

    # At the till they buy only the fridge: the reminder goes on, for the kettle alone.
    response = till_client.post(
        URL,
        order(
            occurred_at=timezone.now().isoformat(),
            total="499.00",
            lines=[{"sku": "FRIDGE-300", "quantity": 1, "unit_price": "499"}],
        ),
        format="json",
    )
    assert response.status_code == 201, response.json()
    fold()
    from omnichannel.campaigns.goals import remaining_items

    enrollment.refresh_from_db()
    assert remaining_items([enrollment])[enrollment.pk] == [kettle.pk]

    # Later they buy the kettle too: the reminder ends before it is sent.
    response = till_client.post(
        URL,
        order(
            number="S12-000124",
            occurred_at=timezone.now().isoformat(),
            total="25.00",
            lines=[{"sku": "KET-1", "quantity": 1, "unit_price": "25.00"}],
        ),
        format="json",
    )
    assert response.status_code == 201, response.json()
    fold()
    tick(now=timezone.now() + timedelta(hours=2), dispatch=False)
    enrollment.refresh_from_db()
    assert (enrollment.state, enrollment.exit_reason) == (
        EnrollmentState.EXITED,
        ExitReason.BOUGHT_ITEMS,
    )
    assert not enrollment.messages.exists()


def test_the_payload_has_the_shape_of_an_online_orders(till_client, fridge, kettle):
    online = order_event(
        factories.create_order(shipping_address=factories.ShippingAddressFactory())
    )
    response = till_client.post(
        URL,
        order(customer={"phone": "07911 123456", "first_name": "Ada", "last_name": "L"}),
        format="json",
    )
    offline = Event.objects.get(pk=response.json()["event_id"])
    assert set(offline.payload) - {"store"} == set(online.payload)
    assert offline.payload["store"] == {"id": "S12", "name": "Store 12, High Street"}
    (online_line,) = online.payload["lines"]
    assert [set(line) for line in offline.payload["lines"]] == [set(online_line)] * 2
    assert offline.payload["lines"][0] == {
        "product_id": fridge.pk,
        "sku": "FRIDGE-300",
        "upc": "5012345678900",
        "title": "Fridge",
        "quantity": 1,
        "price": "499.00",
    }
    assert offline.payload["lines"][1]["price"] == "50.00"  # the line's total, like online
    assert offline.payload["number"] == "S12-000123"
    assert (offline.payload["first_name"], offline.payload["last_name"]) == ("Ada", "L")


def test_lines_by_upc_and_by_product_id(till_client, fridge, kettle):
    lines = [
        {"upc": "5012345678900", "quantity": 1, "unit_price": "499.00"},
        {"sku": "5012345678900", "quantity": 1, "unit_price": "499.00"},  # a UPC in sku
        {"product_id": kettle.pk, "quantity": 1, "unit_price": "25", "title": "Kettle (store)"},
    ]
    response = till_client.post(URL, order(lines=lines), format="json")
    assert response.status_code == 201, response.json()
    stored = Event.objects.get().payload["lines"]
    assert [line["product_id"] for line in stored] == [fridge.pk, fridge.pk, kettle.pk]
    assert [line["sku"] for line in stored] == ["FRIDGE-300", "FRIDGE-300", "KET-1"]
    assert stored[2]["title"] == "Kettle (store)"


def test_an_unknown_sku_refuses_the_order_and_is_reported_per_line(till_client, fridge):
    lines = [
        {"sku": "FRIDGE-300", "quantity": 1, "unit_price": "499.00"},
        {"sku": "BAG-01", "quantity": 1, "unit_price": "0.10"},
        {"product_id": 999999, "quantity": 1, "unit_price": "1"},
    ]
    response = till_client.post(URL, order(lines=lines), format="json")
    assert response.status_code == 400
    assert response.json() == {
        "lines": {
            "1": {"sku": ["No product with partner SKU or UPC 'BAG-01'."]},
            "2": {"product_id": ["No product with id 999999."]},
        }
    }
    assert not Event.objects.exists() and not ApiEventReceipt.objects.exists()


def test_unknown_products_can_be_allowed_and_are_reported(till_client, fridge):
    lines = [
        {"sku": "FRIDGE-300", "quantity": 1, "unit_price": "499.00"},
        {"sku": "BAG-01", "quantity": 1, "unit_price": "0.10", "title": "Bag"},
    ]
    response = till_client.post(
        URL, order(lines=lines, allow_unknown_products=True, total="499.10"), format="json"
    )
    assert response.status_code == 201
    assert response.json()["unknown_lines"] == [
        {"index": 1, "field": "sku", "error": "No product with partner SKU or UPC 'BAG-01'."}
    ]
    stored = Event.objects.get().payload["lines"]
    assert stored[1] == {
        "product_id": None,
        "sku": "BAG-01",
        "upc": "",
        "title": "Bag",
        "quantity": 1,
        "price": "0.10",
    }


def test_a_retried_order_is_stored_once_per_key(till_client, make_client, fridge, kettle):
    first = till_client.post(URL, order(), format="json")
    again = till_client.post(URL, order(), format="json")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["duplicate"] is True
    assert again.json()["event_id"] == first.json()["event_id"]
    assert Event.objects.count() == 1
    assert ApiEventReceipt.objects.get().kind == ReceiptKind.ORDER
    other_store = make_client(source=EventSource.OFFLINE)
    assert other_store.post(URL, order(), format="json").status_code == 201
    assert Event.objects.count() == 2


def test_order_numbers_and_event_client_ids_do_not_collide(till_client, fridge, kettle):
    events = reverse("omnichannel-api:events")
    batch = {"events": [{"client_id": "S12-000123", "type": "x", "anonymous_id": "i"}]}
    assert till_client.post(events, batch, format="json").status_code == 201
    assert till_client.post(URL, order(), format="json").status_code == 201


def test_a_loyalty_card_or_email_is_enough(till_client, fridge, kettle):
    response = till_client.post(
        URL, order(customer={"loyalty_card": "card 77", "email": "A@B.com"}), format="json"
    )
    assert response.status_code == 201
    assert Event.objects.get().identities == {"email": "a@b.com", "loyalty_card": "CARD77"}
    fold()
    assert Identity.objects.get(kind=IdentityKind.LOYALTY_CARD).value == "CARD77"


@pytest.mark.parametrize(
    ("fields", "path", "message"),
    [
        ({"customer": {}}, ("customer", "phone"), "Give a phone, loyalty_card or email"),
        ({"customer": {"first_name": "Ann"}}, ("customer", "phone"), "Give a phone"),
        ({"customer": {"phone": "123"}}, ("customer", "phone"), "not a valid phone"),
        ({"customer": {"email": "x@"}}, ("customer", "email"), "valid email"),
        ({"number": ""}, ("number",), "blank"),
        ({"number": "n" * 65}, ("number",), "no more than 64"),
        ({"store": {}}, ("store", "id"), "required"),
        ({"store": "S12"}, ("store", "non_field_errors"), "Invalid data"),
        ({"occurred_at": None}, ("occurred_at",), "null"),
        ({"currency": "EURO"}, ("currency",), "no more than 3"),
        ({"total": "-1"}, ("total",), "greater than or equal to 0"),
        ({"total": "1e20"}, ("total",), "digits"),
        ({"lines": []}, ("lines",), "at least one"),
        (
            {"lines": [{"sku": "A", "quantity": 0, "unit_price": "1"}]},
            ("lines", "0", "quantity"),
            "",
        ),
        ({"lines": [{"sku": "A", "unit_price": "1"}]}, ("lines", "0", "quantity"), "required"),
        ({"lines": [{"quantity": 1, "unit_price": "1"}]}, ("lines", "0", "sku"), "exactly one"),
        (
            {"lines": [{"sku": "A", "upc": "B", "quantity": 1, "unit_price": "1"}]},
            ("lines", "0", "sku"),
            "exactly one",
        ),
        (
            {"lines": [{"sku": "A", "quantity": 1, "unit_price": "x"}]},
            ("lines", "0", "unit_price"),
            "",
        ),
        ({"allow_unknown_products": "maybe"}, ("allow_unknown_products",), "boolean"),
        ({"coupon": "X"}, ("coupon",), "Unknown field"),
    ],
)
def test_bad_orders_name_the_field(till_client, fridge, kettle, fields, path, message):
    response = till_client.post(URL, order(**fields), format="json")
    assert response.status_code == 400, response.content
    errors = response.json()
    for part in path:
        assert part in errors, errors
        errors = errors[part]
    assert message in str(errors)
    assert not Event.objects.exists()


def test_too_many_lines(till_client, fridge, settings):
    settings.OMNICHANNEL = {**settings.OMNICHANNEL, "API_MAX_ORDER_LINES": 2}
    lines = [{"sku": "FRIDGE-300", "quantity": 1, "unit_price": "1"}] * 3
    response = till_client.post(URL, order(lines=lines), format="json")
    assert response.status_code == 400
    assert "Too many lines in one request: 3; send at most 2" in response.json()["lines"][0]
