"""Ready-made segments the app creates on request (command or admin action), keyed by
``Segment.ready_made`` so that running it again updates them instead of adding copies."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils.translation import gettext_lazy as _

from .conditions import channel_choices
from .models import RfmGroup, Segment
from .rules import validate_rules


def _condition(type: str, negate: bool = False, **params: Any) -> dict[str, Any]:
    return {"type": type, "negate": negate, "params": params}


def _all(*children: dict[str, Any]) -> dict[str, Any]:
    return {"op": "all", "negate": False, "children": list(children)}


def _not_engaged_rules() -> dict[str, Any] | None:
    configured = {name for name, _label in channel_choices()}
    channels = [name for name in ("email", "webpush") if name in configured]
    if not channels:
        return None
    return _all(
        *(
            _condition("engaged", negate=True, channel=name, action="opened_or_clicked", days=90)
            for name in channels
        )
    )


@dataclass(frozen=True)
class ReadyMade:
    key: str
    name: Any
    description: Any

    def rules(self) -> dict[str, Any] | None:
        """The rules, or None when the shop lacks what they need (e.g. no such channel)."""
        if self.key == "not_engaged_90_days":
            return _not_engaged_rules()
        return READY_MADE_RULES[self.key]


READY_MADE_RULES: dict[str, dict[str, Any]] = {
    "champions": _all(_condition("rfm_group", groups=[RfmGroup.CHAMPIONS.value])),
    "drifting": _all(_condition("days_since_last_order", min=60, max=None)),
    "multi_device": _all(_condition("devices_count", min=2, max=None)),
    "basket_abandoners_7_days": _all(_condition("abandoned_basket", days=7)),
}

READY_MADE: list[ReadyMade] = [
    ReadyMade(
        "champions",
        _("Champions"),
        _("Ordered recently and often: the top of the RFM grid (R 5, F 4-5)."),
    ),
    ReadyMade("drifting", _("Drifting"), _("Ordered before, but nothing in the last 60 days.")),
    ReadyMade(
        "not_engaged_90_days",
        _("Not engaged 90 days"),
        _("No email and no web push opened or clicked in the last 90 days."),
    ),
    ReadyMade("multi_device", _("Multi-device"), _("Uses two or more devices.")),
    ReadyMade(
        "basket_abandoners_7_days",
        _("Basket abandoners of the last 7 days"),
        _("Changed a basket in the last 7 days and has not ordered since."),
    ),
]


@dataclass
class ReadyMadeResult:
    key: str
    segment: Segment | None
    created: bool
    skipped_reason: str = ""


@transaction.atomic
def create_ready_made_segments(keys: Iterable[str] | None = None) -> list[ReadyMadeResult]:
    """Create the ready-made segments, or update the rules of those that exist.

    A segment staff renamed keeps its name; a ready-made whose name is taken by a segment of
    staff's own gets " (ready-made)" appended. Unknown keys raise ValueError.
    """
    wanted = list(keys) if keys is not None else [item.key for item in READY_MADE]
    known = {item.key: item for item in READY_MADE}
    unknown = [key for key in wanted if key not in known]
    if unknown:
        raise ValueError(f"unknown ready-made segment(s) {unknown}; known: {sorted(known)}")
    results = []
    for key in wanted:
        item = known[key]
        rules = item.rules()
        if rules is None:
            results.append(
                ReadyMadeResult(key, None, False, "neither an email nor a webpush channel")
            )
            continue
        rules = validate_rules(rules)
        segment = Segment.objects.filter(ready_made=key).first()
        if segment is not None:
            segment.rules = rules
            segment.description = str(item.description)
            segment.save(update_fields=["rules", "description", "updated_at"])
            results.append(ReadyMadeResult(key, segment, False))
            continue
        name = str(item.name)
        if Segment.objects.filter(name=name).exists():
            name = f"{name} ({_('ready-made')})"
        segment = Segment.objects.create(
            name=name, description=str(item.description), rules=rules, ready_made=key
        )
        results.append(ReadyMadeResult(key, segment, True))
    return results
