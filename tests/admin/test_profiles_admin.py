"""The profile admin, driven through the test client as a superuser."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from omnichannel.admin.profiles import TIMELINE_LIMIT
from omnichannel.profiles.identity import fold_pending_events
from omnichannel.profiles.merge import merge_profiles
from omnichannel.profiles.models import (
    Channel,
    Consent,
    CustomerProfile,
    Event,
    EventSource,
    EventType,
    Identity,
    IdentityKind,
    ProfileMerge,
    Purpose,
)
from omnichannel.profiles.recording import record_event
from tests import shop

pytestmark = pytest.mark.django_db

PROFILES = reverse("admin:omnichannel_customerprofile_changelist")
EVENTS = reverse("admin:omnichannel_event_changelist")
IDENTITIES = reverse("admin:omnichannel_identity_changelist")
MERGES = reverse("admin:omnichannel_profilemerge_changelist")


def fold() -> int:
    return fold_pending_events(now=timezone.now(), batch_size=1000)


def profile_url(profile: CustomerProfile) -> str:
    return reverse("admin:omnichannel_customerprofile_change", args=[profile.pk])


@pytest.fixture
def staff(admin_client):
    """A superuser's client; the event of its own login is dropped so it makes no profile."""
    Event.objects.all().delete()
    return admin_client


def shopper(
    n: int,
    *,
    email: str | None = None,
    phone: str | None = None,
    card: str | None = None,
    order: str | None = None,
    source: str = EventSource.WEB,
    product=None,
) -> str:
    """Record a visit (and an order) naming these identities; return the visitor key."""
    visitor = f"{n:032x}"
    identities = {"email": email, "phone": phone, "loyalty_card": card}
    identities = {kind: value for kind, value in identities.items() if value}
    record_event(
        EventType.PRODUCT_VIEWED,
        source=source,
        visitor_key=visitor,
        identities=identities,
        product_id=product.pk if product else None,
    )
    if order:
        record_event(
            EventType.ORDER_PLACED,
            source=source,
            visitor_key=visitor,
            identities=identities,
            product_id=product.pk if product else None,
            amount=Decimal(order),
            currency="GBP",
            payload={"number": f"{100000 + n}", "first_name": "Ada", "last_name": f"N{n}"},
        )
    return visitor


def profile_of(kind: str, value: str) -> CustomerProfile:
    return Identity.objects.select_related("profile").get(kind=kind, value=value).profile


def listed(response) -> list[CustomerProfile]:
    assert response.status_code == 200
    return list(response.context["cl"].result_list)


# --- the list -----------------------------------------------------------------------------------


def test_changelist_shows_contacts_and_aggregates(staff):
    shopper(1, email="Ada@Example.com", phone="07911 123456", order="42.50")
    shopper(2, email="bob@example.com", source=EventSource.APP)
    fold()

    response = staff.get(PROFILES)

    content = response.content.decode()
    assert "ada@example.com" in content
    assert "+447911123456" in content
    assert "bob@example.com" in content
    assert "42.50" in content
    assert "Web shop" in content and "Mobile app" in content
    rows = {p.primary_email: p for p in listed(response)}
    assert rows["ada@example.com"].orders_count == 1
    assert rows["ada@example.com"].primary_phone == "+447911123456"
    assert rows["bob@example.com"].primary_phone is None


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        ("ada@example.com", "ada"),
        ("ADA@EXAMPLE.COM", "ada"),
        ("07911 123456", "ada"),  # national format, stored as +447911123456
        ("+44 7911 123456", "ada"),
        ("ab 12 34", "bob"),  # loyalty card, stored as AB1234
        ("AB1234", "bob"),
        ("Lovelace", "ada"),  # name
        ("bob-account@example.com", "bob"),  # the user account's email
        ("example.com", "both"),
        ("nobody@example.com", "none"),
    ],
)
def test_search(staff, django_user_model, term, expected):
    shopper(1, email="ada@example.com", phone="+447911123456")
    shopper(2, email="bob@example.com", card="AB1234")
    fold()
    ada = profile_of(IdentityKind.EMAIL, "ada@example.com")
    ada.first_name, ada.last_name = "Ada", "Lovelace"
    ada.save()
    bob = profile_of(IdentityKind.EMAIL, "bob@example.com")
    bob.user = django_user_model.objects.create_user(
        username="bob", email="bob-account@example.com", password="x"
    )
    bob.save()

    response = staff.get(PROFILES, {"q": term})
    found = {p.pk for p in listed(response)}

    wanted = {"ada": {ada.pk}, "bob": {bob.pk}, "both": {ada.pk, bob.pk}, "none": set()}
    assert found == wanted[expected]


