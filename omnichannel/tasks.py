"""Celery tasks: thin shells over plain functions. Names are stable (beat stores them)."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from .conf import app_settings

FOLD_EVENTS_TASK = "omnichannel.profiles.fold_events"
DELIVER_MESSAGES_TASK = "omnichannel.channels.deliver_due"


@shared_task(name=FOLD_EVENTS_TASK, ignore_result=True)
def fold_events_task() -> int:
    """Fold unprocessed events into profiles (run by beat every EVENT_FOLD_INTERVAL seconds)."""
    from .profiles.identity import fold_pending_events

    return fold_pending_events(
        now=timezone.now(),
        batch_size=app_settings.EVENT_BATCH_SIZE,
        max_batches=app_settings.EVENT_MAX_BATCHES_PER_RUN,
    )


@shared_task(name=DELIVER_MESSAGES_TASK, ignore_result=True)
def deliver_due_messages_task() -> int:
    """Send due queued messages in batches (run by beat every DELIVERY_INTERVAL seconds)."""
    from .channels.sending import deliver_due_messages

    return deliver_due_messages(now=timezone.now())


REFRESH_SEGMENT_SCORES_TASK = "omnichannel.segments.refresh_rfm"


@shared_task(name=REFRESH_SEGMENT_SCORES_TASK, ignore_result=True)
def refresh_segment_scores_task() -> dict[str, int]:
    """Recompute RFM and engagement scores (run by beat every SEGMENT_SCORES_REFRESH_INTERVAL)."""
    from .segments.scores import refresh_scores

    return refresh_scores(now=timezone.now())


DELIVER_BATCH_TASK = "omnichannel.channels.deliver_batch"
CAMPAIGN_TICK_TASK = "omnichannel.campaigns.tick"


@shared_task(name=DELIVER_BATCH_TASK, ignore_result=True)
def deliver_messages_task(message_ids: list[int]) -> int:
    """Send one batch of messages the campaign engine just created (one task per batch)."""
    from .channels.sending import deliver_messages

    return deliver_messages(message_ids, now=timezone.now())


@shared_task(name=CAMPAIGN_TICK_TASK, ignore_result=True)
def campaign_tick_task() -> dict[str, int]:
    """Advance due campaign enrollments (run by beat every CAMPAIGN_TICK_INTERVAL seconds)."""
    from .campaigns.engine import tick

    return tick(now=timezone.now()).as_dict()


# Celery's autodiscovery reads this module only: importing the campaign and analytics tasks
# here registers them with every worker (omnichannel.campaigns.fan_out,
# omnichannel.analytics.attribute_orders).
from .analytics.tasks import attribute_orders_task  # noqa: E402, F401
from .campaigns.tasks import fan_out_task  # noqa: E402, F401
