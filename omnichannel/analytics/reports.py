"""Campaign reports: what each campaign, step, channel and variant sent, cost and earned.

Every figure is aggregated in SQL: one grouped query per table (messages, conversions,
profiles) returns a few dozen groups, which are rolled up here into the rows of each table.
Totals are the sums of the rows they summarise (``total_of``), so a page, its CSV and its
funnel always agree.

Definitions (docs/analytics.md, "Reports"):

* Messages count in a period by ``created_at``; conversions by ``ordered_at``. The period is a
  range of whole UTC days, both ends included.
* A later status implies the earlier ones: a click counts as opened, delivered and sent too
  (push and SMS report no opens; a click tracked without the open pixel was still seen).
  So sent >= delivered >= opened >= clicked in every row.
* CTR = clicked / delivered. Conversion rate = conversions / sent. Revenue per notification
  = revenue / sent. Cost is the cost of the messages sent. ROI = (revenue - cost) / cost, none
  when nothing was spent.
* Conversions are those attributed to a campaign message (``analytics.attribution``); the step,
  variant and channel of a conversion are those of the winning message.
* Revenue is summed whatever the currency of each order (``Conversion.currency``), costs are in
  ``COST_CURRENCY``: a row whose revenue has another currency has no ROI, and
  ``Row.other_currencies`` names them so the page can warn.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Case, Count, IntegerField, Q, QuerySet, Sum, Value, When
from django.db.models.functions import Coalesce, Least, TruncDate
from django.utils.translation import gettext as _

from ..campaigns.models import Campaign, Step, Variant
from ..channels.models import Message
from ..conf import app_settings
from ..profiles.models import CustomerProfile
from ..segments.models import RfmGroup
from .models import Conversion

ZERO = Decimal("0")
#: Money per notification is shown to a hundredth of a cent: SMS costs a few cents.
PER_NOTIFICATION = Decimal("0.0001")
#: Longest period a report covers: a daily series of two years is still a readable chart.
MAX_PERIOD_DAYS = 731
#: The first and last days a report can cover: the shop's history, with room to spare. Beyond
#: them the period's end (the next midnight) or a default start (30 days back) would leave
#: the dates Python and the databases can hold.
EARLIEST_DAY = date(2000, 1, 1)
LATEST_DAY = date(2999, 12, 31)

#: The stage times in order; a later one implies the earlier ones.
_SENT_TIMES = ("sent_at", "delivered_at", "opened_at", "clicked_at")
_SENT = Q(sent_at__isnull=False) | Q(delivered_at__isnull=False) | Q(opened_at__isnull=False)
_SENT |= Q(clicked_at__isnull=False)


# --- the period -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """Whole UTC days from ``start`` to ``end``, both included."""

    start: date
    end: date

    def __post_init__(self) -> None:
        if not all(EARLIEST_DAY <= day <= LATEST_DAY for day in (self.start, self.end)):
            raise ValueError(
                _("A report covers days from %(first)s to %(last)s.")
                % {"first": EARLIEST_DAY.isoformat(), "last": LATEST_DAY.isoformat()}
            )
        if self.end < self.start:
            raise ValueError(_("The end date is before the start date."))
        if self.days > MAX_PERIOD_DAYS:
            raise ValueError(
                _("A report covers at most %(days)s days.") % {"days": MAX_PERIOD_DAYS}
            )

    @classmethod
    def last_days(cls, days: int, *, today: date) -> Period:
        """The ``days`` days ending with ``today`` (none before ``EARLIEST_DAY``)."""
        if not EARLIEST_DAY <= today <= LATEST_DAY:
            raise ValueError(
                _("A report covers days from %(first)s to %(last)s.")
                % {"first": EARLIEST_DAY.isoformat(), "last": LATEST_DAY.isoformat()}
            )
        return cls(max(today - timedelta(days=days - 1), EARLIEST_DAY), today)

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    @property
    def start_at(self) -> datetime:
        """First instant of the period (aware, UTC)."""
        return datetime.combine(self.start, time.min, tzinfo=UTC)

    @property
    def end_at(self) -> datetime:
        """First instant after the period (aware, UTC): ranges are half-open."""
        return datetime.combine(self.end + timedelta(days=1), time.min, tzinfo=UTC)

    def dates(self) -> list[date]:
        return [self.start + timedelta(days=n) for n in range(self.days)]


# --- rows -------------------------------------------------------------------------------------


def _ratio(part: int | Decimal, whole: int | Decimal) -> float | None:
    return float(part) / float(whole) if whole else None


@dataclass
class Row:
    """One line of a report table: the counts and money of a group of messages."""

    key: Hashable
    label: str
    sent: int = 0
    delivered: int = 0
    opened: int = 0
    clicked: int = 0
    conversions: int = 0
    revenue: Decimal = ZERO
    cost: Decimal = ZERO
    #: The revenue in each order currency ("" for orders without one); sums to ``revenue``.
    revenue_by_currency: dict[str, Decimal] = field(default_factory=dict)

    #: The additive fields, in table order (derived ratios are properties).
    COUNTS = ("sent", "delivered", "opened", "clicked", "conversions", "revenue", "cost")

    def add(self, other: Row | dict[str, Any]) -> None:
        """Add another row's (or an aggregate's) counts to this one."""
        for name in self.COUNTS:
            value = getattr(other, name) if isinstance(other, Row) else other.get(name)
            if value:
                setattr(self, name, getattr(self, name) + value)
        by_currency = (
            other.revenue_by_currency
            if isinstance(other, Row)
            else other.get("revenue_by_currency") or {}
        )
        for currency, revenue in by_currency.items():
            self.revenue_by_currency[currency] = (
                self.revenue_by_currency.get(currency, ZERO) + revenue
            )

    @property
    def other_currencies(self) -> list[str]:
        """Order currencies of this row's revenue other than ``COST_CURRENCY``, sorted."""
        return other_currencies(self.revenue_by_currency)

    @property
    def ctr(self) -> float | None:
        """Click-through rate: clicked / delivered."""
        return _ratio(self.clicked, self.delivered)

    @property
    def open_rate(self) -> float | None:
        return _ratio(self.opened, self.delivered)

    @property
    def conversion_rate(self) -> float | None:
        """Conversions / sent."""
        return _ratio(self.conversions, self.sent)

    @property
    def revenue_per_notification(self) -> Decimal | None:
        """Revenue / sent."""
        if not self.sent:
            return None
        return (self.revenue / self.sent).quantize(PER_NOTIFICATION)

    @property
    def roi(self) -> float | None:
        """(revenue - cost) / cost; none when nothing was spent, or when some of the revenue
        is in another currency than the costs (the difference would mean nothing)."""
        if self.other_currencies:
            return None
        return _ratio(self.revenue - self.cost, self.cost)


