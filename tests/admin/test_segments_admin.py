"""The segment admin through the test client: the form as the rule builder posts it, errors that
name their place, the live preview endpoint, lookups, actions, snapshots, a profile's segments."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from oscar.core.loading import get_model

from omnichannel.admin.segments import profile_segments_html, segments_of_profile
from omnichannel.channels.models import Message
from omnichannel.profiles.models import (
    CustomerProfile,
    Identity,
    IdentityKind,
    PurchasedCategory,
    Purpose,
)
from omnichannel.segments.models import Segment, SegmentSnapshot
from omnichannel.segments.ready_made import READY_MADE
from omnichannel.segments.rules import validate_rules
from tests import shop

Category = get_model("catalogue", "Category")

pytestmark = pytest.mark.django_db

SEGMENTS = reverse("admin:omnichannel_segment_changelist")
ADD = reverse("admin:omnichannel_segment_add")
PREVIEW = reverse("admin:omnichannel_segment_preview")
LOOKUP = reverse("admin:omnichannel_segment_lookup")


def change_url(segment: Segment) -> str:
    return reverse("admin:omnichannel_segment_change", args=[segment.pk])


def cond(type: str, negate: bool = False, **params) -> dict:
    return {"type": type, "negate": negate, "params": params}


def group(op: str, *children: dict, negate: bool = False) -> dict:
    return {"op": op, "negate": negate, "children": list(children)}


# --- an audience built by hand -------------------------------------------------------------------


@pytest.fixture
def fridges():
    kitchen = Category.add_root(name="Kitchen")
    return kitchen.add_child(name="Fridges")


def person(n: int, *, orders: int, fridge=None, opened_days_ago: float | None = None):
    """A profile with ``orders`` orders, maybe a fridge purchase and an email opened."""
    now = timezone.now()
    profile = CustomerProfile.objects.create(
        first_name=f"Person{n}",
        last_name="Test",
        orders_count=orders,
        last_order_at=now - timedelta(days=5) if orders else None,
    )
    Identity.objects.create(profile=profile, kind=IdentityKind.EMAIL, value=f"p{n}@example.com")
    if fridge is not None:
        PurchasedCategory.objects.create(
            profile=profile, category=fridge, orders_count=1, last_bought_at=now - timedelta(days=3)
        )
    if opened_days_ago is not None:
        Message.objects.create(
            profile=profile,
            channel="email",
            purpose=Purpose.MARKETING,
            opened_at=now - timedelta(days=opened_days_ago),
        )
    return profile


@pytest.fixture
def audience(fridges):
    """Five people; "2+ orders, bought a fridge, no email opened in 90 days" picks #1 and #5."""
    return {
        1: person(1, orders=3, fridge=fridges),
        2: person(2, orders=2, fridge=fridges, opened_days_ago=10),
        3: person(3, orders=1, fridge=fridges),
        4: person(4, orders=5),
        5: person(5, orders=4, fridge=fridges, opened_days_ago=200),
    }


def marketer_rules(category_id: int) -> dict:
    return group(
        "all",
        cond("orders_count", min=2),
        cond("bought", category=category_id),
        cond("engaged", negate=True, channel="email", action="opened_or_clicked", days=90),
    )


@pytest.fixture
def staff(admin_client):
    return admin_client


def post_form(client: Client, url: str, *, name: str, rules, description: str = "", slug=""):
    """Post the change form as the builder does: the rules JSON in the (hidden) textarea."""
    text = rules if isinstance(rules, str) else json.dumps(rules)
    return client.post(url, {"name": name, "description": description, "slug": slug, "rules": text})


def preview(client: Client, rules, *, segment: Segment | None = None, **extra):
    body = {"rules": rules if isinstance(rules, str) else json.dumps(rules)}
    if segment is not None:
        body["segment"] = segment.pk
    return client.post(PREVIEW, json.dumps(body), content_type="application/json", **extra)


# --- the form -----------------------------------------------------------------------------------


