"""The built-in triggers, fed by real events: Oscar's views through the test client (or the
recording helpers), folded by ``fold_pending_events``, whose signal enrolls."""

from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse
from oscar.core.loading import get_class, get_model

from omnichannel.api.services import offline_order_event
from omnichannel.campaigns.enrolling import scan_triggers
from omnichannel.campaigns.models import (
    Enrollment,
    EnrollmentAction,
    EnrollmentLog,
    ExitReason,
)
from omnichannel.campaigns.triggers import builtin, registry
from omnichannel.profiles.models import CustomerProfile, Event, EventSource, EventType
from omnichannel.profiles.recording import record_event, registration_event, save_event
from omnichannel.segments.models import Segment
from tests import shop
from tests.campaigns.conftest import NOW

pytestmark = pytest.mark.django_db

Basket = get_model("basket", "Basket")
Selector = get_class("partner.strategy", "Selector")
WishList = get_model("wishlists", "WishList")
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
PASSWORD = "correct-horse-9"


@pytest.fixture
def at(time_machine):
    """``at(moment)``: the clock stands still at ``moment`` (requests, events, the fold)."""

    def move(moment):
        time_machine.move_to(moment, tick=False)
        return moment

    move(NOW)
    return move


def enrollment(**filters) -> Enrollment:
    return Enrollment.objects.get(**filters)


def current(trigger_key: str, *enrollments: Enrollment):
    return registry[trigger_key].current_items(list(enrollments))


def context(trigger_key: str, *enrollments: Enrollment):
    return registry[trigger_key].template_context(list(enrollments))


def latest_basket():
    """The basket of the latest basket event (Oscar keeps a visitor's in a signed cookie)."""
    return Event.objects.filter(basket__isnull=False).latest("pk").basket


def customer(django_user_model, client, email: str = "ada@example.com"):
    user = django_user_model.objects.create_user(email, email, PASSWORD)
    assert client.login(username=email, password=PASSWORD)
    return user


def validate(key: str, options):
    return registry[key].validate_options(options)


# --- abandoned basket --------------------------------------------------------------------------


def test_a_basket_change_enrolls_and_each_change_restarts_the_timer(
    client, at, make_campaign, fold
):
    make_campaign("abandoned_basket", options={"delay_minutes": 60})
    fridge, kettle = shop.create_product(title="Fridge"), shop.create_product(title="Kettle")
    client.get("/")
    shop.add_to_basket(client, fridge)
    fold()
    basket = latest_basket()
    enrolled = enrollment()
    assert enrolled.subject_key == f"basket:{basket.pk}"
    assert enrolled.profile == CustomerProfile.objects.get()
    assert enrolled.next_due_at == NOW + HOUR
    assert enrolled.last_activity_at == NOW
    assert enrolled.context == {"basket_id": basket.pk}

    at(NOW + 30 * MINUTE)
    shop.add_to_basket(client, kettle, quantity=2)
    fold()
    enrolled.refresh_from_db()
    assert enrolled.next_due_at == NOW + 90 * MINUTE
    assert enrolled.last_activity_at == NOW + 30 * MINUTE
    assert list(enrolled.log.values_list("action", flat=True)) == [
        EnrollmentAction.ENROLLED,
        EnrollmentAction.RESTARTED,
    ]
    assert current("abandoned_basket", enrolled) == {enrolled.pk: [fridge.pk, kettle.pk]}
    assert context("abandoned_basket", enrolled) == {
        enrolled.pk: {
            "basket_id": basket.pk,
            "items": [fridge.pk, kettle.pk],
            "quantities": {str(fridge.pk): 1, str(kettle.pk): 2},
        }
    }


def test_a_checked_out_basket_converts(client, at, make_campaign, fold):
    make_campaign("abandoned_basket")
    client.get("/")
    shop.add_to_basket(client, shop.create_product())
    fold()
    shop.checkout(client, guest_email="guest@example.com")
    fold()
    enrolled = enrollment()
    assert current("abandoned_basket", enrolled) == {enrolled.pk: ExitReason.CONVERTED}


