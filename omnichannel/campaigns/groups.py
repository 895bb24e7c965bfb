"""Stable assignment of people to a campaign's holdout and to a step's variants.

A person's bucket in a campaign is a Fibonacci (multiplicative) hash of the profile and
campaign ids, scaled to 0..9,999 from its high bits. It is plain integer arithmetic, so the
Python function and the SQL expression (used by the set-based mass fan-out) give the same
bucket on SQLite and PostgreSQL, and a person keeps their group however often they are seen.
The holdout and the variants use different salts, so being held out says nothing about which
variant a person would have got.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from django.db.models import Case, ExpressionWrapper, F, IntegerField, Value, When
from django.db.models.functions import Mod
from django.db.models.lookups import LessThan

if TYPE_CHECKING:
    from django.db.models import Expression

    from .models import Campaign, Variant

BUCKETS = 10_000
_CAMPAIGN_MULTIPLIER = 3_266_489_917
_MODULUS = 2**32
#: A salt is the odd multiplier of the profile id: Knuth's 2**32 / golden ratio for the
#: holdout, MurmurHash3's first constant for variants (the two are far apart in high bits).
HOLDOUT_SALT = 2_654_435_761
VARIANT_SALT = 2_246_822_507


def bucket(profile_id: int, campaign_id: int, salt: int = HOLDOUT_SALT) -> int:
    """The person's bucket (0..9,999) in this campaign for this purpose (salt)."""
    mixed = (profile_id * salt + campaign_id * _CAMPAIGN_MULTIPLIER) % _MODULUS
    return mixed * BUCKETS // _MODULUS


def bucket_expression(
    campaign_id: int, salt: int = HOLDOUT_SALT, profile_field: str = "profile_id"
) -> Expression:
    """``bucket()`` as an SQL expression over ``profile_field`` (integer arithmetic only)."""
    mixed = Mod(
        F(profile_field) * Value(salt) + Value(campaign_id * _CAMPAIGN_MULTIPLIER),
        Value(_MODULUS),
    )
    return ExpressionWrapper(mixed * Value(BUCKETS) / Value(_MODULUS), output_field=IntegerField())


def is_held_out(profile_id: int, campaign: Campaign) -> bool:
    """Whether this person is in the campaign's holdout (gets no message)."""
    return bucket(profile_id, campaign.pk) < campaign.holdout_percent * (BUCKETS // 100)


def pick_variant(profile_id: int, campaign_id: int, variants: Sequence[Variant]) -> Variant | None:
    """The variant this person gets among ``variants`` (weighed), or None when there are none."""
    if not variants:
        return None
    ordered = sorted(variants, key=lambda variant: variant.pk)
    total = sum(max(variant.weight, 1) for variant in ordered)
    point = bucket(profile_id, campaign_id, VARIANT_SALT) * total // BUCKETS
    for variant in ordered:
        point -= max(variant.weight, 1)
        if point < 0:
            return variant
    return ordered[-1]


def variant_expression(
    campaign_id: int, variants: Sequence[Variant], profile_field: str = "profile_id"
) -> Case:
    """``pick_variant()`` as an SQL expression: the id of the row's variant among ``variants``.

    ``pick_variant`` takes, in pk order, the first variant whose cumulative weight exceeds
    ``bucket * total // BUCKETS``; for integers that is ``bucket * total < cumulative * BUCKETS``.
    """
    ordered = sorted(variants, key=lambda variant: variant.pk)
    total = sum(max(variant.weight, 1) for variant in ordered)
    scaled = ExpressionWrapper(
        bucket_expression(campaign_id, VARIANT_SALT, profile_field=profile_field) * Value(total),
        output_field=IntegerField(),
    )
    whens, cumulative = [], 0
    for variant in ordered[:-1]:
        cumulative += max(variant.weight, 1)
        whens.append(When(LessThan(scaled, cumulative * BUCKETS), then=Value(variant.pk)))
    return Case(*whens, default=Value(ordered[-1].pk), output_field=IntegerField())