def test_add_page_renders_the_builder_with_its_catalogue(staff):
    response = staff.get(ADD)
    assert response.status_code == 200
    html = response.content.decode()
    assert "data-oc-rule-builder" in html
    assert "omnichannel/admin/segment_builder.js" in html
    assert "omnichannel/admin/segment_builder.css" in html
    assert f'data-preview-url="{PREVIEW}"' in html
    # The catalogue is embedded as JSON (json_script), with every condition type and param.
    catalog = json.loads(
        html.split('id="id_rules_catalog" type="application/json">')[1].split("</script>")[0]
    )
    keys = {entry["key"] for entry in catalog}
    assert {"orders_count", "bought", "engaged", "rfm_group", "in_segment"} <= keys
    bought = next(entry for entry in catalog if entry["key"] == "bought")
    assert {p["type"] for p in bought["params"]} >= {"product", "category", "integer"}
    # Without JavaScript the textarea carries the JSON of an empty tree.
    assert '<textarea name="rules"' in html
    assert "&quot;children&quot;: []" in html


def test_add_a_segment_posted_as_the_builder_posts_it(staff, audience, fridges):
    rules = marketer_rules(fridges.pk)
    response = post_form(staff, ADD, name="Fridge fans", rules=rules, description="For the sale")
    assert response.status_code == 302, response.context["adminform"].form.errors
    segment = Segment.objects.get(name="Fridge fans")
    assert segment.slug == "fridge-fans"
    assert segment.description == "For the sale"
    assert segment.rules == validate_rules(rules)  # cleaned: absent params stored as null
    assert set(segment.queryset().values_list("pk", flat=True)) == {audience[1].pk, audience[5].pk}


def test_change_a_segment_and_the_page_renders_the_rules_back(staff, audience, fridges):
    segment = Segment.objects.create(name="Repeat", rules=group("all", cond("orders_count", min=2)))
    rules = group(
        "any",
        cond("orders_count", min=5),
        group("all", cond("bought", category=fridges.pk), cond("orders_count", max=1)),
    )
    response = post_form(staff, change_url(segment), name="Big or fridge", rules=rules)
    assert response.status_code == 302, response.context["adminform"].form.errors
    segment.refresh_from_db()
    assert segment.name == "Big or fridge"
    assert segment.rules == validate_rules(rules)
    assert set(segment.queryset().values_list("pk", flat=True)) == {audience[3].pk, audience[4].pk}

    html = staff.get(change_url(segment)).content.decode()
    assert f'data-segment-id="{segment.pk}"' in html
    # The category named in the rules is sent by name, so the builder shows "Kitchen > Fridges".
    labels = json.loads(
        html.split('id="id_rules_labels" type="application/json">')[1].split("</script>")[0]
    )
    assert labels["category"] == {str(fridges.pk): "Kitchen > Fridges"}
    assert "&quot;op&quot;: &quot;any&quot;" in html


BAD_RULES = [
    pytest.param(
        group("all", cond("favourite_colour", colour="red")),
        ["children[0].type", "unknown condition type", "favourite_colour", "Condition 1"],
        id="unknown-type",
    ),
    pytest.param(
        {"op": "most", "negate": False, "children": [cond("orders_count", min=1)]},
        ["op", 'must be "all" or "any"'],
        id="bad-operator",
    ),
    pytest.param(
        '{"op": "all", "children": [',
        ["not valid JSON", "line 1"],
        id="malformed-json",
    ),
    pytest.param(
        group(
            "all",
            cond("orders_count", min=1),
            cond("engaged", channel="email", action="clicked", days=-5),
        ),
        [
            "children[1].params.days",
            "greater than or equal to 1",
            "Condition 2 \u201cEngaged on a channel\u201d",
        ],
        id="negative-days",
    ),
    pytest.param(
        group("all", cond("orders_count", min="lots")),
        ["children[0].params.min", "whole number"],
        id="not-a-number",
    ),
    pytest.param(
        group("all", cond("orders_count", minimum=2)),
        ["children[0].params.minimum", "unknown parameter"],
        id="unknown-parameter",
    ),
    pytest.param(
        group("all", group("any")),
        ["children[0].children", "at least one condition", "Group 1"],
        id="empty-nested-group",
    ),
    pytest.param(
        [1, 2, 3],
        ["Rules", "must be an object"],
        id="not-a-tree",
    ),
]