def other_currencies(revenue_by_currency: dict[str, Decimal]) -> list[str]:
    """The currencies of ``revenue_by_currency`` that are not ``COST_CURRENCY``. Orders
    without a currency are left out: an order has one whenever it has an amount."""
    cost_currency = app_settings.COST_CURRENCY
    return sorted(code for code in revenue_by_currency if code and code != cost_currency)


def total_of(rows: Iterable[Row], label: str | None = None) -> Row:
    """The totals row of ``rows``: the sum of each count (ratios follow from the sums)."""
    total = Row(key=None, label=label or _("Total"))
    for row in rows:
        total.add(row)
    return total


# --- the grouped queries ----------------------------------------------------------------------


def _message_aggregates() -> dict[str, Any]:
    return {
        # COUNT(COALESCE(later stages)): a stage counts when it or a later one has a time.
        # Only the status columns, not the id: a covering index can answer without the
        # table (docs/analytics.md, "Speed").
        "sent": Count(Coalesce(*_SENT_TIMES)),
        "delivered": Count(Coalesce(*_SENT_TIMES[1:])),
        "opened": Count(Coalesce(*_SENT_TIMES[2:])),
        "clicked": Count("clicked_at"),
        "cost": Sum("cost", filter=_SENT, default=ZERO),
    }


