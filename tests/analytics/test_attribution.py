"""Attribution of orders to messages: hand-built histories with known answers.

Every test builds messages (with their delivered/opened/clicked times) and order events by
hand, runs ``attribute_orders`` at a chosen time and checks the Conversion and Influence rows.
The last test goes through the real shop: checkout after a click on a campaign email.
Both databases run these tests (SQLite by default, PostgreSQL with DATABASE_URL).
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from omnichannel.analytics.attribution import (
    REPORT_COMMIT_MARGIN,
    AttributionRules,
    attribute_orders,
    rebuild_attribution,
)
from omnichannel.analytics.models import (
    AttributionModel,
    AttributionState,
    Conversion,
    Influence,
)
from omnichannel.campaigns.models import Campaign, CampaignStatus, Step, Variant
from omnichannel.channels.models import Message, MessageStatus, MessageStatusChange
from omnichannel.channels.status import record_status
from omnichannel.exceptions import ConfigurationError
from omnichannel.profiles.merge import merge_profiles
from omnichannel.profiles.models import CustomerProfile, Event, EventSource, EventType

pytestmark = pytest.mark.django_db

#: The moment most orders are placed (a Monday, 09:00 UTC).
ORDER_AT = datetime(2026, 3, 16, 9, 0, tzinfo=UTC)
#: The attribution runs a few minutes after the orders.
RUN_AT = ORDER_AT + timedelta(minutes=5)
MINUTE, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
TICK = timedelta(microseconds=1)
CLICK_WINDOW, OPEN_WINDOW, DELIVERY_WINDOW = 5 * DAY, DAY, 12 * HOUR

_names = itertools.count(1)


# --- histories --------------------------------------------------------------------------------


def person() -> CustomerProfile:
    return CustomerProfile.objects.create(first_name=f"Person {next(_names)}")


def campaign_step(channel: str = "email") -> Step:
    campaign = Campaign.objects.create(
        name=f"Campaign {next(_names)}", trigger="welcome", status=CampaignStatus.ACTIVE
    )
    return Step.objects.create(campaign=campaign, position=1, channel=channel, template="welcome")


def message(
    profile: CustomerProfile,
    channel: str = "email",
    *,
    step: Step | None = None,
    variant: Variant | None = None,
    delivered: datetime | None = None,
    opened: datetime | None = None,
    clicked: datetime | None = None,
) -> Message:
    """A sent message with the first times of its delivery, open and click."""
    times = [t for t in (delivered, opened, clicked) if t is not None]
    sent = min(times) - MINUTE if times else ORDER_AT - 2 * DAY
    status = (
        MessageStatus.CLICKED
        if clicked
        else MessageStatus.OPENED
        if opened
        else MessageStatus.DELIVERED
        if delivered
        else MessageStatus.SENT
    )
    created = Message.objects.create(
        profile=profile,
        channel=channel,
        purpose="marketing",
        status=status,
        campaign=step.campaign if step else None,
        step=step,
        variant=variant,
        created_at=sent,
        sent_at=sent,
        delivered_at=delivered,
        opened_at=opened,
        clicked_at=clicked,
    )
    # The reports as record_status leaves them (attribution reads these), all known in time.
    MessageStatusChange.objects.bulk_create(
        MessageStatusChange(message=created, status=reported, occurred_at=at, recorded_at=at)
        for reported, at in (
            (MessageStatus.SENT, sent),
            (MessageStatus.DELIVERED, delivered),
            (MessageStatus.OPENED, opened),
            (MessageStatus.CLICKED, clicked),
        )
        if at is not None
    )
    return created


def order(
    profile: CustomerProfile | None,
    *,
    at: datetime = ORDER_AT,
    amount: str = "50.00",
    source: str = EventSource.WEB,
) -> Event:
    """An order_placed event as the fold leaves it (profile set, processed)."""
    return Event.objects.create(
        type=EventType.ORDER_PLACED,
        profile=profile,
        occurred_at=at,
        recorded_at=at,
        source=source,
        amount=Decimal(amount),
        currency="GBP",
        processed_at=at if profile else None,
    )


def attribution(event: Event) -> tuple[str, int | None]:
    """(model, message id) of an order's conversion."""
    conversion = Conversion.objects.get(order_event=event)
    return conversion.model, conversion.message_id