def test_an_emptied_merged_frozen_or_deleted_basket_is_gone(client, at, make_campaign, fold):
    make_campaign("abandoned_basket")
    products = [shop.create_product(title=f"P{i}") for i in range(4)]
    baskets = []
    for product in products:
        shopper = client.__class__()
        shopper.get("/")
        shop.add_to_basket(shopper, product)
        baskets.append(latest_basket())
    fold()
    by_basket = {e.context["basket_id"]: e for e in Enrollment.objects.all()}
    emptied, merged, frozen, deleted = baskets
    emptied.lines.all().delete()
    Basket.objects.filter(pk=merged.pk).update(status=Basket.MERGED)
    Basket.objects.filter(pk=frozen.pk).update(status=Basket.FROZEN)
    deleted.delete()
    found = current("abandoned_basket", *by_basket.values())
    assert set(found.values()) == {ExitReason.SUBJECT_GONE}
    assert len(found) == 4


def test_a_change_that_empties_a_basket_enrolls_nobody(client, at, make_campaign, fold):
    make_campaign("abandoned_basket")
    client.get("/")
    shop.add_to_basket(client, shop.create_product())
    latest_basket().lines.get().delete()  # a basket_line_removed event, basket empty
    fold()
    assert Event.objects.filter(type=EventType.BASKET_LINE_REMOVED).exists()
    assert not Enrollment.objects.exists()


def test_basket_items_cost_two_queries_for_any_number_of_enrollments(
    client, at, make_campaign, fold, django_assert_num_queries
):
    make_campaign("abandoned_basket")
    for index in range(5):
        shopper = client.__class__()
        shopper.get("/")
        shop.add_to_basket(shopper, shop.create_product(title=f"P{index}"))
    fold()
    enrollments = list(Enrollment.objects.all())
    assert len(enrollments) == 5
    with django_assert_num_queries(2):
        found = current("abandoned_basket", *enrollments)
    assert all(isinstance(items, list) and len(items) == 1 for items in found.values())
    with django_assert_num_queries(1):
        context("abandoned_basket", *enrollments)


def test_stale_basket_events_enroll_nobody(make_campaign, make_profile, fold, at):
    make_campaign("abandoned_basket")
    email = make_profile().identities.get().value
    basket = Basket.objects.create()
    basket.strategy = Selector().strategy()
    basket.add_product(shop.create_product())
    Event.objects.all().delete()  # the line's own event: this test records its own

    def changed(when):
        record_event(
            EventType.BASKET_LINE_ADDED,
            identities={"email": email},
            basket_id=basket.pk,
            occurred_at=when,
        )
        fold()

    changed(NOW - 10 * DAY)  # uploaded late by an app that was offline: history
    assert not Enrollment.objects.exists()
    changed(NOW - 2 * DAY)  # late, but the reminder is still worth sending
    assert enrollment().next_due_at == NOW - 2 * DAY + HOUR


def test_abandoned_basket_options_are_validated():
    assert validate("abandoned_basket", {}) == {"delay_minutes": 60}
    with pytest.raises(ValidationError, match="delay_minutes: must be a whole number"):
        validate("abandoned_basket", {"delay_minutes": "60"})
    with pytest.raises(ValidationError, match="at least 0"):
        validate("abandoned_basket", {"delay_minutes": -5})
    with pytest.raises(ValidationError, match="delay: unknown option"):
        validate("abandoned_basket", {"delay": 5})


# --- abandoned wishlist ------------------------------------------------------------------------


def test_a_wishlist_addition_enrolls_after_days_and_reminds_of_its_products(
    client, at, django_user_model, make_campaign, fold
):
    make_campaign("abandoned_wishlist", options={"days": 3})
    user = customer(django_user_model, client)
    lamp, rug = shop.create_product(title="Lamp"), shop.create_product(title="Rug")
    client.post(reverse("customer:wishlists-add-product", args=[lamp.pk]))
    fold()
    wishlist = WishList.objects.get(owner=user)
    enrolled = enrollment()
    assert enrolled.subject_key == f"wishlist:{wishlist.pk}"
    assert enrolled.profile.user == user
    assert enrolled.next_due_at == NOW + 3 * DAY

    at(NOW + DAY)
    client.post(reverse("customer:wishlists-add-product", args=[rug.pk]))
    fold()
    enrolled.refresh_from_db()
    assert enrolled.next_due_at == NOW + 4 * DAY  # restarted
    assert current("abandoned_wishlist", enrolled) == {enrolled.pk: [lamp.pk, rug.pk]}
    assert context("abandoned_wishlist", enrolled) == {
        enrolled.pk: {
            "wishlist_id": wishlist.pk,
            "items": [lamp.pk, rug.pk],
            "quantities": {str(lamp.pk): 1, str(rug.pk): 1},
        }
    }
    wishlist.lines.all().delete()
    assert current("abandoned_wishlist", enrolled) == {enrolled.pk: ExitReason.SUBJECT_GONE}
    wishlist.delete()
    assert current("abandoned_wishlist", enrolled) == {enrolled.pk: ExitReason.SUBJECT_GONE}


