"""Each built-in condition type against hand-built profiles, events and messages."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import override_settings
from oscar.apps.catalogue.categories import create_from_breadcrumbs
from oscar.test.factories import create_product
from push_notifications.models import GCMDevice, WebPushDevice

from omnichannel.channels.models import Message
from omnichannel.profiles.consents import record_consent
from omnichannel.profiles.models import (
    Event,
    EventType,
    Identity,
    IdentityKind,
    PurchasedCategory,
)
from omnichannel.segments.models import EngagementScore, PurchasedProduct, RfmScore
from omnichannel.segments.rules import RuleError

from .conftest import NOW, cond, days_ago, group, matching, one, profile

pytestmark = pytest.mark.django_db


# --- Profile facts ----------------------------------------------------------------------------
def test_orders_count_bounds_and_negation():
    none, two, five = profile(), profile(orders_count=2), profile(orders_count=5)
    assert one("orders_count", min=2) == {two.pk, five.pk}
    assert one("orders_count", max=2) == {none.pk, two.pk}
    assert one("orders_count", min=2, max=4) == {two.pk}
    assert one("orders_count", min=2, max=2) == {two.pk}
    assert one("orders_count", negate=True, min=2, max=4) == {none.pk, five.pk}


def test_money_conditions_take_decimals():
    low = profile(total_spent=Decimal("10.00"), average_order_value=Decimal("10.00"))
    high = profile(total_spent=Decimal("250.50"), average_order_value=Decimal("125.25"))
    assert one("total_spent", min="250.50") == {high.pk}
    assert one("total_spent", max="250.49") == {low.pk}
    assert one("average_order_value", min=100) == {high.pk}
    assert one("average_order_value", min="10", max="10.00") == {low.pk}


def test_days_since_first_and_last_order():
    never = profile()
    old = profile(first_order_at=days_ago(400), last_order_at=days_ago(90))
    recent = profile(first_order_at=days_ago(20), last_order_at=days_ago(2))
    assert one("days_since_last_order", min=60) == {old.pk}
    assert one("days_since_last_order", max=30) == {recent.pk}
    assert one("days_since_last_order", min=1, max=100) == {old.pk, recent.pk}
    # Never ordered: no "days since", so only the negation includes them.
    assert one("days_since_last_order", negate=True, min=60) == {never.pk, recent.pk}
    assert one("days_since_first_order", min=365) == {old.pk}
    # The boundary: exactly 90 days ago is "at least 90 days".
    assert one("days_since_last_order", min=90) == {old.pk}
    assert one("days_since_last_order", min=91) == set()


def test_days_since_registration():
    guest = profile()
    member = profile(registered_at=days_ago(10))
    assert one("days_since_registration", max=30) == {member.pk}
    assert one("days_since_registration", min=30) == set()
    assert one("days_since_registration", negate=True, max=30) == {guest.pk}


def test_last_seen_within_and_not_within():
    never = profile()
    lately = profile(last_seen_at=days_ago(3))
    long_ago = profile(last_seen_at=days_ago(100))
    assert one("last_seen", days=7) == {lately.pk}
    # "not seen within 30 days" includes people never seen.
    assert one("last_seen", negate=True, days=30) == {never.pk, long_ago.pk}


def test_sources_used_any_or_all():
    web = profile(seen_on_web=True)
    both = profile(seen_on_web=True, seen_offline=True)
    app = profile(seen_on_app=True)
    assert one("sources_used", sources=["web", "offline"], match="any") == {web.pk, both.pk}
    assert one("sources_used", sources=["web", "offline"], match="all") == {both.pk}
    assert one("sources_used", sources=["app"], match="any") == {app.pk}


def test_devices_count():
    profile(devices_count=1)
    two = profile(devices_count=2)
    assert one("devices_count", min=2) == {two.pk}


def test_has_contact_by_identity_kind():
    mail = profile()
    Identity.objects.create(profile=mail, kind=IdentityKind.EMAIL, value="a@example.com")
    phone = profile()
    Identity.objects.create(profile=phone, kind=IdentityKind.PHONE, value="+447911123456")
    chat = profile()
    Identity.objects.create(profile=chat, kind=IdentityKind.TELEGRAM, value="12345")
    assert one("has_contact", kind="email") == {mail.pk}
    assert one("has_contact", kind="phone") == {phone.pk}
    assert one("has_contact", kind="telegram") == {chat.pk}
    assert one("has_contact", negate=True, kind="email") == {phone.pk, chat.pk}


def test_has_push_device_by_identity_or_active_push_notifications_device(django_user_model):
    app_only = profile()
    Identity.objects.create(profile=app_only, kind=IdentityKind.DEVICE, value="token-1")
    browser_user = django_user_model.objects.create_user("web", "web@example.com", "x")
    browser = profile(user=browser_user)
    WebPushDevice.objects.create(
        user=browser_user, registration_id="r", p256dh="p", auth="a", browser="CHROME"
    )
    stale_user = django_user_model.objects.create_user("old", "old@example.com", "x")
    stale = profile(user=stale_user)
    GCMDevice.objects.create(user=stale_user, registration_id="gone", active=False)
    nobody = profile()
    assert one("has_contact", kind="push") == {app_only.pk, browser.pk}
    assert one("has_contact", negate=True, kind="push") == {stale.pk, nobody.pk}


def test_consent_latest_record_wins():
    granted = profile()
    record_consent(granted, channel="email", purpose="marketing", granted=True, now=days_ago(5))
    withdrawn = profile()
    record_consent(withdrawn, channel="email", purpose="marketing", granted=True, now=days_ago(9))
    record_consent(withdrawn, channel="email", purpose="marketing", granted=False, now=days_ago(1))
    other_purpose = profile()
    record_consent(
        other_purpose, channel="email", purpose="transactional", granted=True, now=days_ago(1)
    )
    same_time = profile()  # two records at the same moment: the later row (higher id) wins
    record_consent(same_time, channel="email", purpose="marketing", granted=True, now=NOW)
    record_consent(same_time, channel="email", purpose="marketing", granted=False, now=NOW)
    never = profile()
    assert one("consent", channel="email", purpose="marketing") == {granted.pk}
    # The negation includes people never asked (no record is "not granted").
    assert one("consent", negate=True, channel="email", purpose="marketing") == {
        withdrawn.pk,
        other_purpose.pk,
        same_time.pk,
        never.pk,
    }


# --- Behaviour --------------------------------------------------------------------------------
def event(p, type: str, days: float, **fields) -> Event:
    return Event.objects.create(profile=p, type=type, occurred_at=days_ago(days), **fields)


def test_event_at_least_n_times_within_d_days():
    often = profile()
    for days in (1, 2, 3):
        event(often, EventType.PRODUCT_VIEWED, days)
    once = profile()
    event(once, EventType.PRODUCT_VIEWED, 1)
    stale = profile()
    for days in (40, 41, 42):
        event(stale, EventType.PRODUCT_VIEWED, days)
    viewed = {"event_type": "product_viewed"}
    assert one("event", **viewed) == {often.pk, once.pk, stale.pk}
    assert one("event", **viewed, days=30) == {often.pk, once.pk}
    assert one("event", **viewed, days=30, min_count=3) == {often.pk}
    assert one("event", **viewed, min_count=3) == {often.pk, stale.pk}
    assert one("event", **viewed, min_count=4) == set()
    # "did not": the complement
    assert one("event", negate=True, **viewed, days=30, min_count=3) == {once.pk, stale.pk}


def test_event_custom_type():
    app_user = profile()
    event(app_user, "app_opened", 1)
    other = profile()
    event(other, EventType.USER_LOGGED_IN, 1)
    assert one("event", event_type="custom", custom_type="app_opened") == {app_user.pk}
    assert one("event", event_type="user_logged_in", days=2) == {other.pk}


def test_event_for_a_product_counts_its_variants():
    parent = create_product(title="Fridge", structure="parent")
    variant = create_product(title="Fridge, white", parent=parent)
    other_product = create_product(title="Kettle")
    saw_variant = profile()
    event(saw_variant, EventType.BASKET_LINE_ADDED, 1, product=variant)
    saw_other = profile()
    event(saw_other, EventType.BASKET_LINE_ADDED, 1, product=other_product)
    added = {"event_type": "basket_line_added"}
    assert one("event", **added, product=parent.pk) == {saw_variant.pk}
    assert one("event", **added, product=variant.pk) == {saw_variant.pk}
    assert one("event", **added, product=other_product.pk) == {saw_other.pk}


def test_event_in_a_category_includes_subcategories_and_variants():
    fridges = create_from_breadcrumbs("Kitchen > Fridges")
    kitchen = fridges.get_parent()
    garden = create_from_breadcrumbs("Garden")
    parent = create_product(title="Fridge", structure="parent")
    parent.categories.add(fridges)
    variant = create_product(title="Fridge, white", parent=parent)
    rake = create_product(title="Rake")
    rake.categories.add(garden)
    fridge_viewer = profile()
    event(fridge_viewer, EventType.PRODUCT_VIEWED, 3, product=variant)
    rake_viewer = profile()
    event(rake_viewer, EventType.PRODUCT_VIEWED, 3, product=rake)
    viewed = {"event_type": "product_viewed", "days": 7}
    assert one("event", **viewed, category=kitchen.pk) == {fridge_viewer.pk}
    assert one("event", **viewed, category=fridges.pk) == {fridge_viewer.pk}
    assert one("event", **viewed, category=garden.pk) == {rake_viewer.pk}
    # "viewed the fridge category this week but bought nothing"
    rules = group(
        "all",
        cond("event", **viewed, category=fridges.pk),
        cond("event", negate=True, event_type="order_placed", days=7),
    )
    event(fridge_viewer, EventType.ORDER_PLACED, 20)  # an older order does not count
    assert matching(rules) == {fridge_viewer.pk}
    event(fridge_viewer, EventType.ORDER_PLACED, 1)
    assert matching(rules) == set()


def test_abandoned_basket_means_no_order_since():
    abandoned = profile(last_basket_activity_at=days_ago(2), last_order_at=days_ago(30))
    profile(last_basket_activity_at=days_ago(2), last_order_at=days_ago(1))  # ordered since
    profile(last_basket_activity_at=days_ago(10))  # too long ago
    never_ordered = profile(last_basket_activity_at=days_ago(6))
    assert one("abandoned_basket", days=7) == {abandoned.pk, never_ordered.pk}


# --- Purchases --------------------------------------------------------------------------------
def test_bought_in_a_category_within_days_uses_purchased_categories():
    fridges = create_from_breadcrumbs("Kitchen > Fridges")
    kitchen = fridges.get_parent()
    garden = create_from_breadcrumbs("Garden")
    recent, old, gardener = profile(), profile(), profile()
    PurchasedCategory.objects.create(profile=recent, category=fridges, last_bought_at=days_ago(10))
    PurchasedCategory.objects.create(profile=old, category=kitchen, last_bought_at=days_ago(400))
    PurchasedCategory.objects.create(profile=gardener, category=garden, last_bought_at=days_ago(1))
    assert one("bought", category=kitchen.pk) == {recent.pk, old.pk}
    assert one("bought", category=kitchen.pk, days=180) == {recent.pk}
    assert one("bought", category=fridges.pk) == {recent.pk}
    assert one("bought", negate=True, category=kitchen.pk, days=180) == {old.pk, gardener.pk}


def test_a_new_subcategory_is_seen_at_once():
    kitchen = create_from_breadcrumbs("Kitchen")
    buyer = profile()
    assert one("bought", category=kitchen.pk) == set()  # caches Kitchen's subtree
    kettles = create_from_breadcrumbs("Kitchen > Kettles")  # post_save clears the cache
    PurchasedCategory.objects.create(profile=buyer, category=kettles, last_bought_at=NOW)
    assert one("bought", category=kitchen.pk) == {buyer.pk}


def test_bought_a_product_counts_its_variants():
    parent = create_product(title="Fridge", structure="parent")
    variant = create_product(title="Fridge, white", parent=parent)
    kettle = create_product(title="Kettle")
    buyer, kettle_buyer = profile(), profile()
    PurchasedProduct.objects.create(profile=buyer, product=variant, last_bought_at=days_ago(5))
    PurchasedProduct.objects.create(
        profile=kettle_buyer, product=kettle, last_bought_at=days_ago(50)
    )
    assert one("bought", product=parent.pk) == {buyer.pk}
    assert one("bought", product=kettle.pk) == {kettle_buyer.pk}
    assert one("bought", product=kettle.pk, days=30) == set()


# --- RFM --------------------------------------------------------------------------------------
def scored(r: int, f: int, m: int, group_key: str):
    p = profile(orders_count=1)
    RfmScore.objects.create(
        profile=p, recency=r, frequency=f, monetary=m, group=group_key, computed_at=NOW
    )
    return p


def test_rfm_score_ranges_and_groups():
    champion = scored(5, 5, 4, "champions")
    at_risk = scored(2, 4, 5, "at_risk")
    lost = scored(1, 1, 1, "lost")
    unscored = profile()
    assert one("rfm_scores", r_min=4) == {champion.pk}
    assert one("rfm_scores", m_min=4, m_max=5) == {champion.pk, at_risk.pk}
    assert one("rfm_scores", r_max=2, f_min=3) == {at_risk.pk}
    assert one("rfm_group", groups=["champions", "lost"]) == {champion.pk, lost.pk}
    assert one("rfm_group", negate=True, groups=["champions"]) == {
        at_risk.pk,
        lost.pk,
        unscored.pk,
    }


# --- Channel engagement -----------------------------------------------------------------------
def message(p, channel: str, *, sent: float = 30, opened: float | None = None, clicked=None):
    return Message.objects.create(
        profile=p,
        channel=channel,
        purpose="marketing",
        created_at=days_ago(sent),
        sent_at=days_ago(sent),
        opened_at=days_ago(opened) if opened is not None else None,
        clicked_at=days_ago(clicked) if clicked is not None else None,
    )


def test_engaged_on_channel_within_days_and_negation():
    opener = profile()
    message(opener, "email", opened=10)
    clicker = profile()
    message(clicker, "email", clicked=5)
    pusher = profile()
    message(pusher, "webpush", opened=1)
    old = profile()
    message(old, "email", sent=200, opened=120)
    silent = profile()
    message(silent, "email")
    email = {"channel": "email", "days": 90}
    assert one("engaged", **email, action="opened_or_clicked") == {opener.pk, clicker.pk}
    assert one("engaged", **email, action="clicked") == {clicker.pk}
    assert one("engaged", negate=True, **email, action="opened_or_clicked") == {
        pusher.pk,
        old.pk,
        silent.pk,
    }


def test_engagement_channel_must_be_configured():
    with pytest.raises(RuleError, match=r"children\[0\]\.params\.channel"):
        one("engaged", channel="carrier_pigeon", action="clicked", days=9)
    pigeons = {"CHANNELS": {"carrier_pigeon": {"BACKEND": "x.Y"}}}
    with override_settings(OMNICHANNEL=pigeons):
        assert one("engaged", channel="carrier_pigeon", action="clicked", days=9) == set()


def test_preferred_channel_and_best_hour():
    morning = profile()
    EngagementScore.objects.create(
        profile=morning, preferred_channel="email", best_hour=8, computed_at=NOW
    )
    night = profile()
    EngagementScore.objects.create(
        profile=night, preferred_channel="sms", best_hour=23, computed_at=NOW
    )
    unknown = profile()
    assert one("preferred_channel", channel="email") == {morning.pk}
    assert one("preferred_channel", negate=True, channel="email") == {night.pk, unknown.pk}
    assert one("best_send_hour", from_hour=7, to_hour=9) == {morning.pk}
    assert one("best_send_hour", from_hour=22, to_hour=2) == {night.pk}  # wraps midnight
    assert one("best_send_hour", from_hour=8, to_hour=8) == {morning.pk}


# --- Segments ---------------------------------------------------------------------------------
def test_in_segment_compiles_the_other_segment_inline(make_segment):
    buyer = profile(orders_count=3)
    profile(orders_count=1)
    loyal = make_segment("Loyal", group("all", cond("orders_count", min=2)))
    assert one("in_segment", segment=loyal.pk) == {buyer.pk}
    everyone = make_segment("Everyone", group("all"))
    assert one("in_segment", negate=True, segment=everyone.pk) == set()