def influences(event: Event) -> set[tuple[int, str]]:
    return set(
        Influence.objects.filter(conversion__order_event=event).values_list("message_id", "model")
    )


def snapshot() -> list[tuple]:
    """Every conversion and influence, ids included."""
    conversions = list(Conversion.objects.order_by("pk").values_list())
    return conversions + list(Influence.objects.order_by("pk").values_list())


# --- the rules ----------------------------------------------------------------------------------


def test_the_last_click_wins_and_earlier_clicks_are_influences():
    ada = person()
    step = campaign_step()
    old = message(ada, clicked=ORDER_AT - 3 * DAY)
    recent = message(ada, step=step, clicked=ORDER_AT - DAY)
    placed = order(ada, amount="80.00")

    result = attribute_orders(now=RUN_AT)

    assert result.attributed == 1
    conversion = Conversion.objects.get(order_event=placed)
    assert (conversion.model, conversion.message_id) == (AttributionModel.CLICK, recent.pk)
    assert (conversion.campaign_id, conversion.step_id, conversion.channel) == (
        step.campaign_id,
        step.pk,
        "email",
    )
    assert conversion.touched_at == ORDER_AT - DAY
    assert (conversion.revenue, conversion.currency) == (Decimal("80.00"), "GBP")
    assert (conversion.profile_id, conversion.ordered_at, conversion.attributed_at) == (
        ada.pk,
        ORDER_AT,
        RUN_AT,
    )
    assert influences(placed) == {(old.pk, AttributionModel.CLICK)}


def test_a_click_beats_a_later_open_and_a_later_delivery():
    ada = person()
    clicked = message(ada, clicked=ORDER_AT - 2 * DAY)
    opened = message(ada, opened=ORDER_AT - HOUR)
    delivered = message(ada, "sms", delivered=ORDER_AT - MINUTE)
    placed = order(ada)

    attribute_orders(now=RUN_AT)

    assert attribution(placed) == (AttributionModel.CLICK, clicked.pk)
    assert influences(placed) == {
        (opened.pk, AttributionModel.OPEN),
        (delivered.pk, AttributionModel.DELIVERY),
    }


def test_an_open_beats_a_later_delivery():
    ada = person()
    opened = message(ada, delivered=ORDER_AT - 3 * HOUR, opened=ORDER_AT - 2 * HOUR)
    sms = message(ada, "sms", delivered=ORDER_AT - 10 * MINUTE)
    placed = order(ada)

    attribute_orders(now=RUN_AT)

    assert attribution(placed) == (AttributionModel.OPEN, opened.pk)
    assert influences(placed) == {(sms.pk, AttributionModel.DELIVERY)}


def test_deliveries_count_only_on_channels_that_report_no_opens():
    ada, bob = person(), person()
    message(ada, "email", delivered=ORDER_AT - MINUTE)  # unopened email: not a touch
    ada_order = order(ada)
    push = message(bob, "push", delivered=ORDER_AT - 2 * HOUR)
    sms = message(bob, "sms", delivered=ORDER_AT - HOUR)
    bob_order = order(bob)

    attribute_orders(now=RUN_AT)

    assert attribution(ada_order) == (AttributionModel.NONE, None)
    assert influences(ada_order) == set()
    assert attribution(bob_order) == (AttributionModel.DELIVERY, sms.pk)
    assert influences(bob_order) == {(push.pk, AttributionModel.DELIVERY)}


