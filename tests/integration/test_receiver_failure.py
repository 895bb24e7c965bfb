"""A real database failure in our receivers never costs the shop an order.

The events table is renamed away inside the test's transaction, so every INSERT our receivers
make fails in the database itself (not in a mock). The checkout must still place the order,
the failures must be logged, and on PostgreSQL the checkout's transaction must stay usable:
the receivers write in a savepoint, so a failed INSERT does not abort the whole transaction.
"""

from __future__ import annotations

import logging

import pytest
from django.db import DatabaseError, connection
from django.urls import reverse
from oscar.core.loading import get_model

from omnichannel.profiles.models import Event
from tests import shop

Order = get_model("order", "Order")

pytestmark = pytest.mark.django_db  # one transaction, rolled back (DDL too) at the end


def _rename_events_table(old: str, new: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {old} RENAME TO {new}")


def _assert_transaction_usable() -> None:
    assert not connection.needs_rollback
    if connection.vendor == "postgresql":
        from psycopg.pq import TransactionStatus

        # INERROR would mean a failed statement aborted the transaction ("poisoned" it).
        assert connection.connection.info.transaction_status == TransactionStatus.INTRANS
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


@pytest.mark.timeout(60)
def test_checkout_survives_a_failing_events_table(client, caplog):
    product = shop.create_product("15.00", title="Lamp")
    table = Event._meta.db_table
    _rename_events_table(table, f"{table}_gone")
    try:
        with caplog.at_level(logging.ERROR, logger="omnichannel.profiles"):
            shop.add_to_basket(client, product)
            order = shop.checkout(client, guest_email="broken@example.com")
            _assert_transaction_usable()
            assert client.get(reverse("checkout:thank-you")).status_code == 200
    finally:
        _rename_events_table(f"{table}_gone", table)

    assert Order.objects.filter(pk=order.pk, number=order.number).exists()
    assert order.lines.get().product_id == product.pk
    assert not Event.objects.exists()  # every INSERT failed
    failures = {
        record.getMessage(): record
        for record in caplog.records
        if record.name == "omnichannel.profiles" and record.levelno == logging.ERROR
    }
    expected = "omnichannel receiver receive_order_placed failed; the shop carries on"
    assert expected in failures, list(failures)
    assert "omnichannel receiver receive_basket_addition failed; the shop carries on" in failures
    error = failures[expected].exc_info[1]
    assert isinstance(error, DatabaseError), repr(error)
    assert "omnichannel_event" in str(error)
    _assert_transaction_usable()
