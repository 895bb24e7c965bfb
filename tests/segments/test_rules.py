"""Rule trees: all/any/negate logic, validation errors that name the place, the registry."""

from __future__ import annotations

from typing import Any

import pytest
from django import forms
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db.models import Q

from omnichannel.segments.conditions import (
    ConditionType,
    OrdersCountCondition,
    condition_catalog,
    registry,
)
from omnichannel.segments.models import Segment
from omnichannel.segments.rules import (
    MAX_DEPTH,
    RuleError,
    compile_rules,
    describe_rules,
    validate_rules,
)

from .conftest import NOW, cond, group, matching, profile

pytestmark = pytest.mark.django_db


def errors_of(data: Any, **kwargs: Any) -> list[str]:
    with pytest.raises(RuleError) as caught:
        validate_rules(data, **kwargs)
    assert isinstance(caught.value, ValidationError)
    return caught.value.messages


# --- Logic ------------------------------------------------------------------------------------
def test_nested_all_any_and_negation():
    a = profile(orders_count=5, devices_count=2, seen_on_web=True)
    b = profile(orders_count=5, devices_count=0, seen_on_app=True)
    c = profile(orders_count=0, devices_count=3)
    d = profile(orders_count=0, devices_count=0)
    many_orders = cond("orders_count", min=2)
    devices = cond("devices_count", min=2)
    web = cond("sources_used", sources=["web"])
    assert matching(group("all", many_orders, devices)) == {a.pk}
    assert matching(group("any", many_orders, devices)) == {a.pk, b.pk, c.pk}
    assert matching(group("any", many_orders, devices, negate=True)) == {d.pk}
    assert matching(group("all", many_orders, devices, negate=True)) == {b.pk, c.pk, d.pk}
    # orders >= 2 and not (devices >= 2 or used the web)
    rules = group("all", many_orders, group("any", devices, web, negate=True))
    assert matching(rules) == {b.pk}
    # (not orders >= 2) or (devices >= 2 and not web)
    rules = group(
        "any",
        cond("orders_count", negate=True, min=2),
        group("all", devices, cond("sources_used", negate=True, sources=["web"])),
    )
    assert matching(rules) == {c.pk, d.pk}


def test_negated_groups_push_negation_down_to_the_conditions():
    """not (a or b) = not a and not b, also for conditions with a negated form of their own."""
    from omnichannel.profiles.models import Event

    viewer = profile(orders_count=1)
    for _ in range(2):
        Event.objects.create(profile=viewer, type="product_viewed", occurred_at=NOW)
    rich = profile(orders_count=9)
    neither = profile(orders_count=1)
    twice = cond("event", event_type="product_viewed", min_count=2)
    many = cond("orders_count", min=5)
    assert matching(group("any", twice, many)) == {viewer.pk, rich.pk}
    assert matching(group("any", twice, many, negate=True)) == {neither.pk}
    assert matching(group("all", group("any", twice, many, negate=True), negate=True)) == {
        viewer.pk,
        rich.pk,
    }
    nested_segment = Segment.objects.create(name="Twice", rules=group("all", twice))
    assert matching(group("all", cond("in_segment", negate=True, segment=nested_segment.pk))) == {
        rich.pk,
        neither.pk,
    }


def test_empty_root_matches_everyone_and_its_negation_no_one():
    a, b = profile(), profile()
    assert matching({"op": "all", "negate": False, "children": []}) == {a.pk, b.pk}
    assert matching({"op": "any", "children": []}) == {a.pk, b.pk}
    assert matching({}) == {a.pk, b.pk}
    assert matching({"op": "all", "negate": True, "children": []}) == set()


def test_validated_rules_are_normalised_json():
    rules = validate_rules(
        group(
            "all",
            {"type": "total_spent", "params": {"min": "10.5"}},
            {"op": "any", "children": [cond("event", event_type="order_placed")]},
        )
    )
    assert rules == {
        "op": "all",
        "negate": False,
        "children": [
            {"type": "total_spent", "negate": False, "params": {"min": "10.5", "max": None}},
            {
                "op": "any",
                "negate": False,
                "children": [
                    {
                        "type": "event",
                        "negate": False,
                        "params": {
                            "event_type": "order_placed",
                            "custom_type": "",
                            "product": None,
                            "category": None,
                            "min_count": 1,
                            "days": None,
                        },
                    }
                ],
            },
        ],
    }
    assert validate_rules(rules) == rules  # idempotent


def test_describe_rules():
    rules = group(
        "all",
        cond("orders_count", min=3),
        group("any", cond("devices_count", min=2), cond("last_seen", days=7), negate=True),
    )
    assert describe_rules(rules) == (
        "Orders count at least 3 and not (Number of devices at least 2 or Last seen within 7 days)"
    )
    assert describe_rules(group("all")) == "everyone"
    assert describe_rules("nonsense") == "(invalid rules)"