def test_a_message_counts_once_by_its_strongest_engagement():
    ada = person()
    winner = message(ada, clicked=ORDER_AT - HOUR)
    both = message(ada, opened=ORDER_AT - 3 * HOUR, clicked=ORDER_AT - 2 * HOUR)
    placed = order(ada)

    attribute_orders(now=RUN_AT)

    assert attribution(placed) == (AttributionModel.CLICK, winner.pk)
    assert influences(placed) == {(both.pk, AttributionModel.CLICK)}


def test_a_tie_goes_to_the_newer_message():
    ada = person()
    message(ada, clicked=ORDER_AT - HOUR)
    newer = message(ada, clicked=ORDER_AT - HOUR)
    placed = order(ada)

    attribute_orders(now=RUN_AT)

    assert attribution(placed) == (AttributionModel.CLICK, newer.pk)


@pytest.mark.parametrize(
    ("channel", "engagement", "before_order", "counts"),
    [
        # A window is [order - window, order): its first instant counts ...
        ("email", "clicked", CLICK_WINDOW, True),
        ("email", "clicked", CLICK_WINDOW + TICK, False),
        ("email", "opened", OPEN_WINDOW, True),
        ("email", "opened", OPEN_WINDOW + TICK, False),
        ("sms", "delivered", DELIVERY_WINDOW, True),
        ("sms", "delivered", DELIVERY_WINDOW + TICK, False),
        # ... the order's own instant does not.
        ("email", "clicked", TICK, True),
        ("email", "clicked", timedelta(0), False),
        ("email", "opened", timedelta(0), False),
        ("sms", "delivered", timedelta(0), False),
    ],
)
def test_windows_at_their_edges(channel, engagement, before_order, counts):
    ada = person()
    touched = message(ada, channel, **{engagement: ORDER_AT - before_order})
    placed = order(ada)

    attribute_orders(now=RUN_AT)

    model = {"clicked": "click", "opened": "open", "delivered": "delivery"}[engagement]
    expected = (model, touched.pk) if counts else (AttributionModel.NONE, None)
    assert attribution(placed) == expected


def test_windows_at_microsecond_edges_of_an_order_placed_at_a_fraction_of_a_second():
    # Dates with and without microseconds compare right on SQLite too (they are text there).
    ada = person()
    at = ORDER_AT + timedelta(microseconds=250_000)
    inside = message(ada, clicked=at - CLICK_WINDOW)
    message(ada, clicked=at - CLICK_WINDOW - TICK, opened=at - 6 * DAY)
    placed = order(ada, at=at)

    attribute_orders(now=RUN_AT)

    assert attribution(placed) == (AttributionModel.CLICK, inside.pk)


def test_messages_of_another_person_never_count():
    ada, bob = person(), person()
    message(bob, clicked=ORDER_AT - HOUR)
    message(bob, "sms", delivered=ORDER_AT - MINUTE)
    placed = order(ada)

    attribute_orders(now=RUN_AT)

    assert attribution(placed) == (AttributionModel.NONE, None)
    assert influences(placed) == set()


def test_engagement_after_the_order_never_counts():
    ada = person()
    opened_before = message(ada, opened=ORDER_AT - HOUR, clicked=ORDER_AT + MINUTE)
    message(ada, "sms", delivered=ORDER_AT + MINUTE)
    placed = order(ada)

    attribute_orders(now=RUN_AT)

    # The click came after the order: the message counts by its open only.
    assert attribution(placed) == (AttributionModel.OPEN, opened_before.pk)
    assert influences(placed) == set()


def test_each_order_gets_its_own_answer():
    ada = person()
    first_click = message(ada, clicked=ORDER_AT - DAY)
    first = order(ada, at=ORDER_AT, amount="10.00")
    second_click = message(ada, clicked=ORDER_AT + HOUR)
    second = order(ada, at=ORDER_AT + 2 * HOUR, amount="20.00")

    attribute_orders(now=ORDER_AT + 3 * HOUR)

    assert attribution(first) == (AttributionModel.CLICK, first_click.pk)
    assert attribution(second) == (AttributionModel.CLICK, second_click.pk)
    assert influences(second) == {(first_click.pk, AttributionModel.CLICK)}