def _conversion_aggregates() -> dict[str, Any]:
    return {"conversions": Count("*"), "revenue": Sum("revenue", default=ZERO)}


def _messages(period: Period) -> QuerySet[Message]:
    return Message.objects.filter(
        campaign__isnull=False, created_at__gte=period.start_at, created_at__lt=period.end_at
    )


def _conversions(period: Period, *, attributed: bool = True) -> QuerySet[Conversion]:
    orders = Conversion.objects.filter(
        ordered_at__gte=period.start_at, ordered_at__lt=period.end_at
    )
    return orders.filter(campaign__isnull=False) if attributed else orders


def _grouped(
    messages: QuerySet[Message],
    conversions: QuerySet[Conversion],
    keys: tuple[str, ...],
    *,
    by_day: bool = False,
) -> list[dict[str, Any]]:
    """One aggregate dict per group of ``keys`` (and day, when ``by_day``): one query per
    table, whatever the number of rows. The day of a message is the UTC day it was created,
    of a conversion the UTC day of the order."""
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for queryset, aggregates, time_field, split in (
        (messages, _message_aggregates(), "created_at", ()),
        # Conversions also by currency (in the same query): revenue in several currencies
        # must be told apart before it is added up.
        (conversions, _conversion_aggregates(), "ordered_at", ("currency",)),
    ):
        # order_by(): the models' default ordering would otherwise join the GROUP BY.
        queryset = queryset.order_by()
        group_keys = keys
        if by_day:
            queryset = queryset.annotate(day=TruncDate(time_field, tzinfo=UTC))
            group_keys = (*keys, "day")
        for found in queryset.values(*group_keys, *split).annotate(**aggregates):
            if by_day:
                found["day"] = _as_date(found["day"])
            group = groups.setdefault(
                tuple(found[k] for k in group_keys), {k: found[k] for k in group_keys}
            )
            for name, value in found.items():
                if name not in group_keys and name not in split:
                    group[name] = group.get(name, 0) + (value or 0)
            if split:
                by_currency = group.setdefault("revenue_by_currency", {})
                currency = found["currency"] or ""
                by_currency[currency] = by_currency.get(currency, ZERO) + found["revenue"]
    return list(groups.values())


def _roll_up(
    groups: Iterable[dict[str, Any]],
    key: Callable[[dict[str, Any]], Hashable],
    label: Callable[[Hashable], str],
    order: Callable[[Row], Any] | None = None,
) -> list[Row]:
    rows: dict[Hashable, Row] = {}
    for group in groups:
        row_key = key(group)
        row = rows.get(row_key)
        if row is None:
            row = rows[row_key] = Row(key=row_key, label=label(row_key))
        row.add(group)
    return sorted(rows.values(), key=order or (lambda row: row.label))


# --- campaign reports -------------------------------------------------------------------------


@dataclass
class MixRow:
    """A campaign's first step against what the later steps of its cascade added."""

    key: Hashable
    label: str
    first: Row
    later: Row

    @property
    def total(self) -> Row:
        return total_of([self.first, self.later])

    @property
    def added_revenue_share(self) -> float | None:
        """Share of the campaign's revenue that the later steps brought."""
        return _ratio(self.later.revenue, self.total.revenue)

    @property
    def added_conversions_share(self) -> float | None:
        return _ratio(self.later.conversions, self.total.conversions)


def _mix_rows(
    groups: list[dict[str, Any]], first_steps: set[int | None], labels: dict[Any, str]
) -> list[MixRow]:
    mix: dict[Any, MixRow] = {}
    for group in groups:
        campaign_id = group["campaign_id"]
        row = mix.get(campaign_id)
        if row is None:
            label = labels.get(campaign_id, str(campaign_id))
            row = mix[campaign_id] = MixRow(
                key=campaign_id,
                label=label,
                first=Row(key="first", label=_("First step")),
                later=Row(key="later", label=_("Later steps")),
            )
        # A message whose step was deleted cannot be placed: it counts with the later steps.
        (row.first if group["step_id"] in first_steps else row.later).add(group)
    return sorted(mix.values(), key=lambda row: row.label)