def test_a_wishlist_event_without_its_id_is_matched_by_owner_and_product(
    at, django_user_model, make_campaign, fold
):
    make_campaign("abandoned_wishlist")
    user = django_user_model.objects.create_user("wes", "wes@example.com", PASSWORD)
    lamp = shop.create_product(title="Lamp")
    wishlist = WishList.objects.create(owner=user, name="Mine")
    wishlist.add(lamp)
    Event.objects.all().delete()  # as if recorded by other code, without the wishlist id
    record_event(EventType.WISHLIST_LINE_ADDED, user_id=user.pk, product_id=lamp.pk)
    fold()
    assert enrollment().subject_key == f"wishlist:{wishlist.pk}"


def test_abandoned_wishlist_options_are_validated():
    assert validate("abandoned_wishlist", {"days": 7}) == {"days": 7}
    with pytest.raises(ValidationError, match="days: must be a whole number"):
        validate("abandoned_wishlist", {"days": 1.5})


# --- post-purchase -----------------------------------------------------------------------------


def test_an_online_order_enrolls_with_its_lines(client, at, make_campaign, fold):
    make_campaign("post_purchase", options={"delay_hours": 48})
    fridge, kettle = shop.create_product(title="Fridge"), shop.create_product(title="Kettle")
    client.get("/")
    shop.add_to_basket(client, fridge)
    shop.add_to_basket(client, kettle, quantity=3)
    order = shop.checkout(client, guest_email="guest@example.com")
    fold()
    enrolled = enrollment()
    assert enrolled.subject_key == f"order:{order.pk}"
    assert enrolled.next_due_at == order.date_placed + 48 * HOUR
    assert context("post_purchase", enrolled) == {
        enrolled.pk: {
            "order_id": order.pk,
            "number": order.number,
            "items": [fridge.pk, kettle.pk],
            "quantities": {str(fridge.pk): 1, str(kettle.pk): 3},
        }
    }
    assert registry["post_purchase"].order_converts


def test_an_offline_order_enrolls_by_its_event(at, make_campaign, fold):
    make_campaign("post_purchase")
    kettle = shop.create_product(title="Kettle")
    order = {
        "number": "S-1001",
        "customer": {"email": "shopper@example.com"},
        "store": {"id": "berlin-1"},
        "total": Decimal("30.00"),
        "currency": "EUR",
        "occurred_at": NOW - 2 * HOUR,
    }
    lines = [
        {
            "product_id": kettle.pk,
            "sku": "K",
            "upc": "",
            "title": "Kettle",
            "quantity": 2,
            "price": "30.00",
        },
        {
            "product_id": None,
            "sku": "?",
            "upc": "",
            "title": "Unknown",
            "quantity": 1,
            "price": "0.00",
        },
    ]
    event = save_event(offline_order_event(order, lines, now=NOW))
    assert event.source == EventSource.OFFLINE
    fold()
    enrolled = enrollment()
    assert enrolled.subject_key == f"order:event-{event.pk}"
    assert enrolled.next_due_at == NOW - 2 * HOUR + 24 * HOUR
    assert context("post_purchase", enrolled)[enrolled.pk] == {
        "order_id": None,
        "number": "S-1001",
        "items": [kettle.pk],
        "quantities": {str(kettle.pk): 2},
    }


# --- welcome -----------------------------------------------------------------------------------


def test_registering_enrolls_once(client, at, django_user_model, make_campaign, fold):
    make_campaign("welcome", options={"delay_minutes": 15})
    client.get("/")
    shop.register(client, "ada@example.com")
    fold()
    enrolled = enrollment()
    assert enrolled.subject_key == "welcome"
    assert enrolled.next_due_at == NOW + 15 * MINUTE
    assert enrolled.profile.user.email == "ada@example.com"
    # Another registration event for the same person (a backfill, say) changes nothing.
    at(NOW + DAY)
    save_event(registration_event(enrolled.profile.user))
    fold()
    assert Enrollment.objects.count() == 1


