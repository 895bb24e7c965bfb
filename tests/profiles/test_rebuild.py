"""omnichannel_rebuild_profiles: backfill from Oscar, fold, recompute."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from oscar.test import factories

from omnichannel.profiles.models import CustomerProfile, Event, EventType

pytestmark = pytest.mark.django_db


def rebuild(*args: str) -> str:
    out = StringIO()
    call_command("omnichannel_rebuild_profiles", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_backfill_builds_profiles_for_a_shop_with_history(django_user_model):
    user = django_user_model.objects.create_user("old", "old@example.com", "x")
    orders = [factories.create_order(user=user) for _ in range(2)]
    guest_order = factories.create_order(guest_email="walkin@example.com")
    long_ago = timezone.now() - timedelta(days=400)
    django_user_model.objects.filter(pk=user.pk).update(date_joined=long_ago)
    # Orders placed before the app was installed have no events:
    Event.objects.all().delete()

    output = rebuild("--backfill", "--verbosity", "0")
    assert "profiles in all" in output

    profile = CustomerProfile.objects.get(user=user)
    assert profile.orders_count == 2
    assert profile.total_spent == sum(o.total_incl_tax for o in orders)
    assert profile.registered_at == long_ago
    guest = CustomerProfile.objects.get(identities__value="walkin@example.com")
    assert guest.orders_count == 1 and guest.total_spent == guest_order.total_incl_tax

    # Running it again records nothing twice.
    events = Event.objects.count()
    rebuild("--backfill", "--verbosity", "0")
    assert Event.objects.count() == events
    assert CustomerProfile.objects.count() == 2


def test_rebuild_repairs_stale_aggregates():
    factories.create_order(guest_email="stale@example.com")
    rebuild("--verbosity", "0")
    profile = CustomerProfile.objects.get()
    CustomerProfile.objects.update(orders_count=99, total_spent=Decimal("1"))
    rebuild("--verbosity", "0")
    profile.refresh_from_db()
    assert profile.orders_count == 1
    assert Event.objects.filter(type=EventType.ORDER_PLACED).count() == 1


def test_rebuild_refuses_a_bad_batch_size():
    with pytest.raises(CommandError, match="at least 1"):
        rebuild("--batch-size", "0")
