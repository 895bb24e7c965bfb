"""Celery tasks of campaigns: thin shells over plain functions. Names are stable (beat and
queued messages store them).

Workers register these through ``omnichannel.tasks``, which imports this module (Celery's
autodiscovery only looks at ``<app>.tasks``).
"""

from __future__ import annotations

from datetime import datetime

from celery import shared_task
from django.utils import timezone

# --- mass campaigns: fan-out ---------------------------------------------------------------------

FAN_OUT_TASK = "omnichannel.campaigns.fan_out"


@shared_task(name=FAN_OUT_TASK, ignore_result=True)
def fan_out_task(campaign_id: int, after: int | None, upto: int | None, now: str) -> int:
    """Fan one chunk of a mass campaign out, then queue the next chunk (or finish).

    ``now`` is the launch time (ISO 8601), the same for every chunk so everyone gets the same
    send times; ``after``/``upto`` bound the profile ids still to do (None: the whole range).
    Each chunk is idempotent, so a redelivered task adds nothing twice.
    """
    from .fanout import fan_out_step

    return fan_out_step(
        campaign_id,
        after=after,
        upto=upto,
        now=datetime.fromisoformat(now),
        heartbeat_at=timezone.now(),
    )


# --- the engine's tick (the lead adds it here) ----------------------------------------------
