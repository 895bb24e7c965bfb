"""Identity resolution and merging, on events written directly (no HTTP)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from omnichannel.profiles.consents import current_consents, has_consent, record_consent
from omnichannel.profiles.identity import event_identity_keys, fold_pending_events
from omnichannel.profiles.merge import MergeRefused, merge_profiles
from omnichannel.profiles.models import (
    Channel,
    CustomerProfile,
    Event,
    EventSource,
    EventType,
    Identity,
    IdentityKind,
    ProfileMerge,
    PurchasedCategory,
    Purpose,
)
from omnichannel.profiles.recording import record_event

pytestmark = pytest.mark.django_db


def fold() -> int:
    return fold_pending_events(now=timezone.now(), batch_size=500)


def profile_of(kind: str, value: str) -> CustomerProfile:
    return Identity.objects.get(kind=kind, value=value).profile


def test_offline_purchase_by_phone_merges_into_the_online_customer(django_user_model):
    user = django_user_model.objects.create_user("ann", "ann@example.com", "x")
    record_event(EventType.USER_LOGGED_IN, user=user, visitor_key="a" * 32)
    record_event(
        EventType.ORDER_PLACED,
        user=user,
        identities={"email": "ann@example.com", "phone": "+44 7911 123456"},
        amount=Decimal("20.00"),
    )
    fold()
    record_event(
        EventType.ORDER_PLACED,
        source=EventSource.OFFLINE,
        identities={"phone": "07911123456", "loyalty_card": "card 77"},
        amount=Decimal("100.00"),
    )
    fold()
    profile = CustomerProfile.objects.get()
    assert profile.user == user
    assert profile.orders_count == 2
    assert profile.total_spent == Decimal("120.00")
    assert profile.average_order_value == Decimal("60.00")
    assert profile.seen_on_web and profile.seen_offline and not profile.seen_on_app
    assert profile_of(IdentityKind.LOYALTY_CARD, "CARD77") == profile


def test_two_stored_profiles_merge_when_one_event_names_both(django_user_model):
    record_event("app_opened", source=EventSource.APP, identities={"device": "dev-1"})
    record_event(EventType.PRODUCT_VIEWED, visitor_key="b" * 32)
    fold()
    assert CustomerProfile.objects.count() == 2
    older = profile_of(IdentityKind.DEVICE, "dev-1")
    record_consent(
        older, channel=Channel.PUSH, purpose=Purpose.MARKETING, granted=True, now=timezone.now()
    )
    record_event("linked", visitor_key="b" * 32, identities={"device": "dev-1"})
    fold()
    profile = CustomerProfile.objects.get()
    assert profile.pk == older.pk  # no user on either side: the older one survives
    assert profile.devices_count == 1
    assert profile.seen_on_app and profile.seen_on_web
    assert has_consent(profile, channel=Channel.PUSH, purpose=Purpose.MARKETING)
    merge = ProfileMerge.objects.get()
    assert merge.moved == {"omnichannel.event": 1, "omnichannel.identity": 1}


def test_profile_with_a_user_account_survives_even_if_younger(django_user_model):
    record_event(EventType.PRODUCT_VIEWED, identities={"email": "zed@example.com"})
    fold()
    anonymous = profile_of(IdentityKind.EMAIL, "zed@example.com")
    user = django_user_model.objects.create_user("zed", "zed@example.com", "x")
    record_event(EventType.USER_LOGGED_IN, user=user, visitor_key="c" * 32)
    fold()
    registered = CustomerProfile.objects.get(user=user)
    assert registered.pk != anonymous.pk
    record_event(EventType.USER_LOGGED_IN, user=user, identities={"email": "ZED@example.com"})
    fold()
    assert list(CustomerProfile.objects.values_list("pk", flat=True)) == [registered.pk]


def test_two_user_accounts_are_never_merged(django_user_model, caplog):
    alice = django_user_model.objects.create_user("alice", "alice@example.com", "x")
    bob = django_user_model.objects.create_user("bob", "bob@example.com", "x")
    shared_tablet = "d" * 32
    record_event(EventType.USER_LOGGED_IN, user=alice, visitor_key=shared_tablet)
    fold()
    record_event(EventType.USER_LOGGED_IN, user=bob, visitor_key=shared_tablet)
    fold()
    assert CustomerProfile.objects.count() == 2
    bob_event = Event.objects.filter(user=bob).get()
    assert bob_event.profile.user == bob
    assert "two user accounts" in caplog.text

    a = CustomerProfile.objects.get(user=alice)
    b = CustomerProfile.objects.get(user=bob)
    with pytest.raises(MergeRefused):
        merge_profiles(a, b, reason="test")


def test_bad_identity_values_still_give_a_profile(caplog):
    record_event(
        EventType.ORDER_PLACED,
        identities={"email": "   ", "phone": "not a phone", "loyalty_card": ""},
        visitor_key="e" * 32,
        payload={"first_name": "Zoë", "last_name": "Søren-Łukasz 山田"},
        amount=Decimal("9.99"),
    )
    record_event("odd", identities={"email": "no-at-sign", "phone": 12345, "unknown": "x"})
    record_event("nothing")
    assert fold() == 3
    profile = CustomerProfile.objects.get()
    assert list(profile.identities.values_list("kind", flat=True)) == [IdentityKind.VISITOR]
    assert (profile.first_name, profile.last_name) == ("Zoë", "Søren-Łukasz 山田")
    assert profile.orders_count == 1
    # an event that names nobody is kept in the log, processed, without a profile
    assert Event.objects.filter(profile__isnull=True, processed_at__isnull=False).count() == 2
    assert "is not a valid email" in caplog.text or "is not a phone number" in caplog.text


def test_identity_keys_are_normalised_and_ordered_by_strength(settings):
    settings.OMNICHANNEL = {"DEFAULT_PHONE_REGION": "DE"}
    event = Event(
        user_id=7,
        visitor_key="f" * 32,
        identities={"phone": "030 901820", "email": " Max@Example.DE ", "device": " tok "},
    )
    assert event_identity_keys(event) == [
        ("user", "7"),
        ("email", "max@example.de"),
        ("phone", "+4930901820"),
        ("device", "tok"),
        ("visitor", "f" * 32),
    ]


def test_queries_per_batch_do_not_grow_with_the_batch():
    def queries_to_fold(count: int, offset: int) -> int:
        for i in range(count):
            record_event(
                EventType.ORDER_PLACED,
                identities={"email": f"p{offset + i}@example.com"},
                visitor_key=f"{offset + i:032x}",
                amount=Decimal("5.00"),
            )
        with CaptureQueriesContext(connection) as ctx:
            assert fold() == count
        return len(ctx.captured_queries)

    small, large = queries_to_fold(5, 0), queries_to_fold(60, 1000)
    # 55 more events, yet at most a few more statements: SQLite caps a statement at 999
    # parameters, so Django splits the bulk writes into more chunks there (flat on PostgreSQL).
    assert large - small <= (0 if connection.vendor == "postgresql" else 3)


def test_aggregates_come_from_the_event_log():
    now = timezone.now()
    for days, amount in ((30, "10.00"), (10, "30.00")):
        record_event(
            EventType.ORDER_PLACED,
            identities={"email": "agg@example.com"},
            amount=Decimal(amount),
            occurred_at=now - timedelta(days=days),
        )
    record_event(
        EventType.BASKET_LINE_ADDED,
        identities={"email": "agg@example.com", "device": "phone-1"},
        source=EventSource.APP,
        occurred_at=now - timedelta(days=1),
    )
    fold()
    profile = CustomerProfile.objects.get()
    assert profile.orders_count == 2
    assert profile.total_spent == Decimal("40.00")
    assert profile.average_order_value == Decimal("20.00")
    assert profile.first_order_at == now - timedelta(days=30)
    assert profile.last_order_at == now - timedelta(days=10)
    assert profile.last_seen_at == now - timedelta(days=1)
    assert profile.last_basket_activity_at == now - timedelta(days=1)
    assert profile.devices_count == 1
    assert profile.sources == ["web", "app"]


def test_a_phone_with_one_time_zone_gives_the_profile_its_time_zone():
    for phone in ("+4915112345678", "+79161234567"):  # Berlin; Russia spans eleven zones
        record_event(EventType.USER_LOGGED_IN, identities={"phone": phone})
    record_event(EventType.USER_LOGGED_IN, identities={"email": "tz@example.com"})
    fold()
    assert profile_of("phone", "+4915112345678").time_zone == "Europe/Berlin"
    assert profile_of("phone", "+79161234567").time_zone == ""
    assert profile_of("email", "tz@example.com").time_zone == ""
    # A zone staff or the API set is kept.
    chosen = profile_of("phone", "+4915112345678")
    CustomerProfile.objects.filter(pk=chosen.pk).update(time_zone="Europe/Lisbon")
    record_event(EventType.USER_LOGGED_IN, identities={"phone": "+4915112345678"})
    fold()
    assert profile_of("phone", "+4915112345678").time_zone == "Europe/Lisbon"


def test_latest_consent_wins_and_history_is_kept():
    profile = CustomerProfile.objects.create()
    now = timezone.now()
    record_consent(profile, channel="email", purpose="marketing", granted=True, now=now)
    record_consent(
        profile, channel="email", purpose="marketing", granted=False, now=now + timedelta(1)
    )
    record_consent(profile, channel="sms", purpose="transactional", granted=True, now=now)
    assert not has_consent(profile, channel="email", purpose="marketing")
    assert has_consent(profile, channel="sms", purpose="transactional")
    assert profile.consents.count() == 3
    current = current_consents(profile)
    assert current[("email", "marketing")].granted is False
    with pytest.raises(ValueError, match="unknown channel"):
        record_consent(profile, channel="fax", purpose="marketing", granted=True, now=now)


def test_categories_bought_online_and_offline_survive_a_merge():
    from oscar.apps.catalogue.categories import create_from_breadcrumbs
    from oscar.test import factories

    fridges = create_from_breadcrumbs("Kitchen > Fridges")
    fridge = factories.create_product(title="Fridge")
    fridge.categories.add(fridges)
    fridge.structure = fridge.PARENT
    fridge.save()
    variant = type(fridge).objects.create(
        structure=fridge.CHILD, parent=fridge, title="Fridge, white"
    )
    now = timezone.now()

    def order(identities: dict, product, days_ago: int, source=EventSource.WEB) -> None:
        record_event(
            EventType.ORDER_PLACED,
            source=source,
            identities=identities,
            amount=Decimal("10.00"),
            occurred_at=now - timedelta(days=days_ago),
            payload={"lines": [{"product_id": product.pk, "quantity": 1}, {"bad": "line"}]},
        )

    order({"email": "cat@example.com"}, fridge, 30)
    order({"phone": "+447911123456"}, variant, 3, source=EventSource.OFFLINE)
    fold()
    assert CustomerProfile.objects.count() == 2
    assert PurchasedCategory.objects.count() == 2  # one per profile, the variant via its parent

    order({"email": "cat@example.com", "phone": "+447911123456"}, fridge, 1)
    fold()
    profile = CustomerProfile.objects.get()
    row = PurchasedCategory.objects.get()
    assert (row.profile, row.category, row.orders_count) == (profile, fridges, 3)
    assert row.last_bought_at == now - timedelta(days=1)


def test_update_from_pairs_takes_only_integers():
    from omnichannel.profiles.sql import update_ids_from_pairs

    with pytest.raises(TypeError, match="pairs of integers"):
        update_ids_from_pairs(Event, "profile", [(1, "1; DROP TABLE x")])


def test_a_profile_holding_an_account_without_its_identity_still_gets_its_events(
    django_user_model,
):
    user = django_user_model.objects.create_user("made", "made@example.com", "x")
    made_by_code = CustomerProfile.objects.create(user=user)
    record_event(EventType.USER_LOGGED_IN, user=user, visitor_key="9" * 32)
    assert fold() == 1
    assert list(CustomerProfile.objects.all()) == [made_by_code]
    assert made_by_code.identities.filter(kind=IdentityKind.USER, value=str(user.pk)).exists()


def test_a_guest_on_a_shared_computer_does_not_join_the_account_that_used_it_first(
    django_user_model,
):
    owner = django_user_model.objects.create_user("first", "first@example.com", "x")
    family_pc = "7" * 32
    record_event(EventType.USER_LOGGED_IN, user=owner, visitor_key=family_pc)
    fold()
    record_event(
        EventType.ORDER_PLACED,
        visitor_key=family_pc,
        identities={"email": "guest@example.com"},
        amount=Decimal("5.00"),
    )
    fold()
    guest = profile_of(IdentityKind.EMAIL, "guest@example.com")
    assert guest.user is None
    assert guest.orders_count == 1
    assert CustomerProfile.objects.get(user=owner).orders_count == 0
    assert profile_of(IdentityKind.VISITOR, family_pc).user == owner


def test_an_anonymous_visitors_cookie_still_joins_their_own_guest_checkout():
    record_event(EventType.PRODUCT_VIEWED, visitor_key="8" * 32)
    fold()
    record_event(
        EventType.ORDER_PLACED, visitor_key="8" * 32, identities={"email": "anon@example.com"}
    )
    fold()
    assert CustomerProfile.objects.count() == 1
