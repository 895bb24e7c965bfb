"""What the demo shop holds, drawn from a seeded random generator before touching the database.

Each customer's plan comes from a generator seeded with the seed and the customer's index, so
customer 3 is the same person (with the same orders, for the same catalogue size) whether the
demo has 5 customers or 40.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import phonenumbers

from . import data

#: The demo covers 18 months of history.
HISTORY_DAYS = 548


@dataclass(frozen=True)
class Moment:
    """A time relative to the run: ``days_ago`` days before today, at hour:minute (UTC).

    With ``hours_ago`` it is that many hours (and minute:second) before the run instead.
    """

    days_ago: int
    hour: int
    minute: int
    second: int = 0
    hours_ago: int | None = None


@dataclass
class OrderPlan:
    number: str
    at: Moment
    lines: list[tuple[int, int]]  # (product index, quantity)
    guest: bool = False  # placed as a guest, with the same email, before registering


@dataclass
class CustomerPlan:
    index: int
    first_name: str
    last_name: str
    email: str
    phone: str  # national format, "" for none
    line1: str
    town: str
    postcode: str
    joined: Moment
    orders: list[OrderPlan] = field(default_factory=list)
    wishlist: list[tuple[int, Moment]] = field(default_factory=list)
    open_basket: list[tuple[int, int]] = field(default_factory=list)
    open_basket_hours_ago: int = 0


def order_number(customer: int, k: int) -> str:
    """Six digits starting with 9: apart from Oscar's own numbers (100000 + basket id)."""
    return f"9{customer:04d}{k}"


def _moment(rng: random.Random, days_ago: int) -> Moment:
    return Moment(days_ago, rng.randint(7, 22), rng.randint(0, 59), rng.randint(0, 59))


def _phone(index: int) -> str:
    """A valid UK mobile number, different for every customer index."""
    digits = (index * 104_729 + 123_457) % 900_000 + 100_000
    for offset in range(len(data.MOBILE_PREFIXES)):
        prefix = data.MOBILE_PREFIXES[(index + offset) % len(data.MOBILE_PREFIXES)]
        number = f"0{prefix} {digits:06d}"
        if phonenumbers.is_valid_number(phonenumbers.parse(number, "GB")):
            return number
    raise AssertionError(f"no valid mobile number for customer {index}")  # pragma: no cover


def _lines(rng: random.Random, n_products: int) -> list[tuple[int, int]]:
    count = min(n_products, rng.choices([1, 2, 3], weights=[5, 3, 1])[0])
    products = rng.sample(range(n_products), count)
    return [(p, rng.choices([1, 2], weights=[6, 1])[0]) for p in products]


def customer_plan(seed: int, index: int, n_products: int, taken: set[str]) -> CustomerPlan:
    rng = random.Random(f"{seed}:customer:{index}")
    first = rng.choice(data.FIRST_NAMES)
    last = rng.choice(data.LAST_NAMES)
    local = f"{first}.{last}".lower().replace("'", "")
    domain = rng.choice(data.EMAIL_DOMAINS)
    email = f"{local}@{domain}"
    n = 2
    while email in taken:
        email = f"{local}{n}@{domain}"
        n += 1
    taken.add(email)
    town, district = rng.choice(data.TOWNS)
    plan = CustomerPlan(
        index=index,
        first_name=first,
        last_name=last,
        email=email,
        phone=_phone(index) if rng.random() < 0.6 else "",
        line1=f"{rng.randint(1, 180)} {rng.choice(data.STREETS)}",
        town=town,
        postcode=f"{district} {rng.randint(1, 9)}{rng.choice('ABDEFGHJLNPQRSTUWXYZ')}"
        f"{rng.choice('ABDEFGHJLNPQRSTUWXYZ')}",
        joined=_moment(rng, rng.randint(30, HISTORY_DAYS - 60)),
    )
    joined = plan.joined.days_ago

    n_orders = rng.choices(range(7), weights=[2, 5, 5, 4, 2, 1, 1])[0]
    n_orders = min(n_orders, 1 + joined // 45)  # newer customers have had less time to buy
    k = 0
    if n_orders and rng.random() < 0.15:
        # Bought once as a guest with the same email, then registered: one profile in the end.
        guest_days = joined + rng.randint(3, 50)
        plan.orders.append(
            OrderPlan(order_number(index, k), _moment(rng, guest_days), _lines(rng, n_products))
        )
        plan.orders[-1].guest = True
        k += 1
        n_orders -= 1
    for days in sorted(rng.sample(range(1, joined), n_orders), reverse=True):
        plan.orders.append(
            OrderPlan(order_number(index, k), _moment(rng, days), _lines(rng, n_products))
        )
        k += 1

    if rng.random() < 0.12:
        # Bought again today: the dashboard's "last 24 hours" is not empty.
        hours = rng.randint(1, 20)
        recent = Moment(0, 0, rng.randint(0, 59), rng.randint(0, 59), hours_ago=hours)
        plan.orders.append(OrderPlan(order_number(index, k), recent, _lines(rng, n_products)))
        k += 1

    if rng.random() < 0.3:
        count = min(n_products, rng.randint(1, 4))
        for product in rng.sample(range(n_products), count):
            plan.wishlist.append((product, _moment(rng, rng.randint(1, joined - 1))))
    if rng.random() < 0.15:
        plan.open_basket = _lines(rng, n_products)
        plan.open_basket_hours_ago = rng.randint(2, 96)
    return plan


def build_plan(*, seed: int, customers: int, products: int) -> list[CustomerPlan]:
    taken: set[str] = set()
    return [customer_plan(seed, i, products, taken) for i in range(customers)]
