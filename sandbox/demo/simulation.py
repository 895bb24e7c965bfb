"""A simulated day of shoppers in the demo shop, on a simulated clock, and what the campaigns did.

Shoppers are drawn from a seeded generator (``plan_shoppers``): who they are (new, an existing
customer, a guest), which channels can reach them and how they treat each channel's messages
(``Habits``), when they arrive and what they do (look, browse one product again and again, fill a
basket and leave, buy), whether they come back on their own or buy in a store instead.

``DaySimulation`` plays that day against the real shop: each visit goes through Oscar's views with
Django's test client (product pages, ``basket:add``, the wish list, the whole checkout), purchases
in a store go through the offline-order service as a till would, and the clock (time-machine)
moves in steps over the window. At every step the app runs as beat would: the fold (which
enrolls), the campaign tick, the delivery (channels write to the outbox). Each message delivered
to a simulated shopper gets their reaction, drawn from their habits: noticed (opened, read, or a
push tapped) after a while, clicked, and sometimes an order through the checkout a few minutes
later. Every reaction is recorded with ``record_status`` at its own simulated time, so the
engine's stop conditions see it.

The report (``SimulationReport``) counts per campaign and channel the messages, their cost, opens,
clicks and conversions, for the cascade the engine ran and for "the blast": the same enrollments
sent every reachable channel at once when the cascade's first step went, with the same people
reacting by the same draws. See docs/campaigns.md, "The simulated day".
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import random
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal
from typing import Any

import phonenumbers
from django.contrib.auth import get_user_model
from django.db import reset_queries, transaction
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone
from oscar.core.loading import get_model

from . import data

logger = logging.getLogger("sandbox.simulation")

User = get_user_model()
Basket = get_model("basket", "Basket")
Product = get_model("catalogue", "Product")
StockRecord = get_model("partner", "StockRecord")
Country = get_model("address", "Country")

#: Simulated people have addresses at this domain (never a real one), tagged with the run.
SIM_DOMAIN = "sim.example"

NEW, CUSTOMER, GUEST = "new", "customer", "guest"
LOOK, BROWSE, ABANDON, BUY = "look", "browse", "abandon", "buy"

#: The channels of the demo shop, in the order the tables show them.
CHANNEL_ORDER = ("email", "push", "webpush", "telegram", "sms")
#: For these, noticing a message is tapping it: a click, with no separate open to report.
TAP_CHANNELS = frozenset({"push", "webpush"})
#: Mean minutes from delivery to noticing a message (an exponential draw), per channel.
NOTICE_MINUTES = {"email": 150.0, "push": 20.0, "webpush": 30.0, "telegram": 45.0, "sms": 10.0}
#: Reactions later than this after delivery do not happen (the message is forgotten).
FORGOTTEN_AFTER = timedelta(hours=30)
#: An order this long after a message (at most) counts as that message's conversion.
ATTRIBUTION_WINDOW = timedelta(hours=24)
#: Relative number of shoppers arriving in each hour of the day (UTC, the shop's zone).
ARRIVALS_BY_HOUR = (
    1, 0.6, 0.3, 0.2, 0.2, 0.4, 1, 2, 3, 4, 4, 4, 5, 5, 4, 4, 5, 6, 7, 8, 8, 6, 4, 2,
)  # fmt: skip


# --- who the shoppers are ---------------------------------------------------------------------


@dataclass(frozen=True)
class Habits:
    """How likely a person is to notice each channel's message, then click it, then buy."""

    notice: dict[str, float]
    #: Given noticed (1 for tap channels: the tap is the click).
    click: dict[str, float]
    buy_after_click: float


@dataclass
class Shopper:
    index: int
    kind: str
    email: str
    first_name: str
    last_name: str
    phone: str  # E.164, or "" for none
    #: Channels with an address or device and a marketing consent.
    reachable: frozenset[str]
    habits: Habits
    arrives_at: datetime
    intent: str
    #: Product indexes looked at; the first ``basket_size`` go to the basket.
    products: list[int]
    basket_size: int
    joined_at: datetime
    #: Customers: their latest purchase (in a store) before the day; None for none.
    last_order_at: datetime | None = None
    #: Customers: when they put a product on their wish list, a few days before the day.
    wishlist_at: datetime | None = None
    #: Comes back on their own and checks the basket out this long after leaving it.
    returns_after: timedelta | None = None
    #: Buys the basket's products in a store this long after leaving it.
    buys_offline_after: timedelta | None = None
    # Filled in while the day runs.
    user_id: int | None = None
    profile_id: int | None = None

    @property
    def label(self) -> str:
        return f"{self.first_name} {self.last_name} <{self.email}>"


def _unit(rng: random.Random, low: float, high: float) -> float:
    return min(1.0, max(0.0, rng.uniform(low, high)))


def draw_habits(rng: random.Random) -> Habits:
    """One person's habits: an overall engagement, then per-channel variation around it."""
    engaged = rng.betavariate(2, 3)  # mean 0.4: most people read a little, a few read a lot

    def around(base: float, spread: float) -> float:
        return _unit(rng, base + spread * engaged - 0.05, base + spread * engaged + 0.05)

    return Habits(
        notice={
            "email": around(0.12, 0.55),
            "push": around(0.04, 0.30),
            "webpush": around(0.02, 0.20),
            "telegram": around(0.35, 0.45),
            "sms": around(0.55, 0.40),
        },
        click={
            "email": around(0.12, 0.35),
            "push": 1.0,
            "webpush": 1.0,
            "telegram": around(0.10, 0.30),
            "sms": around(0.06, 0.25),
        },
        buy_after_click=around(0.20, 0.40),
    )


def sim_phone(run: str, index: int) -> str:
    """A valid UK mobile number (E.164) for shopper ``index`` of run ``run``."""
    digest = int(hashlib.sha256(f"{run}:{index}".encode()).hexdigest(), 16)
    for offset in range(len(data.MOBILE_PREFIXES)):
        prefix = data.MOBILE_PREFIXES[(digest + offset) % len(data.MOBILE_PREFIXES)]
        number = phonenumbers.parse(f"0{prefix}{digest % 1_000_000:06d}", "GB")
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    raise AssertionError("no valid mobile prefix")  # pragma: no cover


