"""Hand-built message and order histories for the report tests, with sums known in advance.

``build_history()`` creates, in the period 1-3 March 2026 (UTC):

Campaign "Basket rescue" (steps: 1 email with variants A and B, 2 sms):

=========================  ====  =========  ======  =======  ====  ===========  ========
messages                   sent  delivered  opened  clicked  cost  conversions  revenue
=========================  ====  =========  ======  =======  ====  ===========  ========
step 1 email, variant A    4     3          2       1        0.004 2            80.00
step 1 email, variant B    2     2          2       2        0.002 1            45.50
step 2 sms                 3     3          1       1        0.12  1            20.00
=========================  ====  =========  ======  =======  ====  ===========  ========

(one queued email of A, never sent, counts nowhere and costs nothing; one SMS clicked without
a delivery report counts as delivered and opened too; one A email and one conversion lie
before the period.) Campaign "Win-back" sends 2 free push messages (cost 0) with 1 conversion
of 10.00. One order in the period is unattributed (99.00).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from omnichannel.analytics.models import AttributionModel, Conversion
from omnichannel.analytics.reports import Period
from omnichannel.campaigns.models import Campaign, CampaignKind, CampaignStatus, Step, Variant
from omnichannel.channels.models import Message, MessageStatus
from omnichannel.profiles.models import CustomerProfile, Event, EventType

PERIOD = Period(date(2026, 3, 1), date(2026, 3, 3))
DAY1 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
DAY2 = datetime(2026, 3, 2, 23, 59, tzinfo=UTC)
DAY3 = datetime(2026, 3, 3, 12, 0, tzinfo=UTC)
BEFORE = datetime(2026, 2, 28, 23, 59, tzinfo=UTC)

_orders = itertools.count(1)


@dataclass
class History:
    basket: Campaign
    winback: Campaign
    email_step: Step
    sms_step: Step
    variant_a: Variant
    variant_b: Variant
    profile: CustomerProfile


def make_message(
    campaign: Campaign,
    step: Step | None,
    *,
    at: datetime,
    reached: str,
    channel: str | None = None,
    variant: Variant | None = None,
    cost: str = "0",
    profile: CustomerProfile | None = None,
    skip: tuple[str, ...] = (),
) -> Message:
    """A campaign message created at ``at`` that got as far as ``reached`` (queued .. clicked).

    Each stage reached gets its timestamp a minute after the one before, except those in
    ``skip`` (a provider that never reported them).
    """
    stages = ["sent", "delivered", "opened", "clicked"]
    times = {}
    if reached != "queued":
        for n, stage in enumerate(stages[: stages.index(reached) + 1], start=1):
            if stage not in skip:
                times[f"{stage}_at"] = at + timedelta(minutes=n)
    return Message.objects.create(
        profile=profile,
        channel=channel or (step.channel if step else "email"),
        purpose="marketing",
        campaign=campaign,
        step=step,
        variant=variant,
        cost=Decimal(cost),
        status=MessageStatus.QUEUED if reached == "queued" else reached,
        created_at=at,
        **times,
    )


def make_conversion(
    profile: CustomerProfile,
    *,
    at: datetime,
    revenue: str,
    message: Message | None = None,
) -> Conversion:
    """An order placed at ``at``, attributed to ``message`` (copying its campaign, step, ...)."""
    event = Event.objects.create(
        type=EventType.ORDER_PLACED,
        occurred_at=at,
        profile=profile,
        amount=Decimal(revenue),
        currency="GBP",
        payload={"number": f"T{next(_orders)}"},
    )
    return Conversion.objects.create(
        order_event=event,
        profile=profile,
        ordered_at=at,
        revenue=Decimal(revenue),
        currency="GBP",
        model=AttributionModel.CLICK if message else AttributionModel.NONE,
        message=message,
        campaign=message.campaign if message else None,
        step=message.step if message else None,
        variant=message.variant if message else None,
        channel=message.channel if message else "",
        touched_at=at - timedelta(hours=1) if message else None,
    )


def build_history() -> History:
    """The histories of the module docstring; returns the objects the tests refer to."""
    profile = CustomerProfile.objects.create(first_name="Ada")
    basket = Campaign.objects.create(
        name="Basket rescue",
        kind=CampaignKind.TRIGGERED,
        status=CampaignStatus.ACTIVE,
        trigger="abandoned_basket",
    )
    email_step = Step.objects.create(campaign=basket, position=1, channel="email", template="b")
    sms_step = Step.objects.create(
        campaign=basket, position=2, channel="sms", template="b", wait=timedelta(days=1)
    )
    variant_a = Variant.objects.create(step=email_step, name="A")
    variant_b = Variant.objects.create(step=email_step, name="B", subject="Still there?")

    def email(variant: Variant, at: datetime, reached: str, **kw) -> Message:
        return make_message(
            basket, email_step, variant=variant, at=at, reached=reached, cost="0.001", **kw
        )

    def sms(at: datetime, reached: str, **kw) -> Message:
        return make_message(basket, sms_step, at=at, reached=reached, cost="0.04", **kw)

    a_clicked = email(variant_a, DAY1, "clicked")
    email(variant_a, DAY1, "opened")
    email(variant_a, DAY2, "delivered")
    email(variant_a, DAY3, "sent")
    email(variant_a, DAY3, "queued")  # never sent: counts nowhere
    email(variant_a, BEFORE, "clicked")  # before the period
    b_clicked = email(variant_b, DAY1, "clicked")
    email(variant_b, DAY2, "clicked", skip=("opened",))  # a click without the open pixel
    sms_delivered = sms(DAY2, "delivered")
    sms(DAY2, "delivered")
    sms(DAY3, "clicked", skip=("delivered", "opened"))  # no delivery report, but clicked
    make_conversion(profile, at=DAY1 + timedelta(hours=2), revenue="50.00", message=a_clicked)
    make_conversion(profile, at=DAY3, revenue="30.00", message=a_clicked)
    make_conversion(profile, at=DAY2, revenue="45.50", message=b_clicked)
    make_conversion(profile, at=DAY3, revenue="20.00", message=sms_delivered)
    make_conversion(profile, at=BEFORE, revenue="1000.00", message=a_clicked)  # before
    make_conversion(profile, at=DAY2, revenue="99.00")  # unattributed

    winback = Campaign.objects.create(
        name="Win-back",
        kind=CampaignKind.TRIGGERED,
        status=CampaignStatus.ACTIVE,
        trigger="win_back",
    )
    push_step = Step.objects.create(campaign=winback, position=1, channel="push", template="w")
    push = make_message(winback, push_step, at=DAY1, reached="delivered")
    make_message(winback, push_step, at=DAY3, reached="sent")
    make_conversion(profile, at=DAY3, revenue="10.00", message=push)
    return History(basket, winback, email_step, sms_step, variant_a, variant_b, profile)
