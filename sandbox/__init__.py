"""The demo shop: a real django-oscar shop with django-oscar-omnichannel installed."""

from .celery import app as celery_app

__all__ = ["celery_app"]