def _arrival(rng: random.Random, start: datetime, span: timedelta) -> datetime:
    """A moment in [start, start + span), more likely at the shop's busy hours."""
    busiest = max(ARRIVALS_BY_HOUR)
    while True:
        at = start + timedelta(seconds=rng.uniform(0, span.total_seconds()))
        if rng.random() * busiest < ARRIVALS_BY_HOUR[at.hour]:
            return at.replace(microsecond=0)


def plan_shoppers(
    *, seed: int, count: int, run: str, start: datetime, hours: int, n_products: int
) -> list[Shopper]:
    """``count`` shoppers of the day starting at ``start``; shopper i depends on seed and i only
    (and the run tag, which only goes into their addresses)."""
    span = timedelta(hours=min(24.0, hours * 0.6))
    shoppers = []
    for index in range(count):
        rng = random.Random(f"{seed}:shopper:{index}")
        kind = rng.choices([NEW, CUSTOMER, GUEST], weights=[30, 60, 10])[0]
        first, last = rng.choice(data.FIRST_NAMES), rng.choice(data.LAST_NAMES)
        local = f"{first}.{last}".lower().replace("'", "")
        phone = sim_phone(run, index) if rng.random() < 0.55 else ""
        reachable: set[str] = set()
        if kind != GUEST:
            if rng.random() < 0.85:
                reachable.add("email")
            if phone and rng.random() < 0.6:
                reachable.add("sms")
            if rng.random() < 0.35:
                reachable.add("push")
            if rng.random() < 0.3:
                reachable.add("webpush")
            if rng.random() < 0.15:
                reachable.add("telegram")
        habits = draw_habits(rng)
        arrives_at = _arrival(rng, start, span)
        intent = rng.choices([LOOK, BROWSE, ABANDON, BUY], weights=[30, 15, 42, 13])[0]
        products = rng.sample(range(n_products), min(n_products, rng.randint(1, 3)))
        shopper = Shopper(
            index=index,
            kind=kind,
            email=f"{local}.{run}{index}@{SIM_DOMAIN}",
            first_name=first,
            last_name=last,
            phone=phone,
            reachable=frozenset(reachable),
            habits=habits,
            arrives_at=arrives_at,
            intent=intent,
            products=products,
            basket_size=min(len(products), rng.choices([1, 2], weights=[3, 1])[0]),
            joined_at=arrives_at,
        )
        if kind == CUSTOMER:
            history = rng.random()
            if history < 0.45:  # drifting: nothing for two months or more
                shopper.last_order_at = start - timedelta(days=rng.uniform(65, 300))
            elif history < 0.75:
                shopper.last_order_at = start - timedelta(days=rng.uniform(9, 55))
            oldest = shopper.last_order_at or start - timedelta(days=30)
            shopper.joined_at = oldest - timedelta(days=rng.uniform(5, 400))
            if rng.random() < 0.18:
                shopper.wishlist_at = start - timedelta(days=rng.uniform(2.0, 3.5))
        if intent == ABANDON:
            after = timedelta(hours=rng.uniform(2, 30))
            comeback = rng.random()
            if comeback < 0.14:
                shopper.returns_after = after
            elif comeback < 0.21 and kind != GUEST:
                shopper.buys_offline_after = after
        shoppers.append(shopper)
    return shoppers


# --- the report -------------------------------------------------------------------------------


@dataclass
class Row:
    campaign: str
    channel: str
    messages: int = 0
    cost: Decimal = Decimal(0)
    opens: int = 0
    clicks: int = 0
    conversions: int = 0

    def add(self, other: Row) -> None:
        self.messages += other.messages
        self.cost += other.cost
        self.opens += other.opens
        self.clicks += other.clicks
        self.conversions += other.conversions


@dataclass
class Totals:
    enrollments: int = 0
    #: Enrollments that got at least one message.
    contacted: int = 0
    #: Enrollments with a message opened, read, tapped or clicked.
    engaged: int = 0
    messages: int = 0
    cost: Decimal = Decimal(0)
    conversions: int = 0