def test_a_backfilled_registration_is_not_welcomed(at, django_user_model, make_campaign, fold):
    make_campaign("welcome")
    user = django_user_model.objects.create_user("old", "old@example.com", PASSWORD)
    save_event(registration_event(user, occurred_at=NOW - 400 * DAY))
    fold()
    assert CustomerProfile.objects.filter(user=user).exists()
    assert not Enrollment.objects.exists()


# --- win-back ----------------------------------------------------------------------------------


def lapsed_segment(slug: str = "lapsed") -> Segment:
    rules = {
        "op": "all",
        "negate": False,
        "children": [{"type": "orders_count", "negate": False, "params": {"min": 1}}],
    }
    return Segment.objects.create(name=slug.title(), slug=slug, rules=rules)


def test_win_back_scans_enroll_segment_members_once_per_cooldown(
    make_campaign, make_profile, django_assert_num_queries
):
    segment = lapsed_segment()
    campaign = make_campaign("win_back", options={"segment": "lapsed", "cooldown_days": 30})
    ada, bob = make_profile(orders_count=2), make_profile(orders_count=1)
    make_profile(orders_count=0)  # not in the segment

    assert scan_triggers(now=NOW) == 2
    rows = Enrollment.objects.filter(campaign=campaign)
    assert set(rows.values_list("profile", flat=True)) == {ada.pk, bob.pk}
    first = rows.get(profile=ada)
    assert first.subject_key == "winback:2026-03-16"
    assert first.next_due_at == NOW
    assert first.context == {"segment_id": segment.pk}

    with django_assert_num_queries(1):  # scanned an hour ago at most: nothing to do
        assert scan_triggers(now=NOW + 30 * MINUTE) == 0
    assert scan_triggers(now=NOW + 2 * DAY) == 0  # scanned again, everyone cooling down
    cy = make_profile(orders_count=3)
    assert scan_triggers(now=NOW + 3 * DAY) == 1  # a new member
    assert rows.get(profile=cy).subject_key == "winback:2026-03-19"
    assert scan_triggers(now=NOW + 31 * DAY) == 2  # ada and bob again, cy still cooling
    assert rows.filter(profile=ada).count() == 2


def test_win_back_streams_members_in_chunks(make_campaign, make_profile, monkeypatch):
    monkeypatch.setattr(builtin, "SCAN_CHUNK_SIZE", 2)
    lapsed_segment()
    campaign = make_campaign("win_back", options={"segment": "lapsed"})
    profiles = [make_profile(orders_count=1) for _ in range(5)]
    spec_stream = registry["win_back"].scan(campaign, now=NOW)
    assert [s.profile_id for s in spec_stream] == [p.pk for p in profiles]
    assert scan_triggers(now=NOW) == 5


def test_win_back_finds_its_segment_by_id_or_slug(make_campaign, make_profile):
    segment = lapsed_segment(slug="2024")
    other = lapsed_segment(slug="other")
    make_profile(orders_count=1)
    by_slug = make_campaign("win_back", options={"segment": "2024"})
    by_id = make_campaign("win_back", options={"segment": other.pk})
    by_id_text = make_campaign("win_back", options={"segment": str(other.pk)})
    assert builtin.find_segment("2024") == segment  # a slug of digits wins over an id
    assert scan_triggers(now=NOW) == 3
    assert Enrollment.objects.filter(campaign__in=[by_slug, by_id, by_id_text]).count() == 3


def test_a_win_back_segment_deleted_later_is_logged_and_enrolls_nobody(
    make_campaign, make_profile, caplog
):
    segment = lapsed_segment()
    campaign = make_campaign("win_back", options={"segment": segment.pk})
    make_profile(orders_count=1)
    segment.delete()
    with caplog.at_level(logging.ERROR, logger="omnichannel.campaigns"):
        assert scan_triggers(now=NOW) == 0
    assert "does not exist" in caplog.text
    campaign.refresh_from_db()
    assert campaign.last_scanned_at == NOW


