"""Evaluating segments: one query each, snapshots, a profile's segments, the live preview."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from omnichannel.profiles.merge import merge_profiles
from omnichannel.profiles.models import Event, EventType, Identity, IdentityKind
from omnichannel.segments.conditions import forget_category_subtrees
from omnichannel.segments.models import Segment, SegmentSnapshot
from omnichannel.segments.rules import RuleError
from omnichannel.segments.selectors import preview_rules, segments_of_profile
from omnichannel.segments.snapshots import snapshot_segment

from .conftest import NOW, cond, days_ago, group, profile

pytestmark = pytest.mark.django_db

#: One condition of every built-in type that reads another table, nested and negated.
EVERYTHING = group(
    "all",
    cond("orders_count", min=1),
    group(
        "any",
        cond("event", event_type="basket_line_added", days=7, min_count=2),
        cond("bought", category=1, days=180),
        cond("bought", product=1),
        cond("rfm_group", groups=["champions", "loyal"]),
        cond("rfm_scores", r_min=4, m_min=3),
        cond("engaged", channel="email", action="opened_or_clicked", days=90),
        cond("preferred_channel", channel="webpush"),
        cond("best_send_hour", from_hour=18, to_hour=21),
        cond("consent", channel="email", purpose="marketing"),
        cond("has_contact", kind="push"),
        cond("abandoned_basket", days=7),
        cond("days_since_last_order", min=60),
        negate=True,
    ),
    cond("sources_used", sources=["web", "app"], match="all", negate=True),
    cond("engaged", negate=True, channel="webpush", action="clicked", days=30),
)


@pytest.fixture
def catalogue():
    """A product 1 and a category 1 for EVERYTHING's references to exist."""
    from oscar.apps.catalogue.categories import create_from_breadcrumbs
    from oscar.test.factories import create_product

    category = create_from_breadcrumbs("Kitchen")
    product = create_product(title="Kettle")
    rules = EVERYTHING
    rules["children"][1]["children"][1]["params"]["category"] = category.pk
    rules["children"][1]["children"][2]["params"]["product"] = product.pk
    return rules


def test_count_and_queryset_are_one_query_each(catalogue, django_assert_num_queries):
    segment = Segment.objects.create(name="Everything", rules=catalogue)
    segment.full_clean()
    for n in range(3):
        profile(orders_count=n)
    forget_category_subtrees()
    with django_assert_num_queries(2):  # the first time, the category's subtree is looked up
        segment.count(now=NOW)
    with django_assert_num_queries(1):
        count = segment.count(now=NOW)
    with django_assert_num_queries(1):
        members = list(segment.queryset(now=NOW))
    assert count == len(members) == 2  # those with an order: nothing else applies to them


def test_a_reference_to_another_segment_costs_one_more_query_whatever_the_depth(
    django_assert_num_queries,
):
    base = Segment.objects.create(name="Base", rules=group("all", cond("orders_count", min=1)))
    middle = Segment.objects.create(
        name="Middle", rules=group("all", cond("in_segment", segment=base.pk))
    )
    top = Segment.objects.create(
        name="Top",
        rules=group("any", cond("in_segment", segment=middle.pk), cond("last_seen", days=1)),
    )
    buyer = profile(orders_count=2)
    profile()
    with django_assert_num_queries(2):  # the segments' rules, then the count
        assert top.count(now=NOW) == 1
    with django_assert_num_queries(2):
        assert [p.pk for p in top.queryset(now=NOW)] == [buyer.pk]


def test_snapshot_freezes_members_in_set_based_sql():
    segment = Segment.objects.create(name="Recent", rules=group("all", cond("last_seen", days=30)))
    inside = [profile(last_seen_at=days_ago(n)) for n in (1, 5, 29)]
    profile(last_seen_at=days_ago(40))
    with CaptureQueriesContext(connection) as queries:
        snapshot = snapshot_segment(segment, now=NOW, note="spring sale")
    inserts = [q["sql"] for q in queries if q["sql"].startswith("INSERT INTO")]
    assert len(inserts) == 2  # the snapshot row and all of its members at once
    assert "SELECT" in inserts[1]
    assert snapshot.size == 3
    assert snapshot.note == "spring sale" and snapshot.rules == segment.rules
    assert set(snapshot.profiles().values_list("pk", flat=True)) == {p.pk for p in inside}
    # Later changes do not move the frozen audience.
    profile(last_seen_at=days_ago(2))
    assert segment.count(now=NOW) == 4
    assert snapshot.profiles().count() == 3


def test_snapshot_of_broken_rules_raises_and_writes_nothing(make_segment):
    other = make_segment("Other", group("all", cond("orders_count", min=1)))
    segment = make_segment("Broken", group("all", cond("in_segment", segment=other.pk)))
    other.delete()
    with pytest.raises(RuleError):
        snapshot_segment(segment, now=NOW)
    assert not SegmentSnapshot.objects.exists()