def _first_steps(campaign_ids: Iterable[int]) -> set[int | None]:
    first: dict[int, tuple[int, int]] = {}
    for step_id, campaign_id, position in Step.objects.filter(
        campaign_id__in=list(campaign_ids)
    ).values_list("pk", "campaign_id", "position"):
        if campaign_id not in first or (position, step_id) < first[campaign_id]:
            first[campaign_id] = (position, step_id)
    return {step_id for _position, step_id in first.values()}


@dataclass
class OverviewReport:
    """All campaigns over a period: one row each, the channels, the cascade's mix."""

    period: Period
    campaigns: list[Row]
    channels: list[Row]
    mix: list[MixRow]
    orders: int
    attributed_orders: int
    attributed_revenue: Decimal
    revenue: Decimal
    #: Every order of the period's revenue per currency (``revenue`` is their sum).
    revenue_by_currency: dict[str, Decimal] = field(default_factory=dict)

    @property
    def other_currencies(self) -> list[str]:
        """Currencies of the period's orders other than ``COST_CURRENCY``: revenue figures
        that add them to the rest mix currencies (the page warns)."""
        return other_currencies(self.revenue_by_currency)

    @property
    def totals(self) -> Row:
        return total_of(self.campaigns)

    @property
    def channel_totals(self) -> Row:
        return total_of(self.channels)

    @property
    def mix_totals(self) -> MixRow:
        return MixRow(
            key=None,
            label=_("Total"),
            first=total_of(row.first for row in self.mix),
            later=total_of(row.later for row in self.mix),
        )


def overview_report(period: Period) -> OverviewReport:
    """Every campaign that sent or converted in ``period``, its channels and cascade mix."""
    # All the period's orders in the same scan: those of no campaign make their own group.
    everything = _grouped(
        _messages(period),
        _conversions(period, attributed=False),
        ("campaign_id", "step_id", "channel"),
    )
    groups = [group for group in everything if group["campaign_id"] is not None]
    orders = total_of(everything)
    attributed = total_of(groups)
    campaign_ids = {group["campaign_id"] for group in groups}
    names = dict(Campaign.objects.filter(pk__in=campaign_ids).values_list("pk", "name"))
    return OverviewReport(
        period=period,
        campaigns=_roll_up(groups, lambda g: g["campaign_id"], lambda pk: names.get(pk, f"#{pk}")),
        channels=_roll_up(groups, lambda g: g["channel"] or "", lambda name: name or "-"),
        mix=_mix_rows(groups, _first_steps(campaign_ids), names),
        orders=orders.conversions,
        attributed_orders=attributed.conversions,
        attributed_revenue=attributed.revenue,
        revenue=orders.revenue,
        revenue_by_currency=orders.revenue_by_currency,
    )


@dataclass
class DayRow:
    """One day of a campaign's time series (``day`` None: the totals row)."""

    day: date | None
    sent: int = 0
    opened: int = 0
    clicked: int = 0
    conversions: int = 0
    revenue: Decimal = ZERO


@dataclass
class FunnelStage:
    key: str
    label: str
    count: int
    #: Share of the stage before (None for the first stage, after an empty one, and for the
    #: orders, which are not a subset of the clicks).
    of_previous: float | None
    #: Share of the messages sent.
    of_sent: float | None


