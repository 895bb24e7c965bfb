"""The holdout and variant hash: stable, the same in Python and SQL, and evenly spread."""

from __future__ import annotations

from collections import Counter

import pytest

from omnichannel.campaigns import groups
from omnichannel.campaigns.models import Campaign, Variant
from omnichannel.profiles.models import CustomerProfile


def test_buckets_are_stable_and_evenly_spread() -> None:
    first = [groups.bucket(profile_id, 7) for profile_id in range(1, 20_001)]
    assert first == [groups.bucket(profile_id, 7) for profile_id in range(1, 20_001)]
    assert all(0 <= value < groups.BUCKETS for value in first)
    tenths = Counter(value * 10 // groups.BUCKETS for value in first)
    assert all(1_800 <= count <= 2_200 for count in tenths.values()), tenths


def test_holdout_and_variant_salts_are_independent() -> None:
    held_out = [p for p in range(1, 20_001) if groups.bucket(p, 3) < 2_000]
    variant_halves = Counter(
        groups.bucket(p, 3, groups.VARIANT_SALT) < groups.BUCKETS // 2 for p in held_out
    )
    assert abs(variant_halves[True] - variant_halves[False]) < len(held_out) * 0.1


def test_pick_variant_follows_the_weights() -> None:
    variants = [Variant(pk=1, name="A", weight=3), Variant(pk=2, name="B", weight=1)]
    picked = Counter(groups.pick_variant(p, 11, variants).name for p in range(1, 8_001))
    assert 5_600 <= picked["A"] <= 6_400
    assert groups.pick_variant(5, 11, []) is None
    # Same person, same campaign: same variant, whatever order the rows come in.
    assert groups.pick_variant(5, 11, variants) == groups.pick_variant(5, 11, variants[::-1])


@pytest.mark.django_db
def test_the_sql_expression_gives_the_python_bucket() -> None:
    profiles = CustomerProfile.objects.bulk_create([CustomerProfile() for _ in range(50)])
    campaign = Campaign.objects.create(name="Hashing", holdout_percent=20)
    rows = CustomerProfile.objects.filter(pk__in=[p.pk for p in profiles]).annotate(
        bucket=groups.bucket_expression(campaign.pk, groups.VARIANT_SALT, profile_field="id")
    )
    for row in rows:
        assert row.bucket == groups.bucket(row.pk, campaign.pk, groups.VARIANT_SALT)
    assert groups.is_held_out(profiles[0].pk, campaign) == (
        groups.bucket(profiles[0].pk, campaign.pk) < 2_000
    )
