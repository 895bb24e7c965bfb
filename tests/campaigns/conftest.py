"""Shared fixtures for campaign tests: campaigns with steps, reachable profiles, the fold.

* ``make_campaign(trigger=..., steps=[...], options=..., **fields)``: an active triggered
  campaign (kind, status and any other field can be given) with one step per dict in ``steps``
  (defaults: channel email, no wait, template = the trigger key).
* ``make_profile(email=..., consent=True, **fields)`` and ``profile_with_email``: a profile
  with an email identity and (by default) a marketing consent for email.
* ``fold()``: fold every pending event at the current (time-machine) time, which fires
  ``events_folded`` and so enrolls.
* ``temporary_trigger(cls)``: register a trigger class for one test.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

import pytest
from django.utils import timezone

from omnichannel.campaigns.models import Campaign, CampaignKind, CampaignStatus, Step
from omnichannel.campaigns.triggers import Trigger, registry
from omnichannel.profiles.consents import record_consent
from omnichannel.profiles.identity import fold_pending_events
from omnichannel.profiles.models import CustomerProfile, Identity, IdentityKind

#: A Monday morning, UTC: tests travel here with time-machine (``tick=False``).
NOW = datetime(2026, 3, 16, 9, 0, tzinfo=dt_timezone.utc)


@pytest.fixture
def now() -> datetime:
    return NOW


@pytest.fixture
def make_campaign(db) -> Callable[..., Campaign]:
    names = itertools.count(1)

    def make(
        trigger: str = "welcome",
        steps: list[dict[str, Any]] | None = None,
        *,
        options: dict[str, Any] | None = None,
        **fields: Any,
    ) -> Campaign:
        fields.setdefault("name", f"{trigger or 'campaign'} {next(names)}")
        fields.setdefault("kind", CampaignKind.TRIGGERED)
        fields.setdefault("status", CampaignStatus.ACTIVE)
        campaign = Campaign.objects.create(trigger=trigger, trigger_options=options or {}, **fields)
        for position, step in enumerate(steps if steps is not None else [{}], start=1):
            Step.objects.create(
                campaign=campaign,
                position=step.get("position", position),
                **{
                    "channel": "email",
                    "wait": timedelta(0),
                    "template": trigger or "newsletter",
                    **{k: v for k, v in step.items() if k != "position"},
                },
            )
        return campaign

    return make


@pytest.fixture
def make_profile(db) -> Callable[..., CustomerProfile]:
    emails = itertools.count(1)

    def make(email: str | None = None, *, consent: bool = True, **fields: Any) -> CustomerProfile:
        profile = CustomerProfile.objects.create(**fields)
        address = email or f"person{next(emails)}@example.com"
        Identity.objects.create(profile=profile, kind=IdentityKind.EMAIL, value=address)
        if consent:
            record_consent(
                profile,
                channel="email",
                purpose="marketing",
                granted=True,
                now=profile.created_at,
            )
        return profile

    return make


@pytest.fixture
def profile_with_email(make_profile) -> CustomerProfile:
    return make_profile("ada@example.com", first_name="Ada")


@pytest.fixture
def fold(db) -> Callable[[], int]:
    def run() -> int:
        return fold_pending_events(now=timezone.now(), batch_size=500)

    return run


@pytest.fixture
def temporary_trigger() -> Iterator[Callable[[type[Trigger]], type[Trigger]]]:
    added: list[str] = []

    def register(cls: type[Trigger]) -> type[Trigger]:
        assert cls.key not in registry, f"{cls.key} would replace a registered trigger"
        registry.register(cls)
        added.append(cls.key)
        return cls

    yield register
    for key in added:
        registry.unregister(key)