@dataclass
class CampaignReport:
    """One campaign over a period: by step, channel and variant, daily, funnel and mix."""

    campaign: Campaign
    period: Period
    steps: list[Row]
    channels: list[Row]
    variants: list[Row]
    daily: list[DayRow]
    mix: MixRow
    uplift: Any = None  # an uplift.UpliftReport when the uplift module is installed
    uplift_error: str = ""

    @property
    def totals(self) -> Row:
        return total_of(self.steps)

    @property
    def daily_totals(self) -> DayRow:
        total = DayRow(day=None)
        for row in self.daily:
            for name in ("sent", "opened", "clicked", "conversions", "revenue"):
                setattr(total, name, getattr(total, name) + getattr(row, name))
        return total

    @property
    def other_currencies(self) -> list[str]:
        """Currencies of the campaign's conversions other than ``COST_CURRENCY``."""
        return self.totals.other_currencies

    @property
    def funnel(self) -> list[FunnelStage]:
        """Sent, delivered, opened, clicked (messages, each stage within the one before),
        then converted (orders): each a count of the totals.

        The orders are no subset of the clicks: push and SMS conversions need no click, and
        orders count by their own day, messages by theirs. So converted is a share of sent
        only, never of clicked (it could pass 100 %).
        """
        totals = self.totals
        stages = [
            ("sent", _("Sent"), totals.sent),
            ("delivered", _("Delivered"), totals.delivered),
            ("opened", _("Opened"), totals.opened),
            ("clicked", _("Clicked"), totals.clicked),
        ]
        result = []
        previous: int | None = None
        for key, label, count in stages:
            result.append(
                FunnelStage(
                    key=key,
                    label=label,
                    count=count,
                    of_previous=None if previous is None else _ratio(count, previous),
                    of_sent=_ratio(count, totals.sent),
                )
            )
            previous = count
        result.append(
            FunnelStage(
                key="converted",
                label=_("Converted (orders)"),
                count=totals.conversions,
                of_previous=None,
                of_sent=_ratio(totals.conversions, totals.sent),
            )
        )
        return result


def _step_label(step: Step | None) -> str:
    if step is None:
        return _("(deleted step)")
    return _("Step %(position)s: %(channel)s") % {
        "position": step.position,
        "channel": step.channel,
    }


def campaign_report(campaign: Campaign, period: Period, *, uplift: bool = True) -> CampaignReport:
    """``campaign`` over ``period``: one grouped query per table (by step, variant, channel and
    day: every table and the series roll up from it), plus the uplift's own when asked."""
    messages = _messages(period).filter(campaign=campaign)
    conversions = _conversions(period).filter(campaign=campaign)
    groups = _grouped(messages, conversions, ("step_id", "variant_id", "channel"), by_day=True)
    steps = {step.pk: step for step in Step.objects.filter(campaign=campaign)}
    variants = {variant.pk: variant for variant in Variant.objects.filter(step__campaign=campaign)}

    def step_order(row: Row) -> tuple[int, int]:
        step = steps.get(row.key)  # type: ignore[call-overload]
        return (step.position, step.pk) if step else (1 << 30, 0)

    def variant_label(key: Hashable) -> str:
        step_id, variant_id = key  # type: ignore[misc]
        variant = variants.get(variant_id)
        name = variant.name if variant else (_("(deleted variant)") if variant_id else _("all"))
        return f"{_step_label(steps.get(step_id))} / {name}"

    def variant_order(row: Row) -> tuple[int, int, str]:
        step_id, variant_id = row.key  # type: ignore[misc]
        step = steps.get(step_id)
        return (step.position if step else 1 << 30, variant_id or 0, row.label)

    first = min(steps.values(), key=lambda s: (s.position, s.pk), default=None)
    mix = _mix_rows(
        [{**g, "campaign_id": campaign.pk} for g in groups],
        {first.pk} if first else set(),
        {campaign.pk: campaign.name},
    )
    report = CampaignReport(
        campaign=campaign,
        period=period,
        steps=_roll_up(
            groups, lambda g: g["step_id"], lambda pk: _step_label(steps.get(pk)), step_order
        ),
        channels=_roll_up(groups, lambda g: g["channel"] or "", lambda name: name or "-"),
        variants=_roll_up(
            groups, lambda g: (g["step_id"], g["variant_id"]), variant_label, variant_order
        ),
        daily=_daily(groups, period),
        mix=mix[0]
        if mix
        else MixRow(
            key=campaign.pk,
            label=campaign.name,
            first=Row(key="first", label=_("First step")),
            later=Row(key="later", label=_("Later steps")),
        ),
    )
    if uplift:
        report.uplift, report.uplift_error = _uplift(campaign, period)
    return report