def test_search_through_identities_lists_each_profile_once(staff):
    shopper(1, email="ada@example.com")
    fold()
    ada = profile_of(IdentityKind.EMAIL, "ada@example.com")
    Identity.objects.create(profile=ada, kind=IdentityKind.EMAIL, value="ada@work.example.com")
    Identity.objects.create(profile=ada, kind=IdentityKind.DEVICE, value="example-device")

    response = staff.get(PROFILES, {"q": "example"})

    assert [p.pk for p in listed(response)] == [ada.pk]
    assert response.context["cl"].result_count == 1


def test_filters(staff):
    shopper(1, email="web@example.com", order="10.00")
    shopper(2, email="app@example.com", source=EventSource.APP)
    shopper(3, email="shop@example.com", source=EventSource.OFFLINE, order="5.00")
    fold()
    web, app, offline = (
        profile_of(IdentityKind.EMAIL, f"{name}@example.com") for name in ("web", "app", "shop")
    )
    CustomerProfile.objects.filter(pk=app.pk).update(
        last_seen_at=timezone.now() - timezone.timedelta(days=200)
    )
    never = CustomerProfile.objects.create()

    def ids(**params) -> set[int]:
        return {p.pk for p in listed(staff.get(PROFILES, params))}

    assert ids(has_orders="yes") == {web.pk, offline.pk}
    assert ids(has_orders="no") == {app.pk, never.pk}
    assert ids(source="web") == {web.pk}
    assert ids(source="app") == {app.pk}
    assert ids(source="offline") == {offline.pk}
    assert ids(last_seen="7") == {web.pk, offline.pk}
    assert ids(last_seen="older") == {app.pk}
    assert ids(last_seen="never") == {never.pk}


def test_changelist_queries_do_not_grow_with_profiles(staff, django_assert_max_num_queries):
    def queries_for_list() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert staff.get(PROFILES).status_code == 200
        return len(ctx.captured_queries)

    for n in range(3):
        shopper(n, email=f"p{n}@example.com", phone=f"+4479111234{n:02d}", order="9.99")
    fold()
    few = queries_for_list()

    for n in range(3, 30):
        shopper(n, email=f"p{n}@example.com", phone=f"+4479111234{n:02d}", order="9.99")
    fold()
    assert CustomerProfile.objects.count() == 30
    with django_assert_max_num_queries(8):
        response = staff.get(PROFILES, {"q": "example.com", "has_orders": "yes"})
    assert response.context["cl"].result_count == 30
    assert queries_for_list() == few


# --- the profile page ---------------------------------------------------------------------------


def test_profile_page_shows_identities_consents_timeline_and_merges(staff):
    fridge = shop.create_product("499.00", title="Fridge <b>XL</b>")
    visitor = shopper(1, email="ada@example.com", phone="07911 123456", order="499.00")
    shopper(2, card="CARD-77", product=fridge)
    fold()
    ada = profile_of(IdentityKind.EMAIL, "ada@example.com")
    other = profile_of(IdentityKind.LOYALTY_CARD, "CARD-77")
    record_event(EventType.BASKET_LINE_ADDED, visitor_key=visitor, product_id=fridge.pk, payload={})
    fold()
    merge_profiles(ada, other, reason="same person <script>alert(1)</script>")
    now = timezone.now()
    Consent.objects.create(
        profile=ada,
        channel=Channel.EMAIL,
        purpose=Purpose.MARKETING,
        granted=True,
        created_at=now - timezone.timedelta(days=2),
    )
    Consent.objects.create(
        profile=ada,
        channel=Channel.EMAIL,
        purpose=Purpose.MARKETING,
        granted=False,
        created_at=now - timezone.timedelta(days=1),
    )
    Consent.objects.create(
        profile=ada, channel=Channel.SMS, purpose=Purpose.MARKETING, granted=True
    )

    response = staff.get(profile_url(ada))

    assert response.status_code == 200
    content = response.content.decode()
    # identities inline
    for value in ("ada@example.com", "+447911123456", "CARD-77", visitor):
        assert value in content
    # current consent: latest wins per channel and purpose
    summary = content.split('class="omnichannel-consents"')[1].split("</table>")[0]
    assert summary.count("<tr") == 3  # header + email/marketing + sms/marketing
    assert "consent-withdrawn" in summary and "consent-granted" in summary
    email_row = summary.split("consent-withdrawn")[1].split("</tr>")[0]
    assert "Email" in email_row and "Marketing" in email_row
    # timeline
    timeline = content.split('class="omnichannel-timeline"')[1].split("</table>")[0]
    for label in ("Viewed a product", "Placed an order", "Added to basket"):
        assert label in timeline
    assert "100001" in timeline  # order number
    assert "499.00 GBP" in timeline
    assert "Fridge &lt;b&gt;XL&lt;/b&gt;" in timeline
    assert "<b>XL</b>" not in content
    assert f"{EVENTS}?profile={ada.pk}" in content
    # merges
    assert "same person &lt;script&gt;" in content
    assert "<script>alert(1)</script>" not in content
    assert str(other.uuid) in content
    assert "None (never registered)" in content
    # aggregates are read-only: no input for them
    assert 'name="orders_count"' not in content
    assert 'name="first_name"' in content


