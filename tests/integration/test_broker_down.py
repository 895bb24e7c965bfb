"""Checkout never waits on the Celery broker: events are rows, folded once the broker is back.

The broker is a loopback "black hole": it accepts TCP connections and never answers, which is
what a hung Redis or RabbitMQ looks like to a client. Anything in the request path that
talked to the broker would either hang (caught by the timeout) or be counted.
"""

from __future__ import annotations

import socket
import threading

import pytest
from oscar.core.loading import get_model

from omnichannel.profiles.models import CustomerProfile, Event, EventType
from omnichannel.tasks import fold_events_task
from tests import shop

Order = get_model("order", "Order")


class BlackHole:
    """A TCP server on 127.0.0.1 that accepts connections, counts them and never answers."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.1)
        self.port: int = self.server.getsockname()[1]
        self.connections = 0
        self._accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="black-hole", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            self._accepted.append(conn)  # kept open, never read from or written to

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._accepted:
            conn.close()
        self.server.close()


@pytest.fixture
def black_hole():
    hole = BlackHole()
    yield hole
    hole.close()


# transaction=True: the checkout's transactions really commit, so on_commit hooks (a common
# place to send a task) run as they would in production.
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheme", ["redis", "amqp"])
def test_checkout_with_the_broker_down_records_events_and_folds_later(
    client, black_hole, celery_broker, scheme
):
    broker_url = {
        "redis": f"redis://127.0.0.1:{black_hole.port}/0",
        "amqp": f"amqp://guest:guest@127.0.0.1:{black_hole.port}//",
    }[scheme]
    celery_broker(broker_url)
    product = shop.create_product("30.00", title="Toaster")

    shop.add_to_basket(client, product)
    order = shop.checkout(client, guest_email="down@example.com")

    assert Order.objects.filter(pk=order.pk).exists()
    events = Event.objects.order_by("pk")
    assert list(events.values_list("type", flat=True)) == [
        EventType.BASKET_LINE_ADDED,
        EventType.ORDER_PLACED,
    ]
    assert not events.filter(processed_at__isnull=False).exists()
    assert not CustomerProfile.objects.exists()
    assert black_hole.connections == 0, "the request path connected to the Celery broker"

    # The broker is back: the fold task (run here in-process) catches up with the events.
    celery_broker("memory://")
    fold_events_task.apply().get()

    assert not Event.objects.filter(processed_at__isnull=True).exists()
    profile = CustomerProfile.objects.get()
    assert set(Event.objects.values_list("profile_id", flat=True)) == {profile.pk}
    assert profile.orders_count == 1
    assert profile.total_spent == order.total_incl_tax
    assert black_hole.connections == 0