# --- Validation errors name the place ---------------------------------------------------------
def test_unknown_condition_type():
    assert errors_of(group("all", cond("orders_count", min=1), cond("foo"))) == [
        "children[1].type: unknown condition type 'foo'"
    ]


def test_unknown_operator():
    data = group("all", cond("orders_count", min=1), cond("orders_count", min=1), {"op": "xor"})
    data["children"][2]["children"] = [cond("orders_count", min=1)]
    assert errors_of(data) == ['children[2].op: must be "all" or "any"']
    assert errors_of({"op": "none", "children": []}) == ['op: must be "all" or "any"']


def test_malformed_values_name_the_parameter():
    errors = errors_of(
        group(
            "all",
            cond("event", event_type="product_viewed", days=0),
            cond("orders_count", min="three"),
            cond("sources_used", sources="web"),
            cond("total_spent", min={"$gt": 1}),
            cond("orders_count", min=True),
        )
    )
    assert errors == [
        "children[0].params.days: Ensure this value is greater than or equal to 1.",
        "children[1].params.min: Enter a whole number.",
        "children[2].params.sources: malformed value 'web'",
        "children[3].params.min: malformed value {'$gt': 1}",
        "children[4].params.min: malformed value True",
    ]


def test_unknown_parameter_and_unknown_key():
    errors = errors_of(group("all", {"type": "orders_count", "params": {"min": 1, "mni": 2}}))
    assert errors == ["children[0].params.mni: unknown parameter"]
    errors = errors_of(group("all", {"type": "orders_count", "params": {"min": 1}, "not": True}))
    assert errors == ["children[0].not: unknown key"]


def test_cross_field_errors_point_at_the_params():
    assert errors_of(group("all", cond("orders_count", min=5, max=2))) == [
        'children[0].params: "at least" must not be greater than "at most".'
    ]
    assert errors_of(group("all", cond("orders_count"))) == [
        'children[0].params: Give "at least", "at most" or both.'
    ]
    assert errors_of(group("all", cond("event", event_type="custom"))) == [
        "children[0].params.custom_type: Name the custom event."
    ]
    assert errors_of(
        group("all", cond("event", event_type="custom", custom_type="DROP TABLE"))
    ) == [
        "children[0].params.custom_type: Use lower-case letters, digits and _ . : - "
        "(at most 64 characters)."
    ]
    assert errors_of(group("all", cond("bought"))) == [
        "children[0].params: Give a product or a category."
    ]


def test_structure_errors():
    assert errors_of([]) == ["rules: must be an object with op, negate and children"]
    assert errors_of(cond("orders_count", min=1)) == [
        'rules: the root must be a group ("op" and "children"), not a condition'
    ]
    assert errors_of({"op": "all", "children": "x"}) == ["children: must be a list"]
    assert errors_of(group("all", "x", {"params": {}})) == [
        "children[0]: must be an object (a condition or a group)",
        'children[1]: must have "type" (a condition) or "op" and "children" (a group)',
    ]
    assert errors_of(group("all", group("any"))) == [
        "children[0].children: a group needs at least one condition"
    ]
    assert errors_of(
        group("all", {"type": "last_seen", "negate": "yes", "params": {"days": 3}})
    ) == ["children[0].negate: must be true or false"]
    assert errors_of(group("all", {"type": "last_seen", "params": [3]})) == [
        "children[0].params: must be an object"
    ]


def test_too_deep_nesting():
    leaf = cond("orders_count", min=1)
    deepest_allowed = leaf
    for _ in range(MAX_DEPTH):
        deepest_allowed = group("all", deepest_allowed)
    validate_rules(deepest_allowed)  # five levels of groups: fine
    too_deep = group("all", deepest_allowed["children"][0])
    too_deep = group("all", too_deep)
    errors = errors_of(too_deep)
    assert errors == [
        "children[0].children[0].children[0].children[0].children[0]: "
        "groups nest at most 5 levels deep"
    ]


def test_missing_references():
    errors = errors_of(
        group(
            "all",
            cond("bought", product=987654),
            cond("bought", category=987654),
            cond("in_segment", segment=987654),
        )
    )
    assert errors == [
        "children[0].params.product: Product 987654 does not exist.",
        "children[1].params.category: Category 987654 does not exist.",
        "children[2].params.segment: Segment 987654 does not exist.",
    ]


