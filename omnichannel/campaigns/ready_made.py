"""Ready-made campaigns the app creates on request (``omnichannel_create_campaigns``).

The standard triggered campaigns of a shop: abandoned basket, abandoned wishlist, a thank-you
after a purchase, welcome, win-back and browse abandonment, each with a cascade of steps. All
but welcome hold out 10 % of the people (sent nothing) so their reports show the uplift, and
the basket email tests two subjects (A/B).
Creating them again adds only the ones that are missing (found by their ready-made key, or by
name for campaigns made before the key existed): a campaign that exists
is left exactly as staff made it, steps, options and status included.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils.translation import gettext_lazy as _

from ..channels.registry import channel_choices
from ..profiles.models import Purpose
from .models import (
    BEST_CHANNEL,
    Campaign,
    CampaignKind,
    CampaignStatus,
    Step,
    StopCondition,
    Variant,
)

#: The ready-made segment ("ready_made" key) the win-back campaign enrolls from.
WIN_BACK_SEGMENT = "drifting"


@dataclass(frozen=True)
class ReadyMadeVariant:
    name: str
    #: A subject template replacing the step's; empty keeps the template's own (the control).
    subject: str = ""
    weight: int = 1


@dataclass(frozen=True)
class ReadyMadeStep:
    channel: str
    wait: timedelta = timedelta(0)
    stop_if: str = StopCondition.OPENED
    best_hour: bool = False
    variants: tuple[ReadyMadeVariant, ...] = ()


@dataclass(frozen=True)
class ReadyMadeCampaign:
    key: str
    name: Any
    trigger: str
    template: str
    steps: tuple[ReadyMadeStep, ...]
    options: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    purpose: str = Purpose.MARKETING
    #: Share of the people held out (sent nothing) so the report shows the uplift.
    holdout_percent: int = 10


READY_MADE: list[ReadyMadeCampaign] = [
    ReadyMadeCampaign(
        "abandoned_basket",
        _("Abandoned basket"),
        trigger="abandoned_basket",
        template="abandoned_basket",
        options={"delay_minutes": 60},
        priority=100,
        steps=(
            ReadyMadeStep(
                "email",
                variants=(
                    ReadyMadeVariant("A: you left something"),
                    ReadyMadeVariant(
                        "B: the item by name",
                        subject=(
                            "{% if items %}{{ items.0.title }} is still in your basket"
                            "{% else %}Your basket is waiting{% endif %}"
                        ),
                    ),
                ),
            ),
            ReadyMadeStep("push", wait=timedelta(hours=4)),
            ReadyMadeStep("sms", wait=timedelta(hours=20)),
        ),
    ),
    ReadyMadeCampaign(
        "abandoned_wishlist",
        _("Abandoned wishlist"),
        trigger="abandoned_wishlist",
        template="abandoned_wishlist",
        options={"days": 3},
        priority=60,
        steps=(ReadyMadeStep("email"), ReadyMadeStep("push", wait=timedelta(days=1))),
    ),
    ReadyMadeCampaign(
        "post_purchase",
        _("Thank you and what goes with it"),
        trigger="post_purchase",
        template="post_purchase",
        options={"delay_hours": 24},
        priority=40,
        steps=(ReadyMadeStep("email"),),
    ),
    ReadyMadeCampaign(
        "welcome",
        _("Welcome"),
        trigger="welcome",
        template="welcome",
        options={"delay_minutes": 0},
        priority=80,
        # Everyone who registers is welcomed: nothing to measure against.
        holdout_percent=0,
        steps=(ReadyMadeStep("email"),),
    ),
    ReadyMadeCampaign(
        "win_back",
        _("Win-back"),
        trigger="win_back",
        template="win_back",
        options={"segment": WIN_BACK_SEGMENT, "cooldown_days": 90},
        priority=10,
        steps=(ReadyMadeStep(BEST_CHANNEL, best_hour=True),),
    ),
    ReadyMadeCampaign(
        "browse_abandonment",
        _("Browse abandonment"),
        trigger="browse_abandonment",
        template="browse_abandonment",
        options={"views": 3, "window_days": 7, "delay_minutes": 120},
        priority=50,
        steps=(ReadyMadeStep("email", best_hour=True),),
    ),
]

KEYS = [item.key for item in READY_MADE]


@dataclass
class ReadyMadeCampaignResult:
    key: str
    campaign: Campaign | None
    created: bool
    activated: bool = False
    #: Steps left out because their channel is not configured (e.g. no "push" channel).
    skipped_channels: list[str] = field(default_factory=list)
    skipped_reason: str = ""


def _win_back_segment_slug() -> str:
    """The slug of the ready-made "drifting" segment, created first when missing."""
    from ..segments.models import Segment
    from ..segments.ready_made import create_ready_made_segments

    segment = Segment.objects.filter(ready_made=WIN_BACK_SEGMENT).first()
    if segment is None:
        (result,) = create_ready_made_segments([WIN_BACK_SEGMENT])
        segment = result.segment
    if segment is None:  # pragma: no cover  ("drifting" needs no particular channel)
        raise ValueError(f"the ready-made segment {WIN_BACK_SEGMENT!r} could not be created")
    return segment.slug


def _options(item: ReadyMadeCampaign) -> dict[str, Any]:
    options = dict(item.options)
    if item.trigger == "win_back":
        options["segment"] = _win_back_segment_slug()
    return options


@transaction.atomic
def create_ready_made_campaigns(
    keys: Iterable[str] | None = None, *, activate: bool = False
) -> list[ReadyMadeCampaignResult]:
    """Create the ready-made campaigns that do not exist yet (looked up by key, else by name).

    A campaign of that name is left alone, whatever staff changed in it; only with
    ``activate`` is a draft one (ours or theirs) made active. Steps on channels the shop has
    not configured are left out; a campaign left without any step is not created. Unknown keys
    raise ValueError.
    """
    wanted = list(keys) if keys is not None else list(KEYS)
    known = {item.key: item for item in READY_MADE}
    unknown = [key for key in wanted if key not in known]
    if unknown:
        raise ValueError(f"unknown ready-made campaign(s) {unknown}; known: {KEYS}")
    configured = {name for name, _label in channel_choices()}
    results = []
    for key in wanted:
        item = known[key]
        name = str(item.name)
        existing = (
            Campaign.objects.filter(ready_made=key).first()
            or Campaign.objects.filter(name=name, ready_made="").first()
        )
        if existing is not None:
            result = ReadyMadeCampaignResult(key, existing, created=False)
            if activate and existing.status == CampaignStatus.DRAFT:
                existing.status = CampaignStatus.ACTIVE
                existing.save(update_fields=["status", "updated_at"])
                result.activated = True
            results.append(result)
            continue
        steps = [s for s in item.steps if s.channel == BEST_CHANNEL or s.channel in configured]
        skipped = [s.channel for s in item.steps if s not in steps]
        if not steps:
            results.append(
                ReadyMadeCampaignResult(
                    key,
                    None,
                    created=False,
                    skipped_channels=skipped,
                    skipped_reason=f"no configured channel among {', '.join(skipped)}",
                )
            )
            continue
        campaign = Campaign(
            name=name,
            ready_made=key,
            kind=CampaignKind.TRIGGERED,
            status=CampaignStatus.ACTIVE if activate else CampaignStatus.DRAFT,
            trigger=item.trigger,
            trigger_options=_options(item),
            purpose=item.purpose,
            priority=item.priority,
            holdout_percent=item.holdout_percent,
        )
        campaign.full_clean()
        campaign.save()
        for position, spec in enumerate(steps, start=1):
            step = Step(
                campaign=campaign,
                position=position,
                channel=spec.channel,
                wait=spec.wait,
                stop_if=spec.stop_if,
                template=item.template,
                best_hour=spec.best_hour,
            )
            step.full_clean()
            step.save()
            for variant_spec in spec.variants:
                variant = Variant(
                    step=step,
                    name=variant_spec.name,
                    subject=variant_spec.subject,
                    weight=variant_spec.weight,
                )
                variant.full_clean()
                variant.save()
        results.append(
            ReadyMadeCampaignResult(
                key, campaign, created=True, activated=activate, skipped_channels=skipped
            )
        )
    return results