def test_merging_two_members_of_one_snapshot_keeps_one_row():
    segment = Segment.objects.create(name="All", rules=group("all"))
    a, b = profile(), profile()
    both = snapshot_segment(segment, now=NOW)
    b_only = Segment.objects.create(name="B", rules=group("all", cond("devices_count", min=1)))
    b.devices_count = 1
    b.save()
    c = profile()
    just_b = snapshot_segment(b_only, now=NOW)
    assert both.size == 2 and just_b.size == 1
    survivor = merge_profiles(a, b, reason="test")
    assert survivor.pk == a.pk
    # a and b were both in the first snapshot: one row for the person now
    assert list(both.profiles().values_list("pk", flat=True)) == [a.pk]
    # b alone was in the second: the row moved to the survivor
    assert list(just_b.profiles().values_list("pk", flat=True)) == [a.pk]
    assert c.pk not in set(both.profiles().values_list("pk", flat=True))


def test_segments_of_profile_in_two_queries(make_segment, django_assert_num_queries):
    buyer = profile(orders_count=3, devices_count=2)
    make_segment("Buyers", group("all", cond("orders_count", min=1)))
    make_segment("Multi-device", group("all", cond("devices_count", min=2)))
    make_segment("Nobody", group("all", cond("orders_count", min=100)))
    twice = {"event_type": "product_viewed", "min_count": 2}
    make_segment("Viewed twice", group("all", cond("event", **twice)))
    make_segment("Not viewed twice", group("all", cond("event", negate=True, **twice)))
    make_segment("Email consent", group("all", cond("consent", channel="email")))
    for _ in range(2):
        Event.objects.create(profile=buyer, type=EventType.PRODUCT_VIEWED, occurred_at=NOW)
    other = profile()
    Event.objects.create(profile=other, type=EventType.PRODUCT_VIEWED, occurred_at=NOW)
    with django_assert_num_queries(2):
        names = [s.name for s in segments_of_profile(buyer, now=NOW)]
    assert names == ["Buyers", "Multi-device", "Viewed twice"]
    assert [s.name for s in segments_of_profile(other, now=NOW)] == ["Not viewed twice"]


def test_segments_of_profile_skips_broken_segments(make_segment):
    buyer = profile(orders_count=3)
    other = make_segment("Other", group("all", cond("orders_count", min=1)))
    make_segment("Broken", group("all", cond("in_segment", segment=other.pk)))
    Segment.objects.filter(pk=other.pk).update(
        rules=group("all", cond("in_segment", segment=other.pk))
    )
    assert segments_of_profile(buyer, now=NOW) == []


def test_preview_validates_counts_and_samples():
    members = [profile(orders_count=2) for _ in range(3)]
    profile()
    preview = preview_rules(group("all", cond("orders_count", min="2")), now=NOW, sample_size=2)
    assert preview.count == 3
    assert [p.pk for p in preview.sample] == [m.pk for m in members[:2]]
    assert preview.rules["children"][0]["params"] == {"min": 2, "max": None}
    with pytest.raises(RuleError) as caught:
        preview_rules(group("all", cond("orders_count", min=-1)), now=NOW)
    assert caught.value.messages == [
        "children[0].params.min: Ensure this value is greater than or equal to 0."
    ]


def test_segment_clean_names_the_error_on_the_rules_field():
    segment = Segment(name="Bad", rules=group("all", cond("nope")))
    with pytest.raises(ValidationError) as caught:
        segment.full_clean()
    assert caught.value.message_dict == {
        "rules": ["children[0].type: unknown condition type 'nope'"]
    }


def test_slug_is_made_from_the_name_and_kept_unique():
    first = Segment.objects.create(name="Big spenders")
    second = Segment.objects.create(name="Big Spenders!")
    assert first.slug == "big-spenders"
    assert second.slug == "big-spenders-2"


def test_default_queryset_now_is_the_clock():
    segment = Segment.objects.create(name="Seen", rules=group("all", cond("last_seen", days=1)))
    profile(last_seen_at=timezone.now())
    assert segment.count() == 1


def test_event_and_identity_conditions_after_a_real_fold(django_user_model):
    """The same conditions over profiles built by the fold from recorded events."""
    from omnichannel.profiles.identity import fold_pending_events
    from omnichannel.profiles.recording import record_event

    user = django_user_model.objects.create_user("sam", "sam@example.com", "x")
    for _ in range(2):
        record_event(EventType.BASKET_LINE_ADDED, user=user)
    record_event(EventType.USER_LOGGED_IN, user=user, identities={"email": "sam@example.com"})
    fold_pending_events(now=timezone.now(), batch_size=100)
    segment = Segment.objects.create(
        name="Basket twice, has email",
        rules=group(
            "all",
            cond("event", event_type="basket_line_added", min_count=2, days=1),
            cond("has_contact", kind="email"),
            cond("abandoned_basket", days=1),
        ),
    )
    assert Identity.objects.filter(kind=IdentityKind.EMAIL).exists()
    assert Event.objects.filter(profile__isnull=False).count() == 3
    assert [p.user_id for p in segment.queryset()] == [user.pk]