def test_segment_cycles_are_refused_with_a_clear_error(make_segment):
    a = make_segment("A", group("all", cond("orders_count", min=1)))
    b = make_segment("B", group("all", cond("in_segment", segment=a.pk)))
    # A refers to itself
    assert errors_of(group("all", cond("in_segment", segment=a.pk)), segment_id=a.pk) == [
        "children[0].params.segment: a segment cannot contain itself"
    ]
    # A -> B -> A
    assert errors_of(
        group("all", cond("last_seen", days=3), cond("in_segment", segment=b.pk)),
        segment_id=a.pk,
    ) == ["children[1].params.segment: segment “B” makes a cycle: “B” → this segment"]
    # Segment.clean() reports it on the rules field.
    a.rules = group("all", cond("in_segment", segment=b.pk))
    with pytest.raises(ValidationError) as caught:
        a.full_clean()
    assert caught.value.message_dict["rules"] == [
        "children[0].params.segment: segment “B” makes a cycle: “B” → this segment"
    ]
    # A cycle stored behind validation's back fails to compile with a clear error (no 500s
    # from recursion).
    Segment.objects.filter(pk=a.pk).update(rules=group("all", cond("in_segment", segment=b.pk)))
    a.refresh_from_db()
    with pytest.raises(RuleError, match="segments refer to each other in a cycle: A → B → A"):
        a.count(now=NOW)


def test_deleted_referenced_segment_is_an_error_not_everyone(make_segment):
    other = make_segment("Other", group("all", cond("orders_count", min=1)))
    segment = make_segment("Not other", group("all", cond("in_segment", True, segment=other.pk)))
    other_id = other.pk
    other.delete()
    with pytest.raises(RuleError, match=f"segment {other_id} does not exist"):
        segment.count(now=NOW)


def test_no_user_input_reaches_sql_text():
    sneaky = "x'); DROP TABLE omnichannel_customerprofile; --"
    errors = errors_of(group("all", cond("event", event_type="custom", custom_type=sneaky)))
    assert errors[0].startswith("children[0].params.custom_type:")
    # A value that is valid but odd travels as a parameter.
    q = compile_rules(
        group("all", cond("event", event_type="custom", custom_type="promo:spring-26")), now=NOW
    )
    from omnichannel.profiles.models import CustomerProfile

    sql, params = CustomerProfile.objects.filter(q).query.sql_with_params()
    assert "promo:spring-26" in params and "promo:spring-26" not in sql
    assert list(CustomerProfile.objects.filter(q)) == []


# --- Registry ---------------------------------------------------------------------------------
class LanguageForm(forms.Form):
    language = forms.ChoiceField(choices=[("en", "English"), ("fr", "French")])


class LanguageCondition(ConditionType):
    key = "test_language"
    label = "Language"
    category = "Profile"
    form_class = LanguageForm

    def to_q(self, params: dict[str, Any], *, now) -> Q:
        return Q(language=params["language"])

    def describe(self, params: dict[str, Any]) -> str:
        return f"Language is {params['language']}"


def test_custom_condition_type_registered_temporarily():
    french = profile(language="fr")
    profile(language="en")
    rules = group("all", cond("test_language", language="fr"))
    with registry.temporarily(LanguageCondition):
        assert validate_rules(rules) == rules
        assert matching(rules) == {french.pk}
        assert describe_rules(rules) == "Language is fr"
        keys = [entry["key"] for entry in condition_catalog()]
        assert "test_language" in keys
        assert ("test_language", "Language") in registry.choices()
    assert "test_language" not in registry
    assert errors_of(rules) == ["children[0].type: unknown condition type 'test_language'"]


def test_duplicate_or_broken_registration_is_refused():
    with pytest.raises(ImproperlyConfigured, match="already registered"):
        registry.register(OrdersCountCondition)

    class NoForm(ConditionType):
        key = "no_form"
        label = "No form"

    with pytest.raises(ImproperlyConfigured, match="form_class"):
        registry.register(NoForm)

    class BadKey(LanguageCondition):
        key = "Bad Key"

    with pytest.raises(ImproperlyConfigured, match="snake_case"):
        registry.register(BadKey)


def test_condition_catalog_describes_every_param():
    catalog = {entry["key"]: entry for entry in condition_catalog()}
    assert {"orders_count", "event", "bought", "rfm_group", "engaged", "in_segment"} <= set(catalog)
    event = catalog["event"]
    assert event["category"] == "Behaviour"
    params = {param["name"]: param for param in event["params"]}
    assert params["event_type"]["type"] == "choice"
    assert ["order_placed", "Placed an order"] in params["event_type"]["choices"]
    assert params["product"]["type"] == "product" and not params["product"]["required"]
    assert params["category"]["type"] == "category"
    assert params["days"]["type"] == "integer" and params["days"]["choices"] is None
    assert params["min_count"]["initial"] == 1
    money = {p["name"]: p for p in catalog["total_spent"]["params"]}
    assert money["min"]["type"] == "decimal"
    groups = catalog["rfm_group"]["params"][0]
    assert groups["type"] == "multichoice" and ["champions", "Champions"] in groups["choices"]
    assert catalog["in_segment"]["params"][0]["type"] == "segment"
    channels = catalog["engaged"]["params"][0]["choices"]
    assert [name for name, _label in channels] == ["email", "webpush", "push", "telegram", "sms"]
    for entry in catalog.values():
        for param in entry["params"]:
            assert set(param) == {
                "name",
                "label",
                "type",
                "required",
                "choices",
                "help",
                "initial",
            }