def test_an_order_without_messages_gets_model_none_with_its_revenue():
    ada = person()
    placed = order(ada, amount="12.34")

    result = attribute_orders(now=RUN_AT)

    assert result.attributed == 1
    conversion = Conversion.objects.get(order_event=placed)
    assert (conversion.model, conversion.message_id, conversion.campaign_id) == ("none", None, None)
    assert (conversion.channel, conversion.touched_at) == ("", None)
    assert conversion.revenue == Decimal("12.34")


def test_an_offline_order_is_attributed_like_an_online_one():
    ada = person()
    sms = message(ada, "sms", delivered=ORDER_AT - 2 * HOUR)
    till = order(ada, source=EventSource.OFFLINE, amount="99.90")

    attribute_orders(now=RUN_AT)

    conversion = Conversion.objects.get(order_event=till)
    assert (conversion.model, conversion.message_id) == (AttributionModel.DELIVERY, sms.pk)
    assert conversion.order_id is None
    assert conversion.revenue == Decimal("99.90")


def test_an_order_waits_for_its_profile_and_for_its_time():
    ada = person()
    message(ada, clicked=ORDER_AT - HOUR)
    unfolded = order(None)
    later = order(ada, at=RUN_AT + HOUR)

    assert attribute_orders(now=RUN_AT).attributed == 0
    assert not Conversion.objects.exists()

    Event.objects.filter(pk=unfolded.pk).update(profile=ada, processed_at=RUN_AT)
    assert attribute_orders(now=RUN_AT + 2 * HOUR).attributed == 2
    assert attribution(unfolded)[0] == AttributionModel.CLICK
    assert attribution(later)[0] == AttributionModel.CLICK


def test_variant_and_step_are_copied_from_the_message():
    ada = person()
    step = campaign_step()
    variant = Variant.objects.create(step=step, name="B")
    clicked = message(ada, step=step, variant=variant, clicked=ORDER_AT - HOUR)
    placed = order(ada)

    attribute_orders(now=RUN_AT)

    conversion = Conversion.objects.get(order_event=placed)
    assert (conversion.message_id, conversion.variant_id, conversion.step_id) == (
        clicked.pk,
        variant.pk,
        step.pk,
    )


# --- settings -----------------------------------------------------------------------------------


def test_last_click_counts_clicks_only(settings):
    settings.OMNICHANNEL = {**settings.OMNICHANNEL, "ATTRIBUTION_MODEL": "last_click"}
    ada, bob = person(), person()
    message(ada, opened=ORDER_AT - HOUR)
    message(ada, "sms", delivered=ORDER_AT - HOUR)
    opened_only = order(ada)
    clicked = message(bob, clicked=ORDER_AT - 4 * DAY)
    message(bob, opened=ORDER_AT - HOUR)
    by_click = order(bob)

    attribute_orders(now=RUN_AT)

    assert attribution(opened_only) == (AttributionModel.NONE, None)
    assert attribution(by_click) == (AttributionModel.CLICK, clicked.pk)
    assert influences(by_click) == set()


def test_windows_and_delivery_channels_come_from_the_settings(settings):
    settings.OMNICHANNEL = {
        **settings.OMNICHANNEL,
        "ATTRIBUTION_CLICK_WINDOW": 3600,
        "ATTRIBUTION_DELIVERY_CHANNELS": ["push"],
    }
    ada = person()
    message(ada, clicked=ORDER_AT - 2 * HOUR)  # outside a one-hour click window
    message(ada, "sms", delivered=ORDER_AT - MINUTE)  # SMS deliveries no longer count
    push = message(ada, "push", delivered=ORDER_AT - HOUR)
    placed = order(ada)

    attribute_orders(now=RUN_AT)

    assert attribution(placed) == (AttributionModel.DELIVERY, push.pk)
    assert influences(placed) == set()