def _daily(groups: Iterable[dict[str, Any]], period: Period) -> list[DayRow]:
    days = {day: DayRow(day=day) for day in period.dates()}
    for group in groups:
        row = days[group["day"]]
        for name in ("sent", "opened", "clicked", "conversions", "revenue"):
            value = group.get(name)
            if value:
                setattr(row, name, getattr(row, name) + value)
    return list(days.values())


def _as_date(value: date | str) -> date:
    # SQLite returns the truncated date as text in some Django versions' raw values.
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _uplift(campaign: Campaign, period: Period) -> tuple[Any, str]:
    """The uplift report of ``analytics.uplift`` if that module is installed, and its error."""
    try:
        from . import uplift
    except ImportError:
        return None, ""
    try:
        return uplift.campaign_uplift(campaign, start=period.start_at, end=period.end_at), ""
    except (ValueError, ArithmeticError) as exc:
        # Too few people for a comparison is a state of the data, not a broken page.
        return None, str(exc)


# --- customers --------------------------------------------------------------------------------


@dataclass
class PeopleRow:
    """A group of customers: how many, and what they spent in all."""

    key: Hashable
    label: str
    people: int = 0
    spent: Decimal = ZERO
    orders: int = 0

    COUNTS = ("people", "spent", "orders")

    @property
    def average_spent(self) -> Decimal | None:
        return (self.spent / self.people).quantize(Decimal("0.01")) if self.people else None


def people_total(rows: Iterable[PeopleRow]) -> PeopleRow:
    """The totals row of ``rows``."""
    total = PeopleRow(key=None, label=_("Total"))
    for row in rows:
        total.people += row.people
        total.spent += row.spent
        total.orders += row.orders
    return total


@dataclass
class CustomerOverview:
    """Customers by RFM group, by number of devices and by number of sources (web, app, shop)."""

    rfm: list[PeopleRow]
    devices: list[PeopleRow]
    sources: list[PeopleRow]

    @property
    def totals(self) -> PeopleRow:
        return people_total(self.rfm)


#: Devices of a person are counted up to this; more fall in the last group.
DEVICE_GROUPS = 3


def customer_overview() -> CustomerOverview:
    """Every profile as it stands now, in one grouped query (no date range applies)."""
    sources = sum(
        (
            Case(When(**{flag: True}, then=Value(1)), default=Value(0), output_field=IntegerField())
            for flag in ("seen_on_web", "seen_on_app", "seen_offline")
        ),
        Value(0),
    )
    groups = list(
        CustomerProfile.objects.order_by()
        .annotate(
            devices=Least("devices_count", Value(DEVICE_GROUPS), output_field=IntegerField()),
            source_count=sources,
        )
        .values("rfm_score__group", "devices", "source_count")
        .annotate(people=Count("pk"), spent=Sum("total_spent"), orders=Sum("orders_count"))
    )
    rfm_labels = dict(RfmGroup.choices)
    rfm_order = {value: n for n, value in enumerate(RfmGroup.values)}

    def roll(key: Callable[[dict[str, Any]], Any], label: Callable[[Any], str], order) -> list:
        rows: dict[Any, PeopleRow] = {}
        for group in groups:
            row_key = key(group)
            row = rows.get(row_key)
            if row is None:
                row = rows[row_key] = PeopleRow(key=row_key, label=label(row_key))
            row.people += group["people"]
            row.spent += group["spent"] or ZERO
            row.orders += group["orders"] or 0
        return sorted(rows.values(), key=order)

    return CustomerOverview(
        rfm=roll(
            lambda g: g["rfm_score__group"] or "",
            lambda value: str(rfm_labels.get(value, value)) if value else _("No orders yet"),
            lambda row: rfm_order.get(row.key, len(rfm_order)),
        ),
        devices=roll(
            lambda g: g["devices"],
            lambda n: _("%(n)s or more") % {"n": n} if n >= DEVICE_GROUPS else str(n),
            lambda row: row.key,
        ),
        sources=roll(
            lambda g: g["source_count"],
            str,
            lambda row: row.key,
        ),
    )
