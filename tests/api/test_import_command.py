"""omnichannel_import_offline_orders: a till's CSV through the same service as the API."""

from __future__ import annotations

import csv
import io
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from oscar.test import factories

from omnichannel.api.models import ApiEventReceipt, ApiKey, Scope
from omnichannel.profiles.models import Event, EventSource, EventType

pytestmark = pytest.mark.django_db

HEADER = (
    "order_number,store_id,store_name,occurred_at,currency,total,phone,loyalty_card,email,"
    "first_name,last_name,sku,upc,title,quantity,unit_price\n"
)
GOOD = (
    "A-1,S12,High St,2026-03-01T10:00:00Z,GBP,549.00,07911 123456,,,Ada,L,FRIDGE-300,,,1,499.00\n"
    "A-1,S12,High St,2026-03-01T10:00:00Z,GBP,549.00,07911 123456,,,Ada,L,,KETTLE-UPC,,2,25\n"
    "A-2,S12,High St,2026-03-01T11:00:00Z,GBP,25.00,,CARD 9,,,,KET-1,,,1,25.00\n"
)
BAD = (
    "A-3,S12,High St,2026-03-01T12:00:00Z,GBP,1.00,,,bo@example.com,,,NOPE,,,1,1.00\n"
    "A-4,S12,High St,yesterday,GBP,1.00,07911123456,,,,,KET-1,,,0,1.00\n"
    "A-5,S12,High St,2026-03-01T12:00:00Z,GBP,1.00,07911123456,,,,,KET-1,,,1,1.00\n"
    "A-5,S13,Other,2026-03-01T12:00:00Z,GBP,1.00,07911123456,,,,,KET-1,,,1,1.00\n"
    "A-6,S12,High St,2026-03-01T12:00:00Z,GBP,3.00,,,,,,KET-1,,,1,3.00\n"
)


@pytest.fixture
def products():
    factories.create_product(title="Fridge", partner_sku="FRIDGE-300", price=Decimal("499"))
    factories.create_product(
        title="Kettle", partner_sku="KET-1", upc="KETTLE-UPC", price=Decimal("25")
    )


@pytest.fixture
def key():
    key, _raw = ApiKey.objects.create_key(
        name="Store 12", source=EventSource.OFFLINE, scopes=[Scope.ORDERS]
    )
    return key


def run(path, *args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "omnichannel_import_offline_orders", str(path), *args, stdout=out, stderr=err, verbosity=0
    )
    return out.getvalue(), err.getvalue()


def test_import_stores_orders_like_the_api_and_reports_rejected_rows(tmp_path, products, key):
    path = tmp_path / "sales.csv"
    path.write_text(HEADER + GOOD + BAD, encoding="utf-8")
    report = tmp_path / "rejected.csv"
    out, err = run(path, "--key", key.prefix, "--report", str(report))
    assert "6 orders in sales.csv: 2 stored, 0 already imported, 3 rejected, 1 skipped" in out
    events = {e.payload["number"]: e for e in Event.objects.all()}
    assert set(events) == {"A-1", "A-2"}
    a1 = events["A-1"]
    assert (a1.type, a1.source, a1.amount) == (EventType.ORDER_PLACED, "offline", Decimal("549"))
    assert a1.identities == {"phone": "+447911123456"}
    assert [line["sku"] for line in a1.payload["lines"]] == ["FRIDGE-300", "KET-1"]
    assert a1.payload["store"] == {"id": "S12", "name": "High St"}
    assert events["A-2"].identities == {"loyalty_card": "CARD9"}

    assert "rejected order 'A-3' (lines 5):" in err
    assert "line 5: sku: No product with partner SKU or UPC 'NOPE'." in err
    assert "rejected order 'A-4' (lines 6):" in err
    assert "occurred_at: Datetime has wrong format" in err
    assert "line 6: quantity: Ensure this value is greater than or equal to 1." in err
    assert "line 8: store_id 'S13' differs from 'S12' on line 7" in err
    rows = list(csv.DictReader(report.open(encoding="utf-8")))
    assert [row["line"] for row in rows] == ["5", "6", "7", "8"]
    assert "NOPE" in rows[0]["error"]

    # Imported again (or sent through the API too): stored once.
    out, _ = run(path, "--key", key.prefix)
    assert "0 stored, 2 already imported" in out
    assert Event.objects.count() == 2 and ApiEventReceipt.objects.count() == 2


def test_dry_run_stores_nothing(tmp_path, products, key):
    path = tmp_path / "sales.csv"
    path.write_text(HEADER + GOOD, encoding="utf-8")
    out, _ = run(path, "--key", key.prefix, "--dry-run")
    assert "2 would be stored" in out and "dry run" in out
    assert not Event.objects.exists() and not ApiEventReceipt.objects.exists()


def test_unknown_products_can_be_kept(tmp_path, products, key):
    path = tmp_path / "sales.csv"
    path.write_text(HEADER + BAD.splitlines(keepends=True)[0], encoding="utf-8")
    out, _ = run(path, "--key", key.prefix, "--allow-unknown-products")
    assert "1 stored" in out and "1 lines without a known product" in out
    assert Event.objects.get().payload["lines"][0]["product_id"] is None


def test_an_order_the_till_also_sent_through_the_api_is_stored_once(
    tmp_path, products, key, client
):
    from rest_framework.test import APIClient

    key_obj, raw = ApiKey.objects.create_key(
        name="Store 13", source=EventSource.OFFLINE, scopes=[Scope.ORDERS]
    )
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw}")
    body = {
        "number": "A-2",
        "store": {"id": "S12"},
        "occurred_at": "2026-03-01T11:00:00Z",
        "currency": "GBP",
        "total": "25.00",
        "customer": {"loyalty_card": "CARD 9"},
        "lines": [{"sku": "KET-1", "quantity": 1, "unit_price": "25.00"}],
    }
    assert (
        api.post(reverse("omnichannel-api:offline-orders"), body, format="json").status_code == 201
    )
    path = tmp_path / "sales.csv"
    path.write_text(HEADER + GOOD.splitlines(keepends=True)[2], encoding="utf-8")
    out, _ = run(path, "--key", key_obj.prefix)
    assert "0 stored, 1 already imported" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("order_number,sku\nA,B\n", "missing columns: store_id"),
        (HEADER.replace(",sku,upc", ",barcode,ean"), "sku, upc or product_id"),
    ],
)
def test_a_file_without_the_columns_is_refused(tmp_path, key, content, message):
    path = tmp_path / "sales.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CommandError, match=message):
        run(path, "--key", key.prefix)


def test_the_key_must_exist_be_active_and_have_the_orders_scope(tmp_path, key):
    from django.utils import timezone

    path = tmp_path / "sales.csv"
    path.write_text(HEADER, encoding="utf-8")
    with pytest.raises(CommandError, match="no active API key"):
        run(path, "--key", "nope")
    events_only, _ = ApiKey.objects.create_key(name="app", source="app", scopes=["events"])
    with pytest.raises(CommandError, match="lacks the 'orders' scope"):
        run(path, "--key", events_only.prefix)
    with pytest.raises(CommandError, match="No such file"):
        run(tmp_path / "missing.csv", "--key", key.prefix)
    key.revoke(now=timezone.now())
    with pytest.raises(CommandError, match="no active API key"):
        run(path, "--key", key.prefix)