def test_delivery_channels_default_to_the_channels_that_report_no_opens():
    rules = AttributionRules.from_settings()
    assert "email" not in rules.delivery_channels
    assert {"sms", "push", "webpush"} <= set(rules.delivery_channels)


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("ATTRIBUTION_MODEL", "first_touch", "ATTRIBUTION_MODEL"),
        ("ATTRIBUTION_CLICK_WINDOW", -1, "ATTRIBUTION_CLICK_WINDOW"),
        ("ATTRIBUTION_OPEN_WINDOW", "1 day", "ATTRIBUTION_OPEN_WINDOW"),
        ("ATTRIBUTION_DELIVERY_CHANNELS", "sms", "ATTRIBUTION_DELIVERY_CHANNELS"),
    ],
)
def test_bad_settings_are_named(settings, setting, value, message):
    settings.OMNICHANNEL = {**settings.OMNICHANNEL, setting: value}
    with pytest.raises(ConfigurationError, match=message):
        attribute_orders(now=RUN_AT)


# --- idempotence, late reports, merges ----------------------------------------------------------


def test_running_twice_changes_nothing():
    ada, bob = person(), person()
    message(ada, clicked=ORDER_AT - DAY)
    message(ada, opened=ORDER_AT - HOUR)
    message(bob, "sms", delivered=ORDER_AT - HOUR)
    order(ada)
    order(bob)
    order(person())

    first = attribute_orders(now=RUN_AT)
    before = snapshot()
    second = attribute_orders(now=RUN_AT + HOUR)

    assert (first.attributed, second.attributed, second.rechecked) == (3, 0, 0)
    assert snapshot() == before
    assert Influence.objects.count() == 1


def test_a_late_click_moves_the_order_to_its_message():
    ada = person()
    email = message(ada, opened=ORDER_AT - HOUR)
    push = message(ada, "push", delivered=ORDER_AT - 40 * MINUTE)
    placed = order(ada)
    attribute_orders(now=RUN_AT)
    conversion = Conversion.objects.get(order_event=placed)
    assert (conversion.model, conversion.message_id) == (AttributionModel.OPEN, email.pk)

    # The push was tapped before the order, but the provider told us two hours later.
    reported = ORDER_AT + 2 * HOUR
    record_status(push, MessageStatus.CLICKED, at=ORDER_AT - 20 * MINUTE, now=reported)
    result = attribute_orders(now=reported + 10 * MINUTE)

    assert (result.attributed, result.rechecked, result.changed) == (0, 1, 1)
    conversion.refresh_from_db()
    assert conversion.pk == Conversion.objects.get(order_event=placed).pk  # updated in place
    assert (conversion.model, conversion.message_id, conversion.channel) == (
        AttributionModel.CLICK,
        push.pk,
        "push",
    )
    assert conversion.touched_at == ORDER_AT - 20 * MINUTE
    assert conversion.attributed_at == reported + 10 * MINUTE
    assert influences(placed) == {(email.pk, AttributionModel.OPEN)}

    # Done: the next run neither re-checks nor changes anything.
    before = snapshot()
    again = attribute_orders(now=reported + 20 * MINUTE)
    assert (again.rechecked, again.changed) == (0, 0)
    assert snapshot() == before


def test_a_late_report_of_engagement_after_the_order_changes_nothing():
    ada = person()
    email = message(ada, opened=ORDER_AT - HOUR)
    placed = order(ada)
    attribute_orders(now=RUN_AT)
    before = snapshot()

    record_status(email, MessageStatus.CLICKED, at=ORDER_AT + MINUTE, now=ORDER_AT + HOUR)
    result = attribute_orders(now=ORDER_AT + 2 * HOUR)

    assert (result.rechecked, result.changed) == (0, 0)
    assert snapshot() == before
    assert attribution(placed) == (AttributionModel.OPEN, email.pk)