@pytest.mark.parametrize(("rules", "fragments"), BAD_RULES)
def test_bad_rules_are_form_errors_that_name_the_place(staff, rules, fragments):
    response = post_form(staff, ADD, name="Broken", rules=rules)
    assert response.status_code == 200  # the form again, never a 500
    errors = response.context["adminform"].form.errors
    assert set(errors) == {"rules"}
    text = " ".join(errors["rules"])
    for fragment in fragments:
        assert fragment in text, text
    assert not Segment.objects.exists()
    # What was typed comes back in the textarea, nothing lost.
    if isinstance(rules, str):
        assert rules.replace('"', "&quot;") in response.content.decode()


def test_bad_rules_on_change_keep_the_saved_rules(staff):
    rules = group("all", cond("orders_count", min=2))
    segment = Segment.objects.create(name="Repeat", rules=rules)
    response = post_form(staff, change_url(segment), name="Repeat", rules='{"op": "all"')
    assert response.status_code == 200
    assert "rules" in response.context["adminform"].form.errors
    segment.refresh_from_db()
    assert segment.rules == rules


def test_a_segment_cannot_contain_itself(staff):
    segment = Segment.objects.create(name="Loop", rules=group("all"))
    response = post_form(
        staff,
        change_url(segment),
        name="Loop",
        rules=group("all", cond("in_segment", segment=segment.pk)),
    )
    assert response.status_code == 200
    assert "cannot contain itself" in " ".join(response.context["adminform"].form.errors["rules"])


# --- live preview -------------------------------------------------------------------------------


def test_preview_count_equals_the_saved_segments_count(staff, audience, fridges):
    rules = marketer_rules(fridges.pk)
    response = preview(staff, rules)
    assert response.status_code == 200
    data = response.json()
    assert data["errors"] == []
    segment = Segment.objects.create(name="Fridge fans", rules=rules)
    assert data["count"] == segment.queryset().count() == 2
    assert [row["id"] for row in data["sample"]] == [audience[1].pk, audience[5].pk]
    first = data["sample"][0]
    assert first["name"] == "Person1 Test"
    assert first["email"] == "p1@example.com"
    assert first["url"] == reverse("admin:omnichannel_customerprofile_change", args=[first["id"]])
    assert "Kitchen" in data["summary"] or "Fridges" in data["summary"]


def test_preview_of_an_empty_tree_counts_everyone(staff, audience):
    data = preview(staff, group("all")).json()
    assert data["count"] == CustomerProfile.objects.count() == 5
    assert len(data["sample"]) == 5


def test_preview_sample_holds_at_most_ten(staff):
    for n in range(12):
        CustomerProfile.objects.create(first_name=f"P{n}")
    data = preview(staff, group("all")).json()
    assert data["count"] == 12
    assert len(data["sample"]) == 10


def test_preview_of_bad_rules_lists_errors_with_their_path(staff):
    rules = group("all", cond("orders_count", min=1), cond("last_seen", days=0))
    data = preview(staff, rules).json()
    assert data["count"] is None
    assert data["sample"] == []
    [error] = data["errors"]
    assert error["path"] == "children[1].params.days"
    assert "greater than or equal to 1" in error["message"]
    assert error["text"].startswith("Condition 2 \u201cLast seen within\u201d")


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        ('{"rules": "{\\"op\\": "}', "application/json", 200),
        ("not json at all", "application/json", 400),
        ("[1]", "application/json", 400),
    ],
)
def test_preview_of_malformed_input_is_an_error_not_a_500(staff, body, content_type, status):
    response = staff.post(PREVIEW, body, content_type=content_type)
    assert response.status_code == status
    data = response.json()
    assert data["count"] is None
    assert data["errors"]