def test_win_back_options_are_validated():
    lapsed_segment()
    assert validate("win_back", {"segment": "lapsed"}) == {
        "segment": "lapsed",
        "cooldown_days": 90,
    }
    with pytest.raises(ValidationError, match="segment: required"):
        validate("win_back", {})
    for bad in (["lapsed"], True, 1.5, ""):
        with pytest.raises(ValidationError, match="segment: must be a segment id or slug"):
            validate("win_back", {"segment": bad})
    with pytest.raises(ValidationError, match="no segment with id or slug 'gone'"):
        validate("win_back", {"segment": "gone"})
    with pytest.raises(ValidationError, match="cooldown_days"):
        validate("win_back", {"segment": "lapsed", "cooldown_days": "ninety"})


def test_campaign_clean_reports_bad_trigger_options(make_campaign):
    campaign = make_campaign("win_back", options={"segment": "nope"})
    with pytest.raises(ValidationError) as info:
        campaign.full_clean()
    assert "no segment with id or slug 'nope'" in str(info.value.message_dict["trigger_options"])


# --- browse abandonment ------------------------------------------------------------------------


def view(client, product, times: int = 1) -> None:
    for _ in range(times):
        shop.view_product(client, product)


def test_repeated_views_without_a_basket_add_enroll(client, at, make_campaign, fold):
    make_campaign("browse_abandonment", options={"views": 3, "delay_minutes": 120})
    sofa = shop.create_product(title="Sofa")
    client.get("/")
    view(client, sofa, 2)
    fold()
    assert not Enrollment.objects.exists()  # two views are not enough

    at(NOW + HOUR)
    view(client, sofa)
    fold()
    enrolled = enrollment()
    assert enrolled.subject_key == f"browse:{sofa.pk}"
    assert enrolled.next_due_at == NOW + HOUR + 120 * MINUTE
    assert enrolled.context["views"] == 3
    assert current("browse_abandonment", enrolled) == {enrolled.pk: [sofa.pk]}
    assert context("browse_abandonment", enrolled)[enrolled.pk]["items"] == [sofa.pk]

    at(NOW + 2 * HOUR)
    view(client, sofa)  # a fourth view restarts the timer
    fold()
    enrolled.refresh_from_db()
    assert enrolled.next_due_at == NOW + 4 * HOUR

    at(NOW + 3 * HOUR)
    shop.add_to_basket(client, sofa)
    fold()
    assert current("browse_abandonment", enrolled) == {enrolled.pk: ExitReason.SUBJECT_GONE}


def test_views_after_a_basket_add_or_outside_the_window_do_not_enroll(
    client, at, make_campaign, fold
):
    make_campaign("browse_abandonment", options={"views": 2, "window_days": 7})
    sofa, lamp = shop.create_product(title="Sofa"), shop.create_product(title="Lamp")
    client.get("/")
    view(client, sofa)
    shop.add_to_basket(client, sofa)
    view(client, sofa)
    view(client, lamp)
    fold()
    at(NOW + 8 * DAY)
    view(client, lamp)  # the first lamp view is out of the window
    fold()
    assert not Enrollment.objects.filter(campaign__trigger="browse_abandonment").exists()


def test_a_variant_in_the_basket_counts_for_its_parent(client, at, make_campaign, fold):
    make_campaign("browse_abandonment", options={"views": 2})
    shirt = shop.create_product(title="Shirt")
    Product = get_model("catalogue", "Product")
    Product.objects.filter(pk=shirt.pk).update(structure="parent")
    from oscar.test import factories

    medium = factories.create_product(
        title="Shirt M", parent=shirt, price=Decimal("10.00"), num_in_stock=5
    )
    client.get("/")
    view(client, shirt, 2)
    fold()
    enrolled = enrollment()
    profile = enrolled.profile
    record_event(
        EventType.BASKET_LINE_ADDED,
        identities={},
        visitor_key=client.cookies["omnichannel_vid"].value,
        product_id=medium.pk,
        occurred_at=NOW + MINUTE,
    )
    fold()
    assert Event.objects.filter(profile=profile, product=medium).exists()
    assert current("browse_abandonment", enrolled) == {enrolled.pk: ExitReason.SUBJECT_GONE}