def test_a_late_report_that_does_not_change_the_winner_updates_the_influences():
    ada = person()
    clicked = message(ada, clicked=ORDER_AT - DAY)
    other = message(ada, "email")
    placed = order(ada)
    attribute_orders(now=RUN_AT)
    assert influences(placed) == set()

    record_status(other, MessageStatus.OPENED, at=ORDER_AT - HOUR, now=ORDER_AT + HOUR)
    result = attribute_orders(now=ORDER_AT + 2 * HOUR)

    assert (result.rechecked, result.changed) == (1, 0)
    assert attribution(placed) == (AttributionModel.CLICK, clicked.pk)
    assert influences(placed) == {(other.pk, AttributionModel.OPEN)}


def test_a_report_recorded_just_before_a_run_is_checked_once_more():
    # It may have been committed after the run read the messages (REPORT_COMMIT_MARGIN).
    ada = person()
    email = message(ada, "email")
    placed = order(ada)
    record_status(email, MessageStatus.CLICKED, at=ORDER_AT - HOUR, now=RUN_AT - TICK)
    attribute_orders(now=RUN_AT)
    assert attribution(placed) == (AttributionModel.CLICK, email.pk)
    before = snapshot()

    recheck = attribute_orders(now=RUN_AT + REPORT_COMMIT_MARGIN)
    assert (recheck.rechecked, recheck.changed) == (1, 0)
    later = attribute_orders(now=RUN_AT + 2 * REPORT_COMMIT_MARGIN + TICK)
    assert later.rechecked == 0
    assert [row[:-1] for row in snapshot()] == [row[:-1] for row in before]  # but attributed_at


def test_a_merge_brings_the_other_profiles_messages(time_machine):
    time_machine.move_to(RUN_AT, tick=False)
    ada = person()  # lower id: survives the merge
    clicked = message(ada, clicked=ORDER_AT - DAY)
    visitor = person()  # the same person, not yet recognised when she ordered offline
    placed = order(visitor, source=EventSource.OFFLINE)
    attribute_orders(now=RUN_AT)
    assert attribution(placed) == (AttributionModel.NONE, None)

    time_machine.move_to(RUN_AT + HOUR, tick=False)
    survivor = merge_profiles(ada, visitor, reason="same phone")
    assert survivor.pk == ada.pk
    result = attribute_orders(now=RUN_AT + 2 * HOUR)

    assert (result.rechecked, result.changed) == (1, 1)
    conversion = Conversion.objects.get(order_event=placed)
    assert (conversion.model, conversion.message_id, conversion.profile_id) == (
        AttributionModel.CLICK,
        clicked.pk,
        ada.pk,
    )
    assert attribute_orders(now=RUN_AT + 3 * HOUR).rechecked == 0


def test_an_order_folded_into_a_merged_profile_uses_the_current_profile():
    ada, visitor = person(), person()
    clicked = message(visitor, clicked=ORDER_AT - HOUR)
    placed = order(ada)
    merge_profiles(ada, visitor, reason="same email")  # before any attribution

    attribute_orders(now=RUN_AT)

    conversion = Conversion.objects.get(order_event=placed)
    assert (conversion.message_id, conversion.profile_id) == (clicked.pk, ada.pk)


# --- batches, backfills, the task -----------------------------------------------------------


def _histories(count: int) -> None:
    for index in range(count):
        someone = person()
        message(someone, clicked=ORDER_AT - DAY)
        message(someone, opened=ORDER_AT - HOUR)
        order(someone, at=ORDER_AT + index * TICK)


def test_a_batch_costs_the_same_queries_whatever_its_size():
    _histories(3)
    with CaptureQueriesContext(connection) as small:
        attribute_orders(now=RUN_AT, batch_size=100)
    Conversion.objects.all().delete()
    AttributionState.objects.all().delete()  # the same start: no bookmark yet
    _histories(30)
    with CaptureQueriesContext(connection) as large:
        result = attribute_orders(now=RUN_AT, batch_size=100)
    assert result.attributed == 33
    assert len(large) == len(small)
    assert Influence.objects.count() == 33


