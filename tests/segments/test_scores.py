"""RFM quintiles and engagement scores, computed in SQL, against hand-computed answers."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from omnichannel.channels.models import Message
from omnichannel.segments.models import EngagementScore, RfmGroup, RfmScore
from omnichannel.segments.scores import refresh_engagement, refresh_rfm, rfm_group
from omnichannel.tasks import REFRESH_SEGMENT_SCORES_TASK, refresh_segment_scores_task

from .conftest import NOW, days_ago, one, profile

pytestmark = pytest.mark.django_db

#: i -> orders; profile i last ordered i days ago and spent 10 * i.
ORDERS = {1: 8, 2: 3, 3: 2, 4: 1, 5: 1, 6: 2, 7: 1, 8: 1, 9: 1, 10: 1}

# By hand, NTILE(5) over 10 rows puts 2 rows in each quintile:
# recency (oldest first): i=10,9 -> 1; 8,7 -> 2; 6,5 -> 3; 4,3 -> 4; 2,1 -> 5
# monetary (least first):  i=1,2 -> 1; 3,4 -> 2; 5,6 -> 3; 7,8 -> 4; 9,10 -> 5
# frequency: the six 1-order rows take positions 1-6 (quintiles 1,1,2,2,3,3) and all get the
# lowest, 1; the 2-order rows sit at 7-8 (4); 3 and 8 orders at 9-10 (5).
EXPECTED = {
    1: (5, 5, 1, "champions"),
    2: (5, 5, 1, "champions"),
    3: (4, 4, 2, "loyal"),
    4: (4, 1, 2, "promising"),
    5: (3, 1, 3, "about_to_sleep"),
    6: (3, 4, 3, "loyal"),
    7: (2, 1, 4, "hibernating"),
    8: (2, 1, 4, "hibernating"),
    9: (1, 1, 5, "lost"),
    10: (1, 1, 5, "lost"),
}


def test_rfm_quintiles_on_a_known_distribution():
    profiles = {
        i: profile(
            orders_count=orders,
            total_spent=Decimal(10 * i),
            first_order_at=days_ago(i + 100),
            last_order_at=days_ago(i),
        )
        for i, orders in ORDERS.items()
    }
    no_orders = profile()
    assert refresh_rfm(now=NOW) == 10
    scores = {
        score.profile_id: (score.recency, score.frequency, score.monetary, score.group)
        for score in RfmScore.objects.all()
    }
    assert scores == {profiles[i].pk: expected for i, expected in EXPECTED.items()}
    assert not RfmScore.objects.filter(profile=no_orders).exists()
    assert RfmScore.objects.filter(computed_at=NOW).count() == 10

    # The conditions read them.
    assert one("rfm_group", groups=["champions"]) == {profiles[1].pk, profiles[2].pk}
    assert one("rfm_scores", r_min=3, f_min=4) == {
        profiles[1].pk,
        profiles[2].pk,
        profiles[3].pk,
        profiles[6].pk,
    }

    # A refresh replaces every row: profile 10 orders again and becomes the most recent.
    profiles[10].last_order_at = NOW
    profiles[10].orders_count = 2
    profiles[10].save()
    later = NOW + timedelta(hours=1)
    assert refresh_rfm(now=later) == 10
    assert RfmScore.objects.get(profile=profiles[10]).recency == 5
    assert set(RfmScore.objects.values_list("computed_at", flat=True)) == {later}


def test_rfm_group_grid_is_complete():
    grid = {(r, f): rfm_group(r, f) for r in range(1, 6) for f in range(1, 6)}
    assert set(grid.values()) == set(RfmGroup)
    assert grid[5, 5] == grid[5, 4] == RfmGroup.CHAMPIONS
    assert grid[1, 5] == grid[2, 5] == RfmGroup.CANT_LOSE_THEM
    assert grid[1, 1] == RfmGroup.LOST
    assert grid[3, 3] == RfmGroup.NEEDS_ATTENTION
    assert grid[5, 1] == RfmGroup.NEW


def message(p, channel: str, *, hour: int, opened: bool = False, clicked: bool = False, age=10):
    sent = (NOW - timedelta(days=age)).replace(hour=hour, minute=5)
    return Message(
        profile=p,
        channel=channel,
        purpose="marketing",
        created_at=sent,
        sent_at=sent,
        opened_at=sent + timedelta(minutes=10) if opened else None,
        clicked_at=sent + timedelta(minutes=12) if clicked else None,
    )


def test_engagement_preferred_channel_and_best_hour():
    reader = profile()
    texter = profile()
    silent = profile()
    old = profile()
    night_owl = profile()
    Message.objects.bulk_create(
        [
            # reader: 8 of 10 emails opened at 9h; 1 of 1 SMS clicked at 20h. Smoothed:
            # email 8 / 12 = 0.67 beats sms 1 / 3 = 0.33; most opens at 9h.
            *(message(reader, "email", hour=9, opened=n < 8) for n in range(10)),
            message(reader, "sms", hour=20, clicked=True),
            # texter: 2 of 2 sms clicked (2 / 4 = 0.5) beat 1 of 5 emails (1 / 7)
            *(message(texter, "sms", hour=13, clicked=True) for _ in range(2)),
            *(message(texter, "email", hour=7, opened=n == 0) for n in range(5)),
            # silent: sent, never opened: no row
            *(message(silent, "email", hour=9) for _ in range(3)),
            # old: engaged, but outside the window
            message(old, "email", hour=9, opened=True, age=400),
            # night owl: one open at 22h and one at 7h: the tie goes to the earlier hour
            message(night_owl, "webpush", hour=22, opened=True),
            message(night_owl, "webpush", hour=7, opened=True, age=11),
        ]
    )
    assert refresh_engagement(now=NOW, window_days=180) == 3
    rows = {
        row.profile_id: (row.preferred_channel, row.best_hour, row.engaged_messages)
        for row in EngagementScore.objects.all()
    }
    assert rows == {
        reader.pk: ("email", 9, 9),
        texter.pk: ("sms", 13, 3),
        night_owl.pk: ("webpush", 7, 2),
    }
    assert one("preferred_channel", channel="email") == {reader.pk}
    assert one("best_send_hour", from_hour=12, to_hour=14) == {texter.pk}
    assert one("preferred_channel", negate=True, channel="email") == {
        texter.pk,
        silent.pk,
        old.pk,
        night_owl.pk,
    }
    # A longer window brings the old message in.
    assert refresh_engagement(now=NOW, window_days=500) == 4


def test_the_periodic_task_refreshes_both():
    profile(orders_count=1, total_spent=Decimal(5), last_order_at=days_ago(3))
    assert REFRESH_SEGMENT_SCORES_TASK == "omnichannel.segments.refresh_rfm"
    assert refresh_segment_scores_task() == {"rfm": 1, "engagement": 0}
    assert RfmScore.objects.count() == 1