@dataclass
class SimulationReport:
    run: str
    seed: int
    shoppers: int
    start: datetime
    end: datetime
    step: timedelta
    currency: str
    activity: Counter[str]
    cascade: list[Row]
    blast: list[Row]
    cascade_total: Totals
    blast_total: Totals
    #: The blast on the campaign's own channels only (every step at once).
    steps_blast_total: Totals
    #: What the shop's own reports say: attribution and the holdout, per campaign.
    measured: list[Measured] = field(default_factory=list)

    def text(self) -> str:
        """The report as the command prints it."""
        a = self.activity
        lines = [
            f"Simulated day: {self.shoppers} shoppers (seed {self.seed}, run {self.run}), "
            f"{self.start:%Y-%m-%d %H:%M} to {self.end:%Y-%m-%d %H:%M} UTC in "
            f"{int(self.step.total_seconds() // 60)}-minute steps",
            f"Shoppers: {a['visits']} visits, {a['registrations']} registered, "
            f"{a['baskets abandoned']} baskets left, {a['wishlist adds']} wish-list adds, "
            f"{a['online orders']} online orders ({a['orders after a click']} after a click, "
            f"{a['orders on their own']} on their own), {a['store orders']} in a store",
            f"Messages to them: {a['messages delivered']} delivered, {a['noticed']} noticed, "
            f"{a['clicked']} clicked",
            "",
            "The cascade (the engine: one channel at a time, stopping once a message is opened)",
            *self._table(self.cascade),
            "",
            "The blast (every reachable channel at once: same enrollments, same people, same "
            "reactions)",
            *self._table(self.blast),
            "",
            *self._comparison(),
            "",
            *self._measured(),
        ]
        return "\n".join(lines)

    def _measured(self) -> list[str]:
        if not self.measured:
            return []
        header = (
            f"{'campaign':<34}{'orders':>7}{'revenue':>11}{'treated':>9}{'held out':>10}"
            f"{'conv. treated':>15}{'conv. held out':>16}  uplift"
        )
        out = [
            "Measured like the shop's reports do: orders attributed to a message (last click, "
            "open or delivery), and the holdout",
            header,
            "-" * len(header),
        ]
        for row in self.measured:
            out.append(
                f"{row.campaign[:33]:<34}{row.orders:>7}{row.revenue:>11.2f}{row.treated:>9}"
                f"{row.held_out:>10}{_percent(row.treated_rate):>15}"
                f"{_percent(row.held_out_rate):>16}  {row.uplift}"
            )
        out.append(
            "(the admin's campaign reports show the same, with charts, per step, channel and "
            "variant: /admin/omnichannel/campaign/reports/)"
        )
        return out

    def _table(self, rows: list[Row]) -> list[str]:
        header = (
            f"{'campaign':<34}{'channel':<10}{'messages':>9}{'cost ' + self.currency:>12}"
            f"{'opens':>8}{'clicks':>8}{'conversions':>13}"
        )
        out = [header, "-" * len(header)]
        by_campaign: dict[str, list[Row]] = defaultdict(list)
        for row in rows:
            by_campaign[row.campaign].append(row)
        everything = Row("All campaigns", "all")
        for campaign, group in by_campaign.items():
            total = Row(campaign, "all")
            for row in group:
                out.append(self._line(row))
                total.add(row)
            if len(group) > 1:
                out.append(self._line(total))
            everything.add(total)
        out.append("-" * len(header))
        out.append(self._line(everything))
        return out

    @staticmethod
    def _line(row: Row) -> str:
        return (
            f"{row.campaign[:33]:<34}{row.channel:<10}{row.messages:>9}{row.cost:>12.4f}"
            f"{row.opens:>8}{row.clicks:>8}{row.conversions:>13}"
        )

    def _comparison(self) -> list[str]:
        c, s, b = self.cascade_total, self.steps_blast_total, self.blast_total

        def share(part: float, whole: float) -> str:
            return f"{100 * part / whole:.0f} %" if whole else "-"

        def per(totals: Totals) -> str:
            return f"{totals.cost / totals.conversions:.4f}" if totals.conversions else "-"

        def line(label: str, values: tuple[Any, Any, Any], note: str = "") -> str:
            return f"{label:<26}" + "".join(f"{v:>14}" for v in values) + note

        return [
            line("", ("cascade", "blast: steps", "blast: all")),
            line("", ("", "at once", "channels")),
            line("enrollments", (c.enrollments, s.enrollments, b.enrollments)),
            line("enrollments contacted", (c.contacted, s.contacted, b.contacted)),
            line(
                "enrollments engaged",
                (c.engaged, s.engaged, b.engaged),
                f"   the cascade reaches {share(c.engaged, s.engaged)} and "
                f"{share(c.engaged, b.engaged)} of them",
            ),
            line(
                "conversions",
                (c.conversions, s.conversions, b.conversions),
                f"   {share(c.conversions, s.conversions)} and "
                f"{share(c.conversions, b.conversions)}",
            ),
            line("messages", (c.messages, s.messages, b.messages)),
            line(
                f"cost {self.currency}",
                (f"{c.cost:.4f}", f"{s.cost:.4f}", f"{b.cost:.4f}"),
                f"   the cascade saves {share(float(s.cost - c.cost), float(s.cost))} and "
                f"{share(float(b.cost - c.cost), float(b.cost))}",
            ),
            line("cost per conversion", (per(c), per(s), per(b))),
        ]


@dataclass
class Measured:
    """One campaign as the shop's reports see it: attributed orders and the holdout's uplift."""

    campaign: str
    orders: int
    revenue: Decimal
    treated: int
    held_out: int
    treated_rate: float | None
    held_out_rate: float | None
    uplift: str


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


# --- the day ----------------------------------------------------------------------------------


class SimulationError(Exception):
    """The simulation cannot run here (no demo catalogue, time-machine missing, ...)."""


@dataclass(order=True)
class _Action:
    at: datetime
    seq: int
    run: Callable[[], None] = field(compare=False)