def test_timeline_shows_the_latest_events_and_links_to_the_rest(
    staff, django_assert_max_num_queries
):
    visitor = shopper(1, email="busy@example.com")
    start = timezone.now() - timezone.timedelta(days=1)
    for i in range(TIMELINE_LIMIT + 4):
        record_event(
            EventType.BASKET_LINE_ADDED,
            visitor_key=visitor,
            occurred_at=start + timezone.timedelta(minutes=i),
        )
    record_event("loyalty_points_earned", visitor_key=visitor)  # a custom type
    fold()
    busy = profile_of(IdentityKind.EMAIL, "busy@example.com")
    for i in range(20):
        Consent.objects.create(
            profile=busy, channel=Channel.EMAIL, purpose=Purpose.MARKETING, granted=bool(i % 2)
        )

    with django_assert_max_num_queries(12):
        response = staff.get(profile_url(busy))

    content = response.content.decode()
    timeline = content.split('class="omnichannel-timeline"')[1].split("</table>")[0]
    assert timeline.count("<tr") == TIMELINE_LIMIT + 1  # with the header row
    assert "loyalty_points_earned" in timeline
    assert "Showing the latest 100 events." in content
    events = staff.get(EVENTS, {"profile": busy.pk})
    assert events.context["cl"].result_count == TIMELINE_LIMIT + 6
    assert str(busy) in events.content.decode()  # the active profile filter is shown


def test_profiles_cannot_be_added_and_aggregates_are_not_editable(staff):
    shopper(1, email="ada@example.com", order="10.00")
    fold()
    ada = profile_of(IdentityKind.EMAIL, "ada@example.com")

    assert staff.get(reverse("admin:omnichannel_customerprofile_add")).status_code == 403
    form = staff.get(profile_url(ada)).context["adminform"].form
    identities = list(
        ada.identities.order_by("kind", "created_at", "pk").values_list("pk", flat=True)
    )
    data = {
        "first_name": "Ada",
        "last_name": "Lovelace",
        "orders_count": "99",
        "total_spent": "1.00",
        "identities-TOTAL_FORMS": str(len(identities)),
        "identities-INITIAL_FORMS": str(len(identities)),
        "identities-MIN_NUM_FORMS": "0",
        "identities-MAX_NUM_FORMS": "1000",
        **{f"identities-{i}-id": str(pk) for i, pk in enumerate(identities)},
        "consents-TOTAL_FORMS": "1",
        "consents-INITIAL_FORMS": "0",
        "consents-MIN_NUM_FORMS": "0",
        "consents-MAX_NUM_FORMS": "1000",
        "consents-0-channel": "sms",
        "consents-0-purpose": "marketing",
        "consents-0-granted": "on",
        "consents-0-source": "offline",
        "consents-0-note": "asked at the till",
    }
    assert "orders_count" not in form.fields

    response = staff.post(profile_url(ada), data)

    assert response.status_code == 302, response.context and response.context["errors"]
    ada.refresh_from_db()
    assert (ada.first_name, ada.last_name) == ("Ada", "Lovelace")
    assert ada.orders_count == 1
    assert ada.total_spent == Decimal("10.00")
    consent = ada.consents.get()
    assert (consent.channel, consent.granted, consent.note) == ("sms", True, "asked at the till")


def test_recompute_aggregates_action(staff):
    shopper(1, email="ada@example.com", order="30.00")
    shopper(2, email="bob@example.com", order="12.00")
    fold()
    CustomerProfile.objects.update(orders_count=7, total_spent=0, aggregates_updated_at=None)
    ids = list(CustomerProfile.objects.values_list("pk", flat=True))

    response = staff.post(
        PROFILES,
        {"action": "recompute_aggregates", "_selected_action": [str(pk) for pk in ids]},
        follow=True,
    )

    assert response.status_code == 200
    assert "Recomputed the aggregates of 2 profiles." in response.content.decode()
    ada = profile_of(IdentityKind.EMAIL, "ada@example.com")
    assert ada.orders_count == 1
    assert ada.total_spent == Decimal("30.00")
    assert ada.aggregates_updated_at is not None
    assert profile_of(IdentityKind.EMAIL, "bob@example.com").total_spent == Decimal("12.00")


# --- events, identities, merges -----------------------------------------------------------------


