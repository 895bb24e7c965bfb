"""The simulated day: shoppers through the real shop, the campaigns on a simulated clock."""

from __future__ import annotations

import io
from datetime import datetime
from datetime import timezone as dt_timezone

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db.models import Q
from oscar.core.loading import get_model

from omnichannel.analytics.models import Conversion
from omnichannel.campaigns.models import Campaign, CampaignStatus, Enrollment
from omnichannel.channels.models import Message, OutboxEntry
from omnichannel.profiles.models import Event, EventSource, EventType
from sandbox.demo.simulation import SIM_DOMAIN, DaySimulation, plan_shoppers

pytestmark = pytest.mark.django_db

User = get_user_model()
Order = get_model("order", "Order")

#: A Saturday morning: the shoppers arrive over the weekend.
START = datetime(2026, 3, 14, 6, 0, tzinfo=dt_timezone.utc)


@pytest.fixture
def demo_shop(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    call_command("sandbox_load_demo", customers=2, products=8, stdout=io.StringIO())
    assert Campaign.objects.filter(status=CampaignStatus.ACTIVE).count() == 6


def test_a_day_of_30_shoppers_runs_the_campaigns_and_the_cascade_costs_less(demo_shop):
    simulation = DaySimulation(shoppers=30, seed=3, hours=36, start=START)
    report = simulation.run()
    text = report.text()

    # The shoppers went through the shop: accounts, Oscar orders, a store purchase maybe.
    people = User.objects.filter(email__endswith=f"@{SIM_DOMAIN}")
    assert people.count() == sum(1 for s in simulation.shoppers if s.kind != "guest")
    assert all(f".{report.run}" in email for email in people.values_list("email", flat=True))
    assert report.activity["visits"] == 30
    theirs = Q(user__email__endswith=SIM_DOMAIN) | Q(guest_email__endswith=SIM_DOMAIN)
    assert Order.objects.filter(theirs).count() == report.activity["online orders"]
    assert report.activity["online orders"] > 0
    web_orders = Event.objects.filter(
        type=EventType.ORDER_PLACED,
        source=EventSource.WEB,
        occurred_at__gte=START,
        occurred_at__lte=report.end,
    )
    assert web_orders.count() == report.activity["online orders"]

    # The engine enrolled them, wrote messages, the outbox got them, reactions were recorded.
    ours = Message.objects.filter(profile__user__email__endswith=f"@{SIM_DOMAIN}")
    assert ours.filter(sent_at__isnull=False).count() == report.activity["messages delivered"]
    assert report.activity["messages delivered"] > 0
    assert OutboxEntry.objects.exists()
    assert (
        ours.filter(opened_at__isnull=False).exists()
        or ours.filter(clicked_at__isnull=False).exists()
    )
    assert Enrollment.objects.filter(profile__user__email__endswith=f"@{SIM_DOMAIN}").exists()
    # Everything happened inside the simulated window, on the simulated clock.
    assert not ours.filter(created_at__lt=START).exists()
    assert not ours.filter(created_at__gt=report.end).exists()

    # The table: one line per campaign and channel, then the comparison.
    lines = text.splitlines()
    assert lines[0].startswith("Simulated day: 30 shoppers (seed 3")
    cascade = lines.index(next(line for line in lines if line.startswith("The cascade")))
    blast = lines.index(next(line for line in lines if line.startswith("The blast")))
    assert lines[cascade + 1].split() == [
        "campaign",
        "channel",
        "messages",
        "cost",
        "GBP",
        "opens",
        "clicks",
        "conversions",
    ]
    assert any(line.startswith("Abandoned basket") and " email " in line for line in lines)
    cascade_rows = lines[cascade + 3 : blast]
    total = next(line for line in cascade_rows if line.startswith("All campaigns"))
    assert (
        int(total.split()[3])
        == report.cascade_total.messages
        == sum(row.messages for row in report.cascade)
    )
    for row in report.cascade:
        assert any(
            line.startswith(row.campaign[:20]) and f" {row.channel} " in line
            for line in cascade_rows
        )
    assert any(line.startswith("cost GBP") and "the cascade saves" in line for line in lines)

    # The point of a cascade: most of the blast's reach for much less.
    assert report.cascade_total.enrollments == report.blast_total.enrollments > 0
    assert report.cascade_total.messages < report.blast_total.messages
    assert report.cascade_total.cost < report.steps_blast_total.cost <= report.blast_total.cost
    assert report.cascade_total.engaged <= report.blast_total.engaged

    # What the shop's reports will show: every order of the day went through attribution, the
    # campaign conversions add up, and each campaign has its holdout line.
    assert Conversion.objects.filter(ordered_at__gte=START).count() == web_orders.count() + (
        Event.objects.filter(
            type=EventType.ORDER_PLACED, source=EventSource.OFFLINE, occurred_at__gte=START
        ).count()
    )
    assert (
        sum(row.orders for row in report.measured)
        == Conversion.objects.filter(
            campaign__isnull=False, ordered_at__gte=START, ordered_at__lt=report.end
        ).count()
    )
    assert {row.campaign for row in report.measured} >= {row.campaign for row in report.cascade}
    assert all(row.treated + row.held_out > 0 for row in report.measured)
    measured = lines.index(next(line for line in lines if line.startswith("Measured like")))
    assert lines[measured + 1].split()[:3] == ["campaign", "orders", "revenue"]


def test_the_command_adds_new_people_on_every_run(demo_shop):
    out = io.StringIO()
    options = {"shoppers": 4, "hours": 3, "start": START, "stdout": out}
    call_command("omnichannel_simulate_day", **options)
    first = set(User.objects.filter(email__endswith=SIM_DOMAIN).values_list("email", flat=True))
    call_command("omnichannel_simulate_day", **options)
    second = set(User.objects.filter(email__endswith=SIM_DOMAIN).values_list("email", flat=True))
    assert first and first < second and len(second) == 2 * len(first)
    output = out.getvalue()
    assert output.count("Simulated day: 4 shoppers") == 2
    assert "The blast" in output


def test_the_shoppers_depend_on_the_seed_only():
    one = plan_shoppers(seed=5, count=20, run="aaaaaa", start=START, hours=48, n_products=8)
    two = plan_shoppers(seed=5, count=20, run="bbbbbb", start=START, hours=48, n_products=8)
    other = plan_shoppers(seed=6, count=20, run="aaaaaa", start=START, hours=48, n_products=8)

    def shape(shoppers):
        return [(s.kind, s.intent, s.arrives_at, s.products, s.reachable) for s in shoppers]

    assert shape(one) == shape(two) != shape(other)
    assert all(START <= s.arrives_at < START.replace(day=15) for s in one)
    assert len({s.email for s in one} | {s.email for s in two}) == 40


def test_without_a_catalogue_the_command_says_to_load_the_demo():
    with pytest.raises(CommandError, match="load the demo shop first"):
        call_command("omnichannel_simulate_day", shoppers=2, stdout=io.StringIO())