def test_orders_are_attributed_in_batches():
    _histories(7)
    with CaptureQueriesContext(connection) as queries:
        result = attribute_orders(now=RUN_AT, batch_size=3)
    assert (result.attributed, result.batches) == (7, 3)
    assert Conversion.objects.filter(model=AttributionModel.CLICK).count() == 7
    # Per batch: pick the ids, insert conversions, insert influences (+ the savepoints).
    inserts = [
        q for q in queries if q["sql"].startswith("INSERT") and "attributionstate" not in q["sql"]
    ]
    assert len(inserts) == 6

    assert attribute_orders(now=RUN_AT).attributed == 0


def test_max_batches_leaves_the_rest_for_the_next_run():
    _histories(5)
    assert attribute_orders(now=RUN_AT, batch_size=2, max_batches=2).attributed == 4
    assert attribute_orders(now=RUN_AT, batch_size=2, max_batches=2).attributed == 1


def test_rebuild_applies_new_settings_to_old_orders(settings):
    ada = person()
    message(ada, clicked=ORDER_AT - 2 * HOUR)
    opened = message(ada, opened=ORDER_AT - HOUR)
    placed = order(ada)
    old = order(ada, at=ORDER_AT - 10 * DAY)
    attribute_orders(now=RUN_AT)
    assert attribution(placed)[0] == AttributionModel.CLICK
    old_conversion = Conversion.objects.get(order_event=old).pk

    settings.OMNICHANNEL = {**settings.OMNICHANNEL, "ATTRIBUTION_CLICK_WINDOW": 3600}
    result = rebuild_attribution(now=RUN_AT + HOUR, since=ORDER_AT - DAY)

    assert result.attributed == 1
    assert attribution(placed) == (AttributionModel.OPEN, opened.pk)
    assert influences(placed) == set()
    # Orders before --since are left alone.
    assert Conversion.objects.get(order_event=old).pk == old_conversion