def test_event_admin_is_read_only(staff, django_user_model):
    shopper(1, email="ada@example.com", order="10.00")
    fold()
    event = Event.objects.get(type=EventType.ORDER_PLACED)
    change = reverse("admin:omnichannel_event_change", args=[event.pk])

    assert staff.get(reverse("admin:omnichannel_event_add")).status_code == 403
    page = staff.get(change)
    assert page.status_code == 200
    content = page.content.decode()
    assert 'name="_save"' not in content
    assert "100001" in content
    assert staff.post(change, {"type": "hacked"}).status_code == 403
    event.refresh_from_db()
    assert event.type == EventType.ORDER_PLACED

    # only superusers delete; other staff with every permission cannot
    clerk = django_user_model.objects.create_user(username="clerk", password="x", is_staff=True)
    clerk.user_permissions.set(Permission.objects.filter(content_type__app_label="omnichannel"))
    staff.force_login(clerk)
    Event.objects.filter(user=clerk).delete()
    delete = reverse("admin:omnichannel_event_delete", args=[event.pk])
    assert staff.get(change).status_code == 200
    assert staff.post(delete, {"post": "yes"}).status_code == 403
    assert Event.objects.filter(pk=event.pk).exists()


def test_superuser_may_delete_an_event(staff):
    shopper(1, email="ada@example.com")
    fold()
    event = Event.objects.get()
    delete = reverse("admin:omnichannel_event_delete", args=[event.pk])

    assert staff.post(delete, {"post": "yes"}).status_code == 302
    assert not Event.objects.filter(pk=event.pk).exists()


def test_event_list_filters_and_search(staff, django_assert_max_num_queries):
    product = shop.create_product("5.00", title="Kettle")
    ada_visitor = shopper(1, email="ada@example.com", order="10.00", product=product)
    for n in range(2, 12):
        shopper(n, email=f"p{n}@example.com", order="1.00", product=product)
    fold()
    record_event(EventType.USER_LOGGED_IN, visitor_key="f" * 32)  # still queued
    ada = profile_of(IdentityKind.EMAIL, "ada@example.com")

    def count(**params) -> int:
        response = staff.get(EVENTS, params)
        assert response.status_code == 200
        return response.context["cl"].result_count

    with django_assert_max_num_queries(10):
        response = staff.get(EVENTS)
    assert response.context["cl"].result_count == 23
    assert "Kettle" in response.content.decode()
    assert count(type=EventType.ORDER_PLACED) == 11
    assert count(source="web") == 23
    assert count(source="app") == 0
    assert count(processed="no") == 1
    assert count(processed="yes") == 22
    assert count(q=ada_visitor) == 2
    assert count(q=str(ada.pk)) == 2
    assert count(q=str(ada.uuid)) == 2
    today = timezone.localdate()
    assert count(occurred_at__year=today.year) == 23


def test_identity_admin_search_and_merge_admin(staff):
    shopper(1, email="ada@example.com", phone="+447911123456")
    shopper(2, card="CARD-1")
    fold()
    ada = profile_of(IdentityKind.EMAIL, "ada@example.com")
    card = profile_of(IdentityKind.LOYALTY_CARD, "CARD-1")
    merge_profiles(ada, card, reason="loyalty card given at the till")

    response = staff.get(IDENTITIES, {"q": "07911 123456"})
    assert [i.value for i in listed(response)] == ["+447911123456"]
    assert staff.get(reverse("admin:omnichannel_identity_add")).status_code == 403

    merges = staff.get(MERGES, {"q": str(card.uuid)})
    assert [m.survivor_id for m in listed(merges)] == [ada.pk]
    merge = ProfileMerge.objects.get()
    change = reverse("admin:omnichannel_profilemerge_change", args=[merge.pk])
    assert 'name="_save"' not in staff.get(change).content.decode()
    assert staff.get(reverse("admin:omnichannel_profilemerge_add")).status_code == 403


def test_superuser_may_erase_a_profile_with_its_events_and_merges(staff):
    shopper(1, email="ada@example.com", order="10.00")
    shopper(2, card="CARD-1")
    fold()
    ada = profile_of(IdentityKind.EMAIL, "ada@example.com")
    merge_profiles(ada, profile_of(IdentityKind.LOYALTY_CARD, "CARD-1"), reason="same person")
    delete = reverse("admin:omnichannel_customerprofile_delete", args=[ada.pk])

    confirm = staff.get(delete)
    assert confirm.status_code == 200
    assert not confirm.context["perms_lacking"]
    assert staff.post(delete, {"post": "yes"}).status_code == 302

    assert not CustomerProfile.objects.exists()
    assert not Event.objects.exists()
    assert not Identity.objects.exists()
    assert not ProfileMerge.objects.exists()


def test_profiles_never_seen_come_last(staff):
    shopper(1, email="ada@example.com")
    fold()
    never = CustomerProfile.objects.create()
    ada = profile_of(IdentityKind.EMAIL, "ada@example.com")

    assert [p.pk for p in listed(staff.get(PROFILES))] == [ada.pk, never.pk]