def test_browse_abandonment_costs_two_queries_per_batch(
    make_campaign, make_profile, django_assert_num_queries
):
    campaign = make_campaign("browse_abandonment", options={"views": 1})
    products = [shop.create_product(title=f"P{i}") for i in range(3)]
    events = []
    for _ in range(4):
        profile = make_profile()
        for product in products:
            event = record_event(EventType.PRODUCT_VIEWED, product_id=product.pk, occurred_at=NOW)
            Event.objects.filter(pk=event.pk).update(profile=profile)
            event.profile_id = profile.pk
            events.append(event)
    trigger = registry["browse_abandonment"]
    with django_assert_num_queries(2):
        specs = trigger.enrollments_for_events(campaign, events, now=NOW)
    assert len(specs) == 12


def test_browse_abandonment_options_are_validated():
    with pytest.raises(ValidationError, match="views: must be at least 1"):
        validate("browse_abandonment", {"views": 0})
    assert validate("browse_abandonment", {"window_days": 30})["views"] == 3


# --- custom event ------------------------------------------------------------------------------


def custom(profile, at_time, type: str = "loyalty_tier_reached", **payload):
    return record_event(
        type,
        identities={"email": profile.identities.get().value},
        payload=payload,
        occurred_at=at_time,
    )


def test_a_custom_event_enrolls_once_per_person_without_reenroll_after(
    at, make_campaign, make_profile, fold
):
    make_campaign(
        "custom_event", options={"event_type": "loyalty_tier_reached", "delay_minutes": 5}
    )
    profile = make_profile()
    event = custom(profile, NOW, tier="gold")
    custom(profile, NOW, type="app_opened")
    fold()
    enrolled = enrollment()
    assert enrolled.subject_key == "event"
    assert enrolled.next_due_at == NOW + 5 * MINUTE
    assert context("custom_event", enrolled) == {
        enrolled.pk: {"event": {"tier": "gold"}, "event_id": event.pk}
    }
    at(NOW + 100 * DAY)
    custom(profile, NOW + 100 * DAY, tier="platinum")
    fold()
    assert Enrollment.objects.count() == 1


def test_a_custom_event_enrolls_again_after_reenroll_after(at, make_campaign, make_profile, fold):
    week = timedelta(days=7)
    make_campaign("custom_event", options={"event_type": "app_opened"}, reenroll_after=week)
    profile = make_profile()
    custom(profile, NOW, type="app_opened")
    custom(profile, NOW + MINUTE, type="app_opened")  # same batch: one enrollment
    fold()
    bucket = int(NOW.timestamp() // week.total_seconds())
    assert list(Enrollment.objects.values_list("subject_key", flat=True)) == [f"event:{bucket}"]
    for days, expected in ((3, 1), (6, 1), (8, 2)):
        at(NOW + days * DAY)
        custom(profile, NOW + days * DAY, type="app_opened")
        fold()
        assert Enrollment.objects.count() == expected, days


def test_a_zero_reenroll_after_enrolls_on_every_event(at, make_campaign, make_profile, fold):
    make_campaign("custom_event", options={"event_type": "app_opened"}, reenroll_after=timedelta(0))
    profile = make_profile()
    events = [custom(profile, NOW, type="app_opened") for _ in range(2)]
    fold()
    assert set(Enrollment.objects.values_list("subject_key", flat=True)) == {
        f"event:id{e.pk}" for e in events
    }


def test_custom_event_options_are_validated():
    with pytest.raises(ValidationError, match="event_type: required"):
        validate("custom_event", {})
    with pytest.raises(ValidationError, match="event_type: must be a non-empty text"):
        validate("custom_event", {"event_type": "  "})
    with pytest.raises(ValidationError, match="at most 64"):
        validate("custom_event", {"event_type": "x" * 65})
    assert validate("custom_event", {"event_type": "app_opened"}) == {
        "event_type": "app_opened",
        "delay_minutes": 0,
    }


# --- every trigger -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "abandoned_basket",
        "abandoned_wishlist",
        "post_purchase",
        "welcome",
        "win_back",
        "browse_abandonment",
        "custom_event",
    ],
)
def test_each_builtin_trigger_is_registered_with_a_label_and_description(key):
    trigger = registry[key]
    assert str(trigger.label) and str(trigger.description)
    assert type(trigger).__doc__
    assert all(option.help for option in trigger.options.values())
    assert trigger.key == key


def test_nothing_enrolls_when_the_fold_had_no_profile_for_an_event(make_campaign, fold, at):
    make_campaign("custom_event", options={"event_type": "ping"})
    record_event("ping")  # names nobody
    fold()
    assert not Enrollment.objects.exists()
    assert not EnrollmentLog.objects.exists()
