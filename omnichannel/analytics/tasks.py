"""Celery tasks of the results: thin shells over plain functions. Names are stable (beat
stores them); ``omnichannel.tasks`` imports this module so every worker registers them."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

ATTRIBUTE_ORDERS_TASK = "omnichannel.analytics.attribute_orders"


@shared_task(name=ATTRIBUTE_ORDERS_TASK, ignore_result=True)
def attribute_orders_task() -> dict[str, int]:
    """Attribute new orders and re-check late reports (run by beat every ATTRIBUTION_INTERVAL)."""
    from .attribution import attribute_orders

    return attribute_orders(now=timezone.now()).as_dict()
