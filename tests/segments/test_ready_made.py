"""Ready-made segments: created on request, updated (never duplicated) when asked again."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from omnichannel.channels.models import Message
from omnichannel.segments.models import RfmScore, Segment
from omnichannel.segments.ready_made import READY_MADE, create_ready_made_segments

from .conftest import NOW, days_ago, profile

pytestmark = pytest.mark.django_db

KEYS = {
    "champions",
    "drifting",
    "not_engaged_90_days",
    "multi_device",
    "basket_abandoners_7_days",
}


def run(*args: str) -> str:
    out = StringIO()
    call_command("omnichannel_create_segments", *args, stdout=out)
    return out.getvalue()


def test_command_is_idempotent():
    output = run()
    assert output.count("created:") == 5
    assert set(Segment.objects.values_list("ready_made", flat=True)) == KEYS
    assert {item.key for item in READY_MADE} == KEYS
    # Staff rename one and break the rules of another; running again repairs the rules only.
    champions = Segment.objects.get(ready_made="champions")
    champions.name = "Our best customers"
    champions.save()
    Segment.objects.filter(ready_made="drifting").update(rules={"op": "all", "children": []})
    output = run()
    assert output.count("updated:") == 5 and "created:" not in output
    assert Segment.objects.count() == 5
    assert Segment.objects.get(ready_made="champions").name == "Our best customers"
    drifting = Segment.objects.get(ready_made="drifting")
    assert drifting.rules["children"][0]["type"] == "days_since_last_order"


def test_only_some_and_unknown_keys():
    assert "created: Multi-device (multi_device)" in run("multi_device")
    assert Segment.objects.count() == 1
    with pytest.raises(CommandError, match="unknown ready-made"):
        run("nope")


def test_a_name_taken_by_staff_is_not_overwritten():
    mine = Segment.objects.create(name="Champions", description="mine")
    results = create_ready_made_segments(["champions"])
    mine.refresh_from_db()
    assert mine.description == "mine" and mine.ready_made == ""
    assert results[0].segment.name == "Champions (ready-made)"


def test_ready_made_segments_select_the_right_people():
    create_ready_made_segments()
    segment = {s.ready_made: s for s in Segment.objects.all()}

    champion = profile(orders_count=9, last_order_at=days_ago(1))
    RfmScore.objects.create(
        profile=champion, recency=5, frequency=5, monetary=5, group="champions", computed_at=NOW
    )
    drifter = profile(orders_count=2, last_order_at=days_ago(61))
    multi = profile(devices_count=3, last_order_at=days_ago(2), orders_count=1)
    abandoner = profile(last_basket_activity_at=days_ago(2))
    reader = profile()
    Message.objects.create(
        profile=reader, channel="webpush", purpose="marketing", clicked_at=days_ago(10)
    )

    def members(key: str) -> set[int]:
        return set(segment[key].queryset(now=NOW).values_list("pk", flat=True))

    assert members("champions") == {champion.pk}
    assert members("drifting") == {drifter.pk}
    assert members("multi_device") == {multi.pk}
    assert members("basket_abandoners_7_days") == {abandoner.pk}
    assert members("not_engaged_90_days") == {champion.pk, drifter.pk, multi.pk, abandoner.pk}


def test_not_engaged_needs_an_email_or_webpush_channel():
    with override_settings(OMNICHANNEL={"CHANNELS": {"sms": {"BACKEND": "x.Y"}}}):
        output = run("not_engaged_90_days")
    assert "skipped: not_engaged_90_days" in output
    assert not Segment.objects.exists()
    with override_settings(OMNICHANNEL={"CHANNELS": {"email": {"BACKEND": "x.Y"}}}):
        create_ready_made_segments(["not_engaged_90_days"])
    rules = Segment.objects.get().rules
    assert [child["params"]["channel"] for child in rules["children"]] == ["email"]