class DaySimulation:
    """Plays a day of shoppers against the shop and the campaigns; see the module docstring."""

    def __init__(
        self,
        *,
        shoppers: int = 300,
        seed: int = 1,
        hours: int = 48,
        step_minutes: int = 5,
        start: datetime | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if shoppers < 1:
            raise SimulationError("--shoppers must be at least 1")
        if hours < 1:
            raise SimulationError("--hours must be at least 1")
        if not 1 <= step_minutes <= 60:
            raise SimulationError("--step must be between 1 and 60 minutes")
        self.n_shoppers = shoppers
        self.seed = seed
        self.hours = hours
        self.step = timedelta(minutes=step_minutes)
        if start is None:
            # The window ends now: what it leaves behind reads as the day that just passed.
            end = timezone.now().replace(second=0, microsecond=0)
            end -= timedelta(minutes=end.minute % step_minutes)
            start = end - timedelta(hours=hours)
        elif timezone.is_naive(start):
            raise SimulationError("the start needs a time zone")
        self.start = start.astimezone(dt_timezone.utc)
        self.end = self.start + timedelta(hours=hours)
        self.log = log or (lambda message: None)
        self.run_tag = uuid.uuid4().hex[:6]
        self.activity: Counter[str] = Counter()
        self._agenda: list[_Action] = []
        self._seq = itertools.count()
        self._clients: dict[int, Client] = {}
        self._by_profile: dict[int, Shopper] = {}
        #: (profile id, time, enrollment id or None): every order of a shopper in the day, with
        #: the enrollment whose message they clicked to get there.
        self._orders: list[tuple[int, datetime, int | None]] = []
        self._ordinals: dict[tuple[int, int], list[int]] = {}

    # --- running ------------------------------------------------------------------------------

    def run(self) -> SimulationReport:
        try:
            import time_machine
        except ImportError as exc:  # pragma: no cover  (a dev dependency of the sandbox)
            raise SimulationError(
                "the simulation moves the clock with time-machine: pip install time-machine"
            ) from exc
        self._load_catalogue()
        self.shoppers = plan_shoppers(
            seed=self.seed,
            count=self.n_shoppers,
            run=self.run_tag,
            start=self.start,
            hours=self.hours,
            n_products=len(self.products),
        )
        prelude_at = self.start - timedelta(days=4)
        # Oscar's own emails to the simulated shoppers (order confirmations) go nowhere.
        quiet_mail = override_settings(EMAIL_BACKEND="django.core.mail.backends.dummy.EmailBackend")
        with quiet_mail, time_machine.travel(prelude_at, tick=False) as clock:
            self.clock = clock
            self._prelude(prelude_at)
            for shopper in self.shoppers:
                self._schedule(shopper.arrives_at, lambda s=shopper: self._visit(s))
            self._run_clock()
            return self._report()

    def _load_catalogue(self) -> None:
        rows = (
            StockRecord.objects.filter(product__is_public=True, num_in_stock__gt=0)
            .select_related("product")
            .order_by("product_id", "pk")
        )
        seen: dict[int, Any] = {}
        for record in rows:
            seen.setdefault(record.product_id, record)
        self.stockrecords = list(seen.values())
        self.products = [record.product for record in self.stockrecords]
        if (
            not self.products
            or not Country.objects.filter(iso_3166_1_a2="GB", is_shipping_country=True).exists()
        ):
            raise SimulationError(
                "no product to sell or no shipping to the UK: load the demo shop first "
                "(make demo, or python manage.py sandbox_load_demo)"
            )
        from omnichannel.campaigns.models import Campaign, CampaignStatus

        if not Campaign.objects.filter(status=CampaignStatus.ACTIVE).exists():
            self.log(
                "no active campaign: nothing will be sent (python manage.py "
                "omnichannel_create_campaigns --activate)"
            )

    def _schedule(self, at: datetime, action: Callable[[], None]) -> None:
        heapq.heappush(self._agenda, _Action(at, next(self._seq), action))

    def _run_clock(self) -> None:
        from omnichannel.campaigns.engine import tick
        from omnichannel.channels.sending import deliver_due_messages
        from omnichannel.conf import app_settings

        batch = int(app_settings.DELIVERY_BATCH_SIZE)
        self._reset_scans()
        now = self.start
        steps = 0
        while now <= self.end:
            while self._agenda and self._agenda[0].at <= now:
                action = heapq.heappop(self._agenda)
                self.clock.move_to(action.at)
                action.run()
            self.clock.move_to(now)
            self._fold(now)
            tick(now=now, dispatch=False)
            while deliver_due_messages(now=now) >= batch:
                pass
            self._react_to_messages_sent(now)
            reset_queries()  # DEBUG keeps every query otherwise
            steps += 1
            if steps % 48 == 0:
                self.log(
                    f"{now:%Y-%m-%d %H:%M}: {self.activity['visits']} visits, "
                    f"{self.activity['messages delivered']} messages, "
                    f"{self.activity['online orders']} online orders"
                )
            if now == self.end:
                break
            now = min(self._next_step(now), self.end)

    def _next_step(self, now: datetime) -> datetime:
        """The next step with something to do: an action, an enrollment or a message due.

        Steps in between would find nothing to do (beat's tick would run empty), so the clock
        jumps over them, landing on the step grid; at least every hour, for the scans.
        """
        from django.db.models import Min

        from omnichannel.campaigns.models import Enrollment, EnrollmentState
        from omnichannel.channels.models import Message, MessageStatus

        candidates = [now + timedelta(hours=1)]
        if self._agenda:
            candidates.append(self._agenda[0].at)
        for found in (
            Enrollment.objects.filter(state=EnrollmentState.ACTIVE).aggregate(
                at=Min("next_due_at")
            ),
            Message.objects.filter(status=MessageStatus.QUEUED).aggregate(
                at=Min("next_attempt_at")
            ),
        ):
            if found["at"] is not None:
                candidates.append(found["at"])
        soonest = max(min(candidates), now + self.step)
        steps = -(-(soonest - self.start) // self.step)  # ceiling: onto the grid
        return self.start + steps * self.step

    def _fold(self, now: datetime) -> None:
        from omnichannel.profiles.identity import fold_pending_events

        fold_pending_events(now=now, batch_size=1000)

    def _reset_scans(self) -> None:
        """Scans (win-back) run by the interval since the last one: a scan stamped later than
        the simulated clock (by the shop's beat, or an earlier run) would hold them back."""
        from omnichannel.campaigns.models import Campaign

        Campaign.objects.filter(last_scanned_at__gt=self.start).update(last_scanned_at=None)

    # --- before the day: existing customers, their purchases and wish lists ---------------------

    def _prelude(self, at: datetime) -> None:
        from omnichannel.profiles.recording import registration_event, save_event

        customers = [s for s in self.shoppers if s.kind == CUSTOMER]
        for shopper in customers:
            user = self._create_user(shopper)
            # Registered long ago: too old for the welcome campaign.
            save_event(registration_event(user, occurred_at=shopper.joined_at))
            if shopper.last_order_at is not None:
                # An earlier purchase, in a store: old enough to start no thank-you.
                products = random.Random(f"{self.seed}:history:{shopper.index}").sample(
                    range(len(self.products)), 1
                )
                self._till_order(shopper, products, at=shopper.last_order_at, count=False)
        self._fold(at)
        for shopper in customers:
            self._set_up_reach(shopper, at=at)
            if shopper.wishlist_at is not None:
                self._schedule(shopper.wishlist_at, lambda s=shopper: self._add_to_wishlist(s))
        self.log(f"{len(customers)} existing customers set up; the day starts at {self.start}")

    def _create_user(self, shopper: Shopper) -> Any:
        user = User._default_manager.create(
            username=shopper.email,
            email=shopper.email,
            first_name=shopper.first_name,
            last_name=shopper.last_name,
            date_joined=shopper.joined_at,
        )
        user.set_unusable_password()  # they log in with force_login only
        user.save(update_fields=["password"])
        shopper.user_id = user.pk
        return user

    def _set_up_reach(self, shopper: Shopper, *, at: datetime) -> None:
        """Consents, devices, phone and Telegram chat, as the shop's pages and apps record them."""
        from push_notifications.models import GCMDevice, WebPushDevice

        from omnichannel.channels.registry import get_channels
        from omnichannel.profiles.consents import record_consent
        from omnichannel.profiles.models import CustomerProfile, Identity, IdentityKind

        profile = CustomerProfile.objects.filter(user_id=shopper.user_id).first()
        if profile is None:
            logger.warning("simulation: no profile for %s after the fold", shopper.label)
            return
        shopper.profile_id = profile.pk
        self._by_profile[profile.pk] = shopper
        channels = get_channels()
        with transaction.atomic():
            if (
                shopper.phone
                and not Identity.objects.filter(
                    kind=IdentityKind.PHONE, value=shopper.phone
                ).exists()
            ):
                Identity.objects.create(
                    profile=profile, kind=IdentityKind.PHONE, value=shopper.phone, created_at=at
                )
            tag = f"{self.run_tag}-{shopper.index}"
            if "push" in shopper.reachable:
                GCMDevice.objects.create(
                    user_id=shopper.user_id,
                    name="Android",
                    registration_id=f"sim-fcm-{tag}",
                    cloud_message_type="FCM",
                )
            if "webpush" in shopper.reachable:
                WebPushDevice.objects.create(
                    user_id=shopper.user_id,
                    name="Browser",
                    registration_id=f"https://push.example.invalid/sim/{tag}",
                    browser="CHROME",
                    p256dh="BDemoKeyDemoKeyDemoKeyDemoKeyDemoKeyDemoKey",
                    auth="demoauthsecret",
                )
            if "telegram" in shopper.reachable:
                chat = 7_000_000_000 + int(hashlib.sha256(tag.encode()).hexdigest(), 16) % 10**9
                Identity.objects.get_or_create(
                    kind=IdentityKind.TELEGRAM, value=str(chat), defaults={"profile": profile}
                )
            consented = {
                channels[name].consent_channel for name in shopper.reachable if name in channels
            }
            for consent_channel in sorted(consented):
                record_consent(
                    profile,
                    channel=consent_channel,
                    purpose="marketing",
                    granted=True,
                    now=at,
                    note="simulated shopper",
                )

    # --- the shoppers' actions ------------------------------------------------------------------

    def _client(self, shopper: Shopper) -> Client:
        client = self._clients.get(shopper.index)
        if client is None:
            client = self._clients[shopper.index] = Client()
        if shopper.user_id is not None and "_auth_user_id" not in client.session:
            client.force_login(User._default_manager.get(pk=shopper.user_id))
        return client

    def _visit(self, shopper: Shopper) -> None:
        self.activity["visits"] += 1
        if shopper.kind == NEW:
            self._register(shopper)
        client = self._client(shopper)
        views = list(shopper.products)
        if shopper.intent == BROWSE:
            views = [shopper.products[0]] * 3  # interested, but not enough to buy
        for index in views:
            self._get(client, self.products[index].get_absolute_url())
        if shopper.intent in (ABANDON, BUY):
            for index in shopper.products[: shopper.basket_size]:
                self._add_to_basket(client, self.products[index])
        if shopper.intent == BUY:
            if self._checkout(shopper):
                self.activity["orders on their own"] += 1
        elif shopper.intent == ABANDON:
            self.activity["baskets abandoned"] += 1
            now = timezone.now()
            if shopper.returns_after is not None:
                self._schedule(now + shopper.returns_after, lambda: self._come_back(shopper))
            if shopper.buys_offline_after is not None:
                self._schedule(
                    now + shopper.buys_offline_after, lambda: self._buy_in_store(shopper)
                )

    def _register(self, shopper: Shopper) -> None:
        from omnichannel.profiles.recording import registration_event, save_event

        user = self._create_user(shopper)
        save_event(registration_event(user))
        self.activity["registrations"] += 1
        self._client(shopper)  # logs in: the fold links the visitor to the account
        now = timezone.now()
        self._fold(now)
        self._set_up_reach(shopper, at=now)

    def _get(self, client: Client, url: str) -> bool:
        response = client.get(url)
        if response.status_code != 200:
            logger.warning("simulation: GET %s answered %s", url, response.status_code)
            return False
        return True

    def _add_to_basket(self, client: Client, product: Any) -> bool:
        response = client.post(reverse("basket:add", kwargs={"pk": product.pk}), {"quantity": 1})
        if response.status_code != 302:
            logger.warning("simulation: adding %s to a basket failed", product)
            return False
        return True

    def _add_to_wishlist(self, shopper: Shopper) -> None:
        client = self._client(shopper)
        product = self.products[shopper.products[-1]]
        url = reverse("customer:wishlists-add-product", kwargs={"product_pk": product.pk})
        if client.post(url).status_code == 302:
            self.activity["wishlist adds"] += 1

    def _basket_lines(self, shopper: Shopper) -> list[int]:
        if shopper.user_id is None:
            return []
        basket = Basket.open.filter(owner_id=shopper.user_id).order_by("-pk").first()
        return list(basket.lines.values_list("product_id", flat=True)) if basket else []

    def _checkout(self, shopper: Shopper, *, enrollment_id: int | None = None) -> bool:
        """Oscar's whole checkout with its dummy payment; True once the order is placed."""
        client = self._client(shopper)
        steps: list[tuple[str, dict[str, str]]] = []
        if shopper.user_id is None:
            steps.append(
                (reverse("checkout:index"), {"username": shopper.email, "options": "anonymous"})
            )
        steps.append(
            (
                reverse("checkout:shipping-address"),
                {
                    "first_name": shopper.first_name,
                    "last_name": shopper.last_name,
                    "line1": f"{shopper.index + 1} High Street",
                    "line4": "London",
                    "postcode": "N1 9GU",
                    "country": "GB",
                    "phone_number": shopper.phone,
                },
            )
        )
        for url, form in steps:
            if client.post(url, form).status_code != 302:
                logger.warning("simulation: checkout of %s stopped at %s", shopper.label, url)
                return False
        client.get(reverse("checkout:shipping-method"), follow=True)
        response = client.post(reverse("checkout:preview"), {"action": "place_order"})
        if response.status_code != 302 or not response["Location"].endswith(
            reverse("checkout:thank-you")
        ):
            logger.warning("simulation: %s could not place the order", shopper.label)
            return False
        self.activity["online orders"] += 1
        if shopper.profile_id is not None:
            self._orders.append((shopper.profile_id, timezone.now(), enrollment_id))
        return True

    def _come_back(self, shopper: Shopper) -> None:
        """Back on their own: checks the basket out if it still holds something."""
        if self._basket_lines(shopper) and self._checkout(shopper):
            self.activity["orders on their own"] += 1

    def _buy_in_store(self, shopper: Shopper) -> None:
        """Buys what the basket holds in a store; the basket stays as it was, online."""
        in_basket = set(self._basket_lines(shopper))
        indexes = [i for i, p in enumerate(self.products) if p.pk in in_basket]
        if indexes:
            self._till_order(shopper, indexes, at=timezone.now())

    def _till_order(
        self, shopper: Shopper, indexes: Iterable[int], *, at: datetime, count: bool = True
    ) -> None:
        """A purchase at a till, through the offline-order service as the API would store it."""
        from omnichannel.api.serializers import OfflineOrderSerializer
        from omnichannel.api.services import record_offline_orders

        records = [self.stockrecords[i] for i in indexes]
        total = sum((r.price for r in records), Decimal(0))
        customer = {"email": shopper.email, "first_name": shopper.first_name}
        if shopper.phone:
            customer["phone"] = shopper.phone
        serializer = OfflineOrderSerializer(
            data={
                "number": f"SIM-{self.run_tag}-{shopper.index}-{next(self._seq)}",
                "store": {"id": "S1", "name": "Demo store, High Street"},
                "occurred_at": at.isoformat(),
                "currency": "GBP",
                "total": str(total),
                "customer": customer,
                "lines": [
                    {"sku": r.partner_sku, "quantity": 1, "unit_price": str(r.price)}
                    for r in records
                ],
            }
        )
        serializer.is_valid(raise_exception=True)
        (result,) = record_offline_orders(self._till_key(), [serializer.validated_data], now=at)
        if result.rejected:
            logger.warning("simulation: the till refused %s: %s", shopper.label, result.errors)
            return
        if count:
            self.activity["store orders"] += 1
            if shopper.profile_id is not None:
                self._orders.append((shopper.profile_id, at, None))

    def _till_key(self) -> Any:
        from omnichannel.api.models import ApiKey, Scope
        from omnichannel.profiles.models import EventSource

        key = getattr(self, "_key", None)
        if key is None:
            name = "Simulated tills (omnichannel_simulate_day)"
            key = ApiKey.objects.filter(name=name).first()
            if key is None:
                key, _secret = ApiKey.objects.create_key(
                    name=name, source=EventSource.OFFLINE, scopes=[Scope.ORDERS]
                )
            self._key = key
        return key

    # --- reactions to messages ------------------------------------------------------------------

    def _ordinal(self, profile_id: int, campaign_id: int, enrollment_id: int) -> int:
        """Which of the person's enrollments in the campaign this is (0 for the first)."""
        from omnichannel.campaigns.models import Enrollment

        key = (profile_id, campaign_id)
        known = self._ordinals.get(key)
        if known is None or enrollment_id not in known:
            known = self._ordinals[key] = list(
                Enrollment.objects.filter(profile_id=profile_id, campaign_id=campaign_id)
                .order_by("pk")
                .values_list("pk", flat=True)
            )
        return known.index(enrollment_id) if enrollment_id in known else 0

    def reaction(
        self, shopper: Shopper, campaign: str, ordinal: int, channel: str, repeat: int = 0
    ) -> tuple[timedelta | None, timedelta | None]:
        """(when noticed, when clicked) after delivery, or None: the same for the cascade and
        the blast, since the draw depends only on the person, campaign, enrollment and channel."""
        rng = random.Random(
            f"{self.seed}:react:{shopper.index}:{campaign}:{ordinal}:{channel}:{repeat}"
        )
        notice_draw, click_draw = rng.random(), rng.random()
        mean = NOTICE_MINUTES.get(channel, 60.0)
        noticed_after = timedelta(minutes=min(rng.expovariate(1 / mean), 60 * 24 * 7))
        clicked_after = noticed_after + timedelta(minutes=rng.uniform(0.5, 6))
        if notice_draw >= shopper.habits.notice.get(channel, 0) or noticed_after > FORGOTTEN_AFTER:
            return None, None
        if channel in TAP_CHANNELS:
            return noticed_after, noticed_after
        if click_draw < shopper.habits.click.get(channel, 0):
            return noticed_after, clicked_after
        return noticed_after, None

    def buys_after_click(self, shopper: Shopper, campaign: str, ordinal: int) -> bool:
        rng = random.Random(f"{self.seed}:buy:{shopper.index}:{campaign}:{ordinal}")
        return rng.random() < shopper.habits.buy_after_click

    def _react_to_messages_sent(self, now: datetime) -> None:
        from omnichannel.channels.models import Message

        sent = Message.objects.filter(
            sent_at=now, campaign__isnull=False, profile_id__in=list(self._by_profile)
        ).select_related("campaign", "enrollment")
        for message in sent:
            shopper = self._by_profile[message.profile_id]
            self.activity["messages delivered"] += 1
            ordinal = self._ordinal(message.profile_id, message.campaign_id, message.enrollment_id)
            repeat = self._repeat(message)
            noticed, clicked = self.reaction(
                shopper, message.campaign.name, ordinal, message.channel, repeat
            )
            if noticed is None:
                continue
            if message.channel not in TAP_CHANNELS:
                self._schedule(now + noticed, lambda m=message, a=now + noticed: self._open(m, a))
            if clicked is not None:
                buys = self.buys_after_click(shopper, message.campaign.name, ordinal)
                self._schedule(
                    now + clicked,
                    lambda m=message, a=now + clicked, b=buys: self._click(m, a, b),
                )

    def _repeat(self, message: Any) -> int:
        """How many earlier messages of the enrollment went on the same channel."""
        from omnichannel.channels.models import Message

        return (
            Message.objects.filter(
                enrollment_id=message.enrollment_id, channel=message.channel, pk__lt=message.pk
            ).count()
            if message.enrollment_id
            else 0
        )

    def _open(self, message: Any, at: datetime) -> None:
        from omnichannel.channels.models import MessageStatus
        from omnichannel.channels.status import record_status

        record_status(message, MessageStatus.OPENED, at=at, now=at, source="simulation")
        self.activity["noticed"] += 1

    def _click(self, message: Any, at: datetime, buys: bool) -> None:
        from omnichannel.channels.models import MessageStatus
        from omnichannel.channels.status import record_status

        record_status(message, MessageStatus.CLICKED, at=at, now=at, source="simulation")
        self.activity["clicked"] += 1
        if message.channel in TAP_CHANNELS:
            self.activity["noticed"] += 1
        if buys:
            minutes = random.Random(f"{self.seed}:checkout:{message.pk}").uniform(3, 20)
            self._schedule(at + timedelta(minutes=minutes), lambda: self._buy_after_click(message))

    def _buy_after_click(self, message: Any) -> None:
        """Followed the link and bought: the basket as it is, else what the message was about."""
        shopper = self._by_profile[message.profile_id]
        client = self._client(shopper)
        if not self._basket_lines(shopper):
            context = message.enrollment.context if message.enrollment_id else {}
            wanted = [context.get("product_id"), *(context.get("items") or [])]
            by_pk = {p.pk: p for p in self.products}
            product = next((by_pk[pk] for pk in wanted if pk in by_pk), None)
            if product is None:
                rng = random.Random(f"{self.seed}:pick:{message.pk}")
                product = self.products[rng.randrange(len(self.products))]
            self._add_to_basket(client, product)
        if self._checkout(shopper, enrollment_id=message.enrollment_id):
            self.activity["orders after a click"] += 1

    # --- the report -----------------------------------------------------------------------------

    def _report(self) -> SimulationReport:
        from omnichannel.conf import app_settings

        self.clock.move_to(self.end)
        self._fold(self.end)
        enrollments = self._enrollments()
        orders = self._order_times()
        cascade, cascade_total = self._cascade_rows(enrollments, orders)
        blast, blast_total = self._blast_rows(enrollments, orders, every_channel=True)
        _rows, steps_blast_total = self._blast_rows(enrollments, orders, every_channel=False)
        measured = self._measured()
        return SimulationReport(
            run=self.run_tag,
            seed=self.seed,
            shoppers=self.n_shoppers,
            start=self.start,
            end=self.end,
            step=self.step,
            currency=str(app_settings.COST_CURRENCY or ""),
            activity=self.activity,
            cascade=cascade,
            blast=blast,
            cascade_total=cascade_total,
            blast_total=blast_total,
            steps_blast_total=steps_blast_total,
            measured=measured,
        )

    def _measured(self) -> list[Measured]:
        """Run the attribution job as beat would, then read each campaign's attributed orders
        and its holdout comparison from the analytics functions the admin reports use."""
        from django.db.models import Count, Sum

        from omnichannel.analytics.attribution import attribute_orders
        from omnichannel.analytics.models import Conversion
        from omnichannel.analytics.uplift import campaign_uplift
        from omnichannel.campaigns.models import Campaign

        attribute_orders(now=self.end)
        attributed = {
            row["campaign_id"]: row
            for row in Conversion.objects.filter(
                campaign__isnull=False, ordered_at__gte=self.start, ordered_at__lt=self.end
            )
            .values("campaign_id")
            .annotate(orders=Count("pk"), revenue=Sum("revenue"))
        }
        rows = []
        for campaign in Campaign.objects.filter(
            enrollments__profile_id__in=list(self._by_profile)
        ).distinct():
            uplift = campaign_uplift(campaign, self.start, self.end)
            arms = {arm.kind: arm for arm in uplift.arms if arm.kind in ("treated", "holdout")}
            treated, held_out = arms.get("treated"), arms.get("holdout")
            comparison = next((c for c in uplift.comparisons if c.arm.kind == "treated"), None)
            if comparison is None or comparison.p_value is None:
                verdict = comparison.note if comparison and comparison.note else "no holdout"
            else:
                verdict = (
                    f"{100 * comparison.diff:+.1f} points "
                    f"[{100 * comparison.ci_low:+.1f}, {100 * comparison.ci_high:+.1f}]"
                    + (" significant" if comparison.significant else " not significant")
                )
            found = attributed.get(campaign.pk, {})
            rows.append(
                Measured(
                    campaign=campaign.name,
                    orders=found.get("orders", 0),
                    revenue=found.get("revenue") or Decimal(0),
                    treated=treated.people if treated else 0,
                    held_out=held_out.people if held_out else 0,
                    treated_rate=treated.conversion_rate if treated else None,
                    held_out_rate=held_out.conversion_rate if held_out else None,
                    uplift=verdict,
                )
            )
        rows.sort(key=lambda row: (-row.treated, row.campaign))
        return rows

    def _enrollments(self) -> list[Any]:
        """The shoppers' enrollments whose first step came due (the engine sent or skipped it),
        each with ``first_due_at``: when that was. The others ended before (an order, an emptied
        basket): neither the cascade nor the blast would have sent them anything."""
        from omnichannel.campaigns.models import Enrollment, EnrollmentAction, EnrollmentLog

        enrollments = {
            e.pk: e
            for e in Enrollment.objects.filter(profile_id__in=list(self._by_profile))
            .select_related("campaign")
            .order_by("-campaign__priority", "campaign__name", "pk")
        }
        first_due: dict[int, datetime] = {}
        for enrollment_id, at in EnrollmentLog.objects.filter(
            enrollment_id__in=list(enrollments),
            action__in=[EnrollmentAction.SENT, EnrollmentAction.SKIPPED],
        ).values_list("enrollment_id", "at"):
            if enrollment_id not in first_due or at < first_due[enrollment_id]:
                first_due[enrollment_id] = at
        chosen = []
        for pk, enrollment in enrollments.items():
            if pk in first_due:
                enrollment.first_due_at = first_due[pk]
                chosen.append(enrollment)
        return chosen

    def _order_times(self) -> dict[int, list[datetime]]:
        from omnichannel.profiles.models import Event, EventType

        times: dict[int, list[datetime]] = defaultdict(list)
        for profile_id, at in Event.objects.filter(
            profile_id__in=list(self._by_profile),
            type=EventType.ORDER_PLACED,
            occurred_at__gte=self.start,
        ).values_list("profile_id", "occurred_at"):
            times[profile_id].append(at)
        for found in times.values():
            found.sort()
        return times

    def _cascade_rows(
        self, enrollments: list[Any], orders: dict[int, list[datetime]]
    ) -> tuple[list[Row], Totals]:
        from omnichannel.channels.models import Message

        messages: dict[int, list[Any]] = defaultdict(list)
        for message in (
            Message.objects.filter(
                enrollment_id__in=[e.pk for e in enrollments], sent_at__isnull=False
            )
            .order_by("sent_at", "pk")
            .only("enrollment_id", "channel", "cost", "sent_at", "opened_at", "clicked_at")
        ):
            messages[message.enrollment_id].append(message)
        rows: dict[tuple[str, str], Row] = {}
        totals = Totals(enrollments=len(enrollments))
        for enrollment in enrollments:
            sent = messages.get(enrollment.pk, [])
            name = enrollment.campaign.name
            for message in sent:
                row = rows.setdefault((name, message.channel), Row(name, message.channel))
                row.messages += 1
                row.cost += message.cost
                row.opens += bool(message.opened_at or message.clicked_at)
                row.clicks += bool(message.clicked_at)
            if not sent:
                continue
            totals.contacted += 1
            totals.messages += len(sent)
            totals.cost += sum((m.cost for m in sent), Decimal(0))
            totals.engaged += any(m.opened_at or m.clicked_at for m in sent)
            converted_on = _attributed(sent, orders.get(enrollment.profile_id, []))
            if converted_on is not None:
                rows[(name, converted_on)].conversions += 1
                totals.conversions += 1
        return _ordered(rows.values(), enrollments), totals

    def _blast_rows(
        self, enrollments: list[Any], orders: dict[int, list[datetime]], *, every_channel: bool
    ) -> tuple[list[Row], Totals]:
        """Each enrollment gets a message on every reachable channel at once when its first step
        came due: every channel configured, or (``every_channel`` false) the channels of its
        campaign's steps ("best" standing for every channel)."""
        from omnichannel.campaigns.models import BEST_CHANNEL, Step
        from omnichannel.channels.models import Message
        from omnichannel.channels.registry import get_channels
        from omnichannel.profiles.models import CustomerProfile

        channels = get_channels()
        ordered = _channel_order(channels)
        allowed: dict[int, set[str]] = defaultdict(set)
        for campaign_id, channel in Step.objects.filter(
            campaign_id__in={e.campaign_id for e in enrollments}
        ).values_list("campaign_id", "channel"):
            allowed[campaign_id].update(ordered if channel == BEST_CHANNEL else [channel])
        profiles = list(
            CustomerProfile.objects.filter(
                pk__in={e.profile_id for e in enrollments}
            ).select_related("user")
        )
        reach: dict[tuple[str, str], dict[int, Any]] = {}
        for purpose in {e.campaign.purpose for e in enrollments}:
            for name, backend in channels.items():
                reach[(name, purpose)] = backend.reachability_many(profiles, purpose)
        # What a message costs on each channel: the cascade's average for the campaign (SMS
        # may take several segments), else the channel's price per unit.
        paid: dict[tuple[int, str], list[Decimal]] = defaultdict(list)
        for campaign_id, name, cost in Message.objects.filter(
            profile_id__in=list(self._by_profile), sent_at__isnull=False, campaign__isnull=False
        ).values_list("campaign_id", "channel", "cost"):
            paid[(campaign_id, name)].append(cost)
        caused = {(p, at): e for p, at, e in self._orders if e is not None}
        rows: dict[tuple[str, str], Row] = {}
        totals = Totals(enrollments=len(enrollments))
        for enrollment in enrollments:
            shopper = self._by_profile[enrollment.profile_id]
            name = enrollment.campaign.name
            at = enrollment.first_due_at
            ordinal = self._ordinal(enrollment.profile_id, enrollment.campaign_id, enrollment.pk)
            reached = [
                n
                for n in ordered
                if (every_channel or n in allowed[enrollment.campaign_id])
                and reach[(n, enrollment.campaign.purpose)].get(enrollment.profile_id)
                and reach[(n, enrollment.campaign.purpose)][enrollment.profile_id].ok
            ]
            if not reached:
                continue
            totals.contacted += 1
            engaged = False
            first_click: tuple[datetime, str] | None = None
            for channel in reached:
                row = rows.setdefault((name, channel), Row(name, channel))
                costs = paid.get((enrollment.campaign_id, channel))
                cost = sum(costs, Decimal(0)) / len(costs) if costs else channels[channel].cost
                row.messages += 1
                row.cost += cost
                totals.messages += 1
                totals.cost += cost
                noticed, clicked = self.reaction(shopper, name, ordinal, channel)
                if noticed is not None and at + noticed <= self.end:
                    row.opens += 1
                    engaged = True
                if clicked is not None and at + clicked <= self.end:
                    row.clicks += 1
                    if first_click is None or at + clicked < first_click[0]:
                        first_click = (at + clicked, channel)
            totals.engaged += engaged
            converted_on = None
            if first_click is not None and self.buys_after_click(shopper, name, ordinal):
                converted_on = first_click[1]
            else:
                for order_at in orders.get(enrollment.profile_id, []):
                    own_click = caused.get((enrollment.profile_id, order_at)) == enrollment.pk
                    if at <= order_at <= at + ATTRIBUTION_WINDOW and not own_click:
                        converted_on = reached[0]
                        break
            if converted_on is not None:
                rows[(name, converted_on)].conversions += 1
                totals.conversions += 1
        return _ordered(rows.values(), enrollments), totals


def _attributed(sent: list[Any], orders: list[datetime]) -> str | None:
    """The channel of the last message before the first order that follows a message of the
    enrollment within ATTRIBUTION_WINDOW, or None."""
    for order_at in orders:
        before = [m for m in sent if m.sent_at <= order_at]
        if before and order_at - before[-1].sent_at <= ATTRIBUTION_WINDOW:
            return before[-1].channel
    return None


def _channel_order(channels: dict[str, Any]) -> list[str]:
    known = [name for name in CHANNEL_ORDER if name in channels]
    return known + sorted(name for name in channels if name not in known)


def _ordered(rows: Iterable[Row], enrollments: list[Any]) -> list[Row]:
    """Campaigns by priority (the enrollments' order), channels in CHANNEL_ORDER."""
    rank: dict[str, int] = {}
    for enrollment in enrollments:
        rank.setdefault(enrollment.campaign.name, len(rank))
    position = {name: i for i, name in enumerate(CHANNEL_ORDER)}
    return sorted(
        rows, key=lambda r: (rank.get(r.campaign, 99), position.get(r.channel, 99), r.channel)
    )
