"""Drive the real Oscar shop through Django's test client (like Oscar's CheckoutMixin)."""

from __future__ import annotations

from decimal import Decimal

from django.test import Client
from django.urls import reverse
from oscar.core.loading import get_model
from oscar.test import factories

Country = get_model("address", "Country")
Order = get_model("order", "Order")


def _errors(response) -> object:
    """Form errors of a re-rendered page, for assertion messages."""
    context = response.context or {}
    form = context.get("form") if hasattr(context, "get") else None
    return getattr(form, "errors", None) or response.content[:500]


def create_product(price: str = "12.00", title: str = "Fridge", num_in_stock: int = 100):
    return factories.create_product(title=title, price=Decimal(price), num_in_stock=num_in_stock)


def ensure_shipping_country() -> None:
    Country.objects.get_or_create(
        iso_3166_1_a2="GB",
        defaults={"name": "United Kingdom", "printable_name": "United Kingdom"},
    )
    Country.objects.filter(iso_3166_1_a2="GB").update(is_shipping_country=True)


def add_to_basket(client: Client, product, quantity: int = 1):
    response = client.post(reverse("basket:add", kwargs={"pk": product.pk}), {"quantity": quantity})
    assert response.status_code == 302, _errors(response)
    return response


def view_product(client: Client, product):
    response = client.get(product.get_absolute_url())
    assert response.status_code == 200
    return response


def register(client: Client, email: str, password: str = "correct-horse-9"):
    response = client.post(
        reverse("customer:register"),
        {"email": email, "password1": password, "password2": password, "redirect_url": "/"},
    )
    assert response.status_code == 302, _errors(response)
    return response


def checkout(
    client: Client,
    *,
    guest_email: str | None = None,
    phone: str = "",
    first_name: str = "Ada",
    last_name: str = "Lovelace",
) -> Order:
    """Go through Oscar's whole checkout with its dummy payment and return the new order."""
    ensure_shipping_country()
    if guest_email is not None:
        response = client.post(
            reverse("checkout:index"), {"username": guest_email, "options": "anonymous"}
        )
        assert response.status_code == 302, _errors(response)
    response = client.post(
        reverse("checkout:shipping-address"),
        {
            "first_name": first_name,
            "last_name": last_name,
            "line1": "1 Egg Road",
            "line4": "Shell City",
            "postcode": "N12 9RT",
            "country": "GB",
            "phone_number": phone,
        },
    )
    assert response.status_code == 302, _errors(response)
    response = client.get(reverse("checkout:shipping-method"), follow=True)
    assert response.status_code == 200
    before = set(Order.objects.values_list("pk", flat=True))
    response = client.post(reverse("checkout:preview"), {"action": "place_order"})
    assert response.status_code == 302, _errors(response)
    assert response["Location"].endswith(reverse("checkout:thank-you")), response["Location"]
    return Order.objects.exclude(pk__in=before).get()