def test_the_command_attributes_since_a_date_and_rebuilds():
    ada = person()
    clicked = message(ada, clicked=ORDER_AT - HOUR)
    recent = order(ada)
    old = order(ada, at=ORDER_AT - 30 * DAY)
    out = StringIO()

    call_command("omnichannel_attribute_orders", "--since", "2026-03-01", stdout=out)
    assert attribution(recent) == (AttributionModel.CLICK, clicked.pk)
    assert not Conversion.objects.filter(order_event=old).exists()
    assert "1 orders attributed" in out.getvalue()

    call_command("omnichannel_attribute_orders", "--rebuild", "--batch-size", "1", stdout=out)
    assert Conversion.objects.count() == 2
    assert "2 orders attributed" in out.getvalue()


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--since", "last tuesday"], "--since"),
        (["--since", "2026-02-30"], "--since"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_the_command_refuses_bad_arguments(args, error):
    with pytest.raises(CommandError, match=error):
        call_command("omnichannel_attribute_orders", *args, stdout=StringIO())


def test_the_task_runs_the_attribution():
    from omnichannel.analytics.tasks import ATTRIBUTE_ORDERS_TASK, attribute_orders_task
    from omnichannel.schedules import schedules
    from sandbox.celery import app

    ada = person()
    order(ada, at=datetime.now(UTC) - HOUR)
    assert attribute_orders_task()["attributed"] == 1
    assert ATTRIBUTE_ORDERS_TASK in app.tasks
    assert ATTRIBUTE_ORDERS_TASK in {task for task, _seconds in schedules().values()}


# --- through the shop ---------------------------------------------------------------------------


def test_a_checkout_after_a_click_on_a_campaign_email_is_attributed_to_it(time_machine):
    """Oscar's real views: a basket abandoned, the reminder email sent by the engine, its
    tracked link clicked, then the checkout; the fold and the attribution as the workers run
    them."""
    from urllib.parse import urlsplit

    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.urls import reverse
    from oscar.core.loading import get_model

    from omnichannel.campaigns.engine import tick
    from omnichannel.campaigns.models import CampaignKind
    from omnichannel.channels.sending import deliver_due_messages
    from omnichannel.profiles.consents import record_consent
    from omnichannel.profiles.identity import fold_pending_events
    from omnichannel.profiles.recording import registration_event, save_event
    from omnichannel.tracking.links import click_url
    from tests import shop

    def at(moment: datetime) -> datetime:
        time_machine.move_to(moment, tick=False)
        return moment

    def run_workers(now: datetime) -> None:
        fold_pending_events(now=now, batch_size=500)
        tick(now=now, dispatch=False)
        deliver_due_messages(now=now)

    start = at(ORDER_AT)
    campaign = Campaign.objects.create(
        name="Basket reminder",
        kind=CampaignKind.TRIGGERED,
        status=CampaignStatus.ACTIVE,
        trigger="abandoned_basket",
        trigger_options={"delay_minutes": 60},
    )
    step = Step.objects.create(
        campaign=campaign,
        position=1,
        channel="email",
        wait=timedelta(0),
        template="abandoned_basket",
    )
    user = get_user_model().objects.create_user(
        username="ada", email="ada@example.com", password="correct-horse-9", first_name="Ada"
    )
    save_event(registration_event(user))
    run_workers(start)
    profile = CustomerProfile.objects.get(user=user)
    record_consent(profile, channel="email", purpose="marketing", granted=True, now=start)

    client = Client()
    response = client.post(
        reverse("customer:login"),
        {"login-username": user.email, "login-password": "correct-horse-9", "login_submit": "1"},
    )
    assert response.status_code == 302
    shop.add_to_basket(client, shop.create_product("120.00", title="Fridge"))
    run_workers(start)
    run_workers(at(start + HOUR))
    email = Message.objects.get(campaign=campaign)
    assert email.sent_at == start + HOUR

    # Half an hour later Ada follows the email's link, and buys an hour after that.
    at(start + 90 * MINUTE)
    response = client.get(urlsplit(click_url(email, "/")).path)
    assert response.status_code == 302
    placed_at = at(start + 150 * MINUTE)
    oscar_order = shop.checkout(client)
    run_workers(placed_at)

    result = attribute_orders(now=at(placed_at + 5 * MINUTE))

    assert result.attributed == 1
    conversion = Conversion.objects.get()
    assert (conversion.model, conversion.message_id, conversion.touched_at) == (
        AttributionModel.CLICK,
        email.pk,
        start + 90 * MINUTE,
    )
    assert (conversion.campaign_id, conversion.step_id, conversion.channel) == (
        campaign.pk,
        step.pk,
        "email",
    )
    assert conversion.order_id == oscar_order.pk
    assert conversion.profile_id == profile.pk
    assert conversion.revenue == get_model("order", "Order").objects.get().total_incl_tax
    assert conversion.ordered_at == placed_at


def test_windows_of_zero_count_nothing_even_after_a_merge(settings, time_machine):
    settings.OMNICHANNEL = {
        **settings.OMNICHANNEL,
        "ATTRIBUTION_CLICK_WINDOW": 0,
        "ATTRIBUTION_OPEN_WINDOW": 0,
        "ATTRIBUTION_DELIVERY_WINDOW": 0,
    }
    time_machine.move_to(RUN_AT, tick=False)
    ada, visitor = person(), person()
    message(ada, clicked=ORDER_AT - HOUR)
    placed = order(visitor, amount="5.00")
    attribute_orders(now=RUN_AT)
    assert attribution(placed) == (AttributionModel.NONE, None)

    time_machine.move_to(RUN_AT + HOUR, tick=False)
    merge_profiles(ada, visitor, reason="same email")
    result = attribute_orders(now=RUN_AT + 2 * HOUR)

    assert (result.rechecked, result.changed) == (1, 0)
    conversion = Conversion.objects.get(order_event=placed)
    assert (conversion.model, conversion.message_id, conversion.profile_id) == (
        "none",
        None,
        ada.pk,
    )
    assert conversion.revenue == Decimal("5.00")