def test_preview_costs_the_same_queries_whatever_the_audience(staff, fridges):
    rules = json.dumps(marketer_rules(fridges.pk))
    staff.get(ADD)  # session and user loaded once, as on the builder's page

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            data = preview(staff, rules).json()
        assert data["errors"] == []
        return len(captured)

    person(1, orders=3, fridge=fridges)
    few = queries()
    for n in range(2, 14):
        person(n, orders=3, fridge=fridges)
    assert queries() == few
    # validate (the category exists), count, sample, its emails, the sentence's category name,
    # plus the session and the user of the request.
    assert few <= 8


def test_preview_accepts_form_data_too(staff, audience):
    response = staff.post(PREVIEW, {"rules": json.dumps(group("all", cond("orders_count", min=4)))})
    assert response.json()["count"] == 2


def test_preview_is_post_only_and_csrf_protected(admin_user, audience):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.get(PREVIEW).status_code == 405
    assert preview(client, group("all")).status_code == 403  # no CSRF token
    client.get(ADD)  # sets the CSRF cookie, as the change page does for the builder
    token = client.cookies["csrftoken"].value
    response = preview(client, group("all"), HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200
    assert response.json()["count"] == 5


def test_non_staff_and_staff_without_permission_are_refused(django_user_model, audience):
    customer = django_user_model.objects.create_user(
        username="shopper", email="s@example.com", password="pw-12345"
    )
    client = Client()
    client.force_login(customer)
    for response in (preview(client, group("all")), client.get(LOOKUP, {"kind": "segment"})):
        assert response.status_code == 302  # to the admin login, nothing counted
        assert "/login/" in response["Location"]

    clerk = django_user_model.objects.create_user(
        username="clerk", email="c@example.com", password="pw-12345", is_staff=True
    )
    client.force_login(clerk)
    assert preview(client, group("all")).status_code == 403
    assert client.get(LOOKUP, {"kind": "segment"}).status_code == 403
    assert client.get(SEGMENTS).status_code == 403

    clerk.user_permissions.add(Permission.objects.get(codename="view_segment"))
    assert preview(client, group("all")).json()["count"] == 5
    assert client.get(LOOKUP, {"kind": "segment"}).status_code == 200
    # Viewing is not changing: the page says the rules in words, and posts are refused.
    segment = Segment.objects.create(name="All", rules=group("all", cond("orders_count", min=4)))
    html = client.get(change_url(segment)).content.decode()
    assert "data-oc-rule-builder" not in html
    assert "Orders count at least 4" in html
    assert "Members now: 2" in html
    response = post_form(client, change_url(segment), name="Renamed", rules=group("all"))
    assert response.status_code == 403
    assert client.post(SEGMENTS, {"action": "create_ready_made_segments"}).status_code == 403
    assert not Segment.objects.filter(ready_made__gt="").exists()


# --- lookups ------------------------------------------------------------------------------------


def test_lookup_finds_categories_by_name_with_their_full_name(staff, fridges):
    Category.add_root(name="Garden")
    data = staff.get(LOOKUP, {"kind": "category", "q": "frid"}).json()
    assert data["results"] == [{"id": fridges.pk, "text": "Kitchen > Fridges"}]
    everything = staff.get(LOOKUP, {"kind": "category"}).json()["results"]
    assert [row["text"] for row in everything] == ["Kitchen", "Kitchen > Fridges", "Garden"]


def test_lookup_finds_products_and_segments(staff):
    fridge = shop.create_product("499.00", title="Fridge Deluxe")
    shop.create_product("9.00", title="Toaster")
    data = staff.get(LOOKUP, {"kind": "product", "q": "deluxe"}).json()
    assert [row["id"] for row in data["results"]] == [fridge.pk]
    assert data["results"][0]["text"].startswith("Fridge Deluxe")

    me = Segment.objects.create(name="Fans of fridges", rules=group("all"))
    other = Segment.objects.create(name="Fans of toasters", rules=group("all"))
    data = staff.get(LOOKUP, {"kind": "segment", "q": "fans", "exclude": me.pk}).json()
    assert data["results"] == [{"id": other.pk, "text": "Fans of toasters"}]


def test_lookup_of_an_unknown_kind_is_a_400(staff):
    response = staff.get(LOOKUP, {"kind": "user"})
    assert response.status_code == 400
    assert response.json()["results"] == []


# --- list, actions, snapshots -------------------------------------------------------------------


def test_list_shows_each_segments_live_size(staff, audience, fridges):
    Segment.objects.create(name="Fridge fans", rules=marketer_rules(fridges.pk))
    Segment.objects.create(name="Everyone", rules=group("all"))
    response = staff.get(SEGMENTS)
    assert response.status_code == 200
    rows = {
        row.split('<th class="field-name">')[1].split("</a>")[0].split(">")[-1]: row
        for row in response.content.decode().split("<tr")
        if 'class="field-name"' in row
    }
    assert '<td class="field-size">2</td>' in rows["Fridge fans"]
    assert '<td class="field-size">5</td>' in rows["Everyone"]


def test_ready_made_segments_button_needs_no_selection_and_is_idempotent(staff):
    assert "Create ready-made segments" in staff.get(SEGMENTS).content.decode()
    response = staff.post(SEGMENTS, {"action": "create_ready_made_segments", "index": "0"})
    assert response.status_code == 302
    made = set(Segment.objects.exclude(ready_made="").values_list("ready_made", flat=True))
    assert made == {item.key for item in READY_MADE}
    messages = [str(m) for m in response.wsgi_request._messages]
    assert any("Created 5 ready-made segments" in m for m in messages)

    response = staff.post(SEGMENTS, {"action": "create_ready_made_segments", "index": "0"})
    assert Segment.objects.count() == 5
    messages = [str(m) for m in response.wsgi_request._messages]
    assert any("Already there" in m for m in messages)


def test_ready_made_action_also_works_on_a_selection(staff):
    mine = Segment.objects.create(name="Mine", rules=group("all"))
    response = staff.post(
        SEGMENTS,
        {"action": "create_ready_made_segments", "index": "0", "_selected_action": [mine.pk]},
    )
    assert response.status_code == 302
    assert Segment.objects.count() == 6
    assert Segment.objects.get(pk=mine.pk).ready_made == ""


def test_snapshot_action_freezes_the_members(staff, audience, fridges):
    segment = Segment.objects.create(name="Fridge fans", rules=marketer_rules(fridges.pk))
    response = staff.post(
        SEGMENTS, {"action": "snapshot_members", "index": "0", "_selected_action": [segment.pk]}
    )
    assert response.status_code == 302
    snapshot = SegmentSnapshot.objects.get(segment=segment)
    assert snapshot.size == segment.count() == 2
    assert set(snapshot.profiles().values_list("pk", flat=True)) == {
        audience[1].pk,
        audience[5].pk,
    }
    assert "admin" in snapshot.note

    # The segment page lists it (read-only), and the snapshot page lists its members.
    html = staff.get(change_url(segment)).content.decode()
    snapshot_url = reverse("admin:omnichannel_segmentsnapshot_change", args=[snapshot.pk])
    assert snapshot_url in html
    html = staff.get(snapshot_url).content.decode()
    assert "p1@example.com" in html
    assert "p5@example.com" in html
    assert "p2@example.com" not in html
    assert staff.get(reverse("admin:omnichannel_segmentsnapshot_changelist")).status_code == 200


# --- a profile's segments -----------------------------------------------------------------------


def test_a_profiles_segments(staff, audience, fridges):
    fans = Segment.objects.create(name="Fridge fans", rules=marketer_rules(fridges.pk))
    everyone = Segment.objects.create(name="Everyone", rules=group("all"))
    big = Segment.objects.create(name="Big", rules=group("all", cond("orders_count", min=5)))
    assert segments_of_profile(audience[1]) == [everyone, fans]
    assert segments_of_profile(audience[4]) == [big, everyone]
    with CaptureQueriesContext(connection) as captured:
        html = profile_segments_html(audience[1])
    assert len(captured) == 2  # the segments, then every segment's rules on this one profile
    assert reverse("admin:omnichannel_segment_change", args=[fans.pk]) in html
    assert "Big" not in html
    Segment.objects.all().delete()
    assert "In no segment" in profile_segments_html(audience[1])
