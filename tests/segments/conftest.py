"""Helpers for segment tests: profiles built by hand, time fixed by an explicit ``now``."""

from __future__ import annotations

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

import pytest

from omnichannel.profiles.models import CustomerProfile
from omnichannel.segments.models import Segment
from omnichannel.segments.rules import compile_rules

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=dt_timezone.utc)


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def cond(type: str, negate: bool = False, **params: Any) -> dict[str, Any]:
    return {"type": type, "negate": negate, "params": params}


def group(op: str, *children: dict[str, Any], negate: bool = False) -> dict[str, Any]:
    return {"op": op, "negate": negate, "children": list(children)}


def matching(rules: dict[str, Any], *, now: datetime = NOW) -> set[int]:
    """Primary keys of the profiles the rules select."""
    return set(
        CustomerProfile.objects.filter(compile_rules(rules, now=now)).values_list("pk", flat=True)
    )


def one(type: str, negate: bool = False, now: datetime = NOW, **params: Any) -> set[int]:
    """Profiles matched by a single condition."""
    return matching(group("all", cond(type, negate, **params)), now=now)


def profile(**fields: Any) -> CustomerProfile:
    return CustomerProfile.objects.create(**fields)


@pytest.fixture
def now() -> datetime:
    return NOW


@pytest.fixture
def make_segment():
    def make(name: str, rules: dict[str, Any]) -> Segment:
        return Segment.objects.create(name=name, rules=rules)

    return make
